"""Dataset snapshots: the one format the curator writes and the trainer reads.

A snapshot is a folder ``<var>/datasets/<task>/<snapshot_id>/`` holding:

- ``train.parquet`` and ``holdout.parquet``, one row per distinct normalised input, columns
  ``call_id`` (str), ``input`` (str), ``label`` (str: the gold label, i.e. the reviewed label where
  a person reviewed the call, else the frontier's answer), ``frontier_label`` (str: what the
  frontier model answered), ``reviewed`` (bool), ``normalised_hash`` (str: hex sha256 of task +
  normalised input, `services.common.normalize.input_hash`);
- ``manifest.json``: ``{snapshot_id, task, created_at (ISO 8601), labels (the task's label
  list), counts {train, holdout}, reviewed {train, holdout}, label_distribution {train: {label:
  n}, holdout: {label: n}}, source {free-form: topic offsets, generator...}, files {name: sha256
  hex}, out_of_scope_label (optional: the answer for "no label fits"; rows may carry it)}``.

`load_snapshot` refuses, with an error that names the problem, a snapshot whose files are missing
or do not match their sha256, lack a column, carry labels outside the label list, or hold a
normalised input on both sides of the split.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

SPLITS = ("train", "holdout")
MANIFEST = "manifest.json"
COLUMNS: dict[str, pa.DataType] = {
    "call_id": pa.string(),
    "input": pa.string(),
    "label": pa.string(),
    "frontier_label": pa.string(),
    "reviewed": pa.bool_(),
    "normalised_hash": pa.string(),
}
SCHEMA = pa.schema([pa.field(name, dtype, nullable=False) for name, dtype in COLUMNS.items()])


class SnapshotError(ValueError):
    """A snapshot that cannot be trained on; the message says which file and why."""


@dataclass(frozen=True)
class Split:
    """One side of a snapshot as plain Python lists (Banking77-sized data fits easily)."""

    call_id: list[str]
    input: list[str]
    label: list[str]
    frontier_label: list[str]
    reviewed: list[bool]
    normalised_hash: list[str]

    def __len__(self) -> int:
        return len(self.call_id)

    def take(self, indices: list[int]) -> "Split":
        return Split(*([column[i] for i in indices] for column in self.columns()))

    def columns(self) -> tuple[list, ...]:
        return (self.call_id, self.input, self.label, self.frontier_label, self.reviewed, self.normalised_hash)

    def to_table(self) -> pa.Table:
        return pa.Table.from_pydict(dict(zip(COLUMNS, self.columns())), schema=SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table) -> "Split":
        return cls(*(table.column(name).to_pylist() for name in COLUMNS))


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: dict[str, Any]
    train: Split
    holdout: Split

    @property
    def snapshot_id(self) -> str:
        return self.manifest["snapshot_id"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def out_of_scope_label(self) -> Optional[str]:
        """The answer for "no label fits" (rows may carry it; it is never a label of the small model)."""
        return self.manifest.get("out_of_scope_label")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snapshot_dir(datasets_dir: Path, task: str, snapshot_id: str) -> Path:
    return datasets_dir / task / snapshot_id


def resolve_snapshot(datasets_dir: Path, task: str, ref: str = "latest") -> Path:
    """The folder of snapshot `ref` of `task`; `latest` is the newest manifest's created_at."""
    task_dir = datasets_dir / task
    if ref != "latest":
        path = task_dir / ref
        if not path.is_dir():
            raise SnapshotError(f"no snapshot {ref!r} of task {task!r} under {task_dir}")
        return path
    candidates = []
    for manifest in task_dir.glob(f"*/{MANIFEST}"):
        try:
            created = datetime.fromisoformat(json.loads(manifest.read_text())["created_at"])
        except (json.JSONDecodeError, KeyError, OSError, TypeError, ValueError):
            continue  # a half-written or foreign folder is not a candidate for "latest"
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        candidates.append((created, manifest.parent.name, manifest.parent))
    if not candidates:
        raise SnapshotError(
            f"no snapshot of task {task!r} under {task_dir}; the curator writes them, or build one "
            f"from Banking77 with `graduate snapshot-banking77 --task {task}`")
    return max(candidates)[2]


