"""Snapshot format: a valid one loads; overlap, corrupt and missing files are refused clearly."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.normalize import input_hash, normalise_input
from trainer.snapshot import (SnapshotError, Split, load_snapshot, resolve_snapshot, sha256_file,
                              write_snapshot)

TASK = "t-intent"
LABELS = ["a", "b", "c"]


def split(texts: list[str], labels: list[str], reviewed: bool = False) -> Split:
    hashes = [input_hash(TASK, normalise_input(t)).hex() for t in texts]
    return Split([f"c{i}-{h[:6]}" for i, h in enumerate(hashes)], texts, labels, labels,
                 [reviewed] * len(texts), hashes)


def make(root: Path, train_texts=("one", "two", "three"), holdout_texts=("four", "five"),
         snapshot_id: str = "s1") -> Path:
    def labels(n: int) -> list[str]:
        return [LABELS[i % 2] for i in range(n)]  # only "a" and "b": "c" stays unused

    return write_snapshot(root, TASK, snapshot_id, LABELS, split(list(train_texts), labels(len(train_texts))),
                          split(list(holdout_texts), labels(len(holdout_texts)), reviewed=True), {"test": True})


def rewrite_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_valid_snapshot_loads(tmp_path: Path) -> None:
    snap = load_snapshot(make(tmp_path))
    assert snap.snapshot_id == "s1" and snap.task == TASK and snap.labels == LABELS
    assert len(snap.train) == 3 and len(snap.holdout) == 2
    assert snap.holdout.reviewed == [True, True]
    assert snap.manifest["counts"] == {"train": 3, "holdout": 2}
    assert snap.manifest["reviewed"] == {"train": 0, "holdout": 2}


def test_holdout_overlapping_train_is_refused(tmp_path: Path) -> None:
    # "Two " normalises to "two", which is in train: one overlap; "ONE" overlaps too
    path = make(tmp_path, holdout_texts=("Two ", "ONE", "five"))
    with pytest.raises(SnapshotError, match=r"2 normalised input\(s\) sit in both train and holdout"):
        load_snapshot(path)


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    path = make(tmp_path)
    data = bytearray((path / "train.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "train.parquet").write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match=r"train\.parquet is corrupt: sha256"):
        load_snapshot(path)


@pytest.mark.parametrize("name", ["holdout.parquet", "train.parquet", "manifest.json"])
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    path = make(tmp_path)
    (path / name).unlink()
    with pytest.raises(SnapshotError, match=rf"{name.replace('.', '[.]')} is missing"):
        load_snapshot(path)


def test_manifest_that_is_not_json(tmp_path: Path) -> None:
    path = make(tmp_path)
    (path / "manifest.json").write_text("{nope")
    with pytest.raises(SnapshotError, match="manifest.json is not JSON"):
        load_snapshot(path)


def test_manifest_without_a_file_entry(tmp_path: Path) -> None:
    path = make(tmp_path)
    rewrite_manifest(path, files={"train.parquet": sha256_file(path / "train.parquet")})
    with pytest.raises(SnapshotError, match="no entry for holdout.parquet"):
        load_snapshot(path)


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = make(tmp_path)
    table = pq.read_table(path / "holdout.parquet").drop_columns(["reviewed"])
    pq.write_table(table, path / "holdout.parquet")
    rewrite_manifest(path, files={"train.parquet": sha256_file(path / "train.parquet"),
                                  "holdout.parquet": sha256_file(path / "holdout.parquet")})
    with pytest.raises(SnapshotError, match=r"holdout\.parquet lacks column\(s\) reviewed"):
        load_snapshot(path)


def test_label_outside_the_label_list(tmp_path: Path) -> None:
    path = make(tmp_path)
    rewrite_manifest(path, labels=["a", "c"])
    with pytest.raises(SnapshotError, match="train.parquet has label.s. outside the manifest's label list: b"):
        load_snapshot(path)


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    path = make(tmp_path)
    (path / "train.parquet").write_text("not parquet")
    rewrite_manifest(path, files={"train.parquet": sha256_file(path / "train.parquet"),
                                  "holdout.parquet": sha256_file(path / "holdout.parquet")})
    with pytest.raises(SnapshotError, match="train.parquet is not a readable parquet file"):
        load_snapshot(path)


def test_row_count_must_match_manifest(tmp_path: Path) -> None:
    path = make(tmp_path)
    rewrite_manifest(path, counts={"train": 4, "holdout": 2})
    with pytest.raises(SnapshotError, match="train.parquet has 3 rows, manifest.json says 4"):
        load_snapshot(path)


def _with_nulls(path: Path, column: str) -> None:
    table = pq.read_table(path / "holdout.parquet")
    nullable = pa.schema([f.with_nullable(True) for f in table.schema])
    values = pa.array([None, "b"], type=pa.string())
    table = table.cast(nullable).set_column(table.column_names.index(column), column, values)
    pq.write_table(table, path / "holdout.parquet")
    rewrite_manifest(path, files={"train.parquet": sha256_file(path / "train.parquet"),
                                  "holdout.parquet": sha256_file(path / "holdout.parquet")})


def test_null_labels_are_refused(tmp_path: Path) -> None:
    path = make(tmp_path)
    _with_nulls(path, "label")
    with pytest.raises(SnapshotError, match="column label has 1 null value"):
        load_snapshot(path)


def test_a_null_frontier_label_is_a_frontier_mistake(tmp_path: Path) -> None:
    """The curator writes no frontier label for a reviewed call whose frontier answer did not parse."""
    path = make(tmp_path)
    _with_nulls(path, "frontier_label")
    snap = load_snapshot(path)
    assert list(snap.holdout.frontier_label)[:2] == ["", "b"]


def test_latest_is_the_newest_manifest(tmp_path: Path) -> None:
    make(tmp_path, snapshot_id="zzz-older")
    newer = make(tmp_path, snapshot_id="aaa-newer")
    rewrite_manifest(tmp_path / TASK / "zzz-older", created_at="2020-01-01T00:00:00Z")
    (tmp_path / TASK / "half-written").mkdir()
    assert resolve_snapshot(tmp_path, TASK, "latest") == newer
    assert resolve_snapshot(tmp_path, TASK, "zzz-older") == tmp_path / TASK / "zzz-older"


def test_no_snapshot_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="graduate snapshot-banking77"):
        resolve_snapshot(tmp_path, TASK, "latest")
    with pytest.raises(SnapshotError, match="no snapshot 'nope'"):
        resolve_snapshot(tmp_path, TASK, "nope")