def write_snapshot(root: Path, task: str, snapshot_id: str, labels: list[str], train: Split, holdout: Split,
                   source: dict[str, Any], out_of_scope_label: Optional[str] = None) -> Path:
    """Write a snapshot folder in the format above (the curator's writer does the same)."""
    path = snapshot_dir(root, task, snapshot_id)
    path.mkdir(parents=True, exist_ok=False)
    files = {}
    for name, split in (("train", train), ("holdout", holdout)):
        pq.write_table(split.to_table(), path / f"{name}.parquet")
        files[f"{name}.parquet"] = sha256_file(path / f"{name}.parquet")
    manifest = {
        "snapshot_id": snapshot_id,
        "task": task,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "labels": list(labels),
        "counts": {"train": len(train), "holdout": len(holdout)},
        "reviewed": {"train": sum(train.reviewed), "holdout": sum(holdout.reviewed)},
        "label_distribution": {name: _distribution(split.label) for name, split in
                               (("train", train), ("holdout", holdout))},
        "source": source,
        "files": files,
    }
    if out_of_scope_label:
        manifest["out_of_scope_label"] = out_of_scope_label
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def _distribution(labels: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise SnapshotError(f"snapshot {path}: {MANIFEST} is missing")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"snapshot {path}: {MANIFEST} is not JSON ({exc})") from None
    missing = [k for k in ("snapshot_id", "task", "created_at", "labels", "counts", "files") if k not in manifest]
    if missing:
        raise SnapshotError(f"snapshot {path}: {MANIFEST} lacks {', '.join(missing)}")
    if not isinstance(manifest["labels"], list) or len(manifest["labels"]) < 2:
        raise SnapshotError(f"snapshot {path}: {MANIFEST} labels must list at least two labels")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    for split in SPLITS:
        if f"{split}.parquet" not in manifest["files"]:
            raise SnapshotError(f"snapshot {path}: {MANIFEST} files has no entry for {split}.parquet")
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise SnapshotError(f"snapshot {path}: {name} is missing")
        actual = sha256_file(file)
        if actual != expected:
            raise SnapshotError(f"snapshot {path}: {name} is corrupt: sha256 {actual[:16]}…, "
                                f"{MANIFEST} says {str(expected)[:16]}…")


def read_split(path: Path, name: str, labels: set[str]) -> Split:
    file = path / f"{name}.parquet"
    try:
        table = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SnapshotError(f"snapshot {path}: {file.name} is not a readable parquet file ({exc})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise SnapshotError(f"snapshot {path}: {file.name} lacks column(s) {', '.join(missing)}")
    for column, dtype in COLUMNS.items():
        have = table.schema.field(column).type
        if have != dtype and not (dtype == pa.string() and have == pa.large_string()):
            raise SnapshotError(f"snapshot {path}: {file.name} column {column} is {have}, expected {dtype}")
        if column == "frontier_label" and table.column(column).null_count:
            # a reviewed call whose frontier answer did not parse: no frontier label, graded as wrong
            table = table.set_column(table.column_names.index(column), column,
                                     pa.compute.fill_null(table.column(column), ""))
        elif table.column(column).null_count:
            raise SnapshotError(f"snapshot {path}: {file.name} column {column} has "
                                f"{table.column(column).null_count} null value(s)")
    split = Split.from_table(table.select(list(COLUMNS)))
    unknown = sorted(set(split.label) - labels)
    if unknown:
        raise SnapshotError(f"snapshot {path}: {file.name} has label(s) outside the manifest's label list: "
                            f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}")
    return split


def check_no_overlap(path: Path, train: Split, holdout: Split) -> None:
    """A normalised input on both sides would leak the holdout into training: refuse it."""
    overlap = set(train.normalised_hash) & set(holdout.normalised_hash)
    if overlap:
        raise SnapshotError(
            f"snapshot {path}: {len(overlap)} normalised input(s) sit in both train and holdout "
            f"(e.g. normalised_hash {min(overlap)[:16]}…); the split must be by normalised-input hash")


def load_snapshot(path: Path) -> Snapshot:
    """Read and validate a snapshot folder; SnapshotError names what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise SnapshotError(f"snapshot {path} does not exist")
    manifest = read_manifest(path)
    verify_files(path, manifest)
    labels = set(manifest["labels"]) | ({manifest["out_of_scope_label"]} if manifest.get("out_of_scope_label") else set())
    train, holdout = (read_split(path, name, labels) for name in SPLITS)
    for name, split in (("train", train), ("holdout", holdout)):
        expected = manifest["counts"].get(name)
        if expected is not None and expected != len(split):
            raise SnapshotError(f"snapshot {path}: {name}.parquet has {len(split)} rows, {MANIFEST} says {expected}")
        if not len(split):
            raise SnapshotError(f"snapshot {path}: {name}.parquet is empty")
    check_no_overlap(path, train, holdout)
    return Snapshot(path, manifest, train, holdout)
