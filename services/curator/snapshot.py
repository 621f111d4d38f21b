"""Dataset snapshots: read the dataset topic to fixed offsets, apply reviews, write Parquet + manifest.

The curator keeps the dataset topic (one record per distinct input and captured partition,
services/curator/dataset.py), so a snapshot reads work proportional to distinct inputs, not calls,
and is as fresh as the curator (its lag: graduate_processor_lag{processor="curator"}).

The same offsets give the same snapshot byte for byte: rows are sorted by normalised hash,
Parquet writer options are fixed, no wall-clock time is written (`created_at` is the time of
the newest record read), and the snapshot id is a hash of the inputs and the files.
Folder: <var>/datasets/<task>/<snapshot_id>/ with train.parquet, holdout.parquet, manifest.json.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import DatasetForgotten, DatasetRecord, Disagreement, ReviewedLabel, ShadowResult
from services.common.settings import CommonSettings
from services.common.streams import Replay, replay_topic
from services.common.tasks import TaskSpec, load_tasks
from services.curator.dataset import dataset_of, live_records, merge_shards, record_key
from services.curator.logic import Dataset, Example, ReviewItem, SmallAnswer, build_review_queue, latest_reviews

COLUMNS = pa.schema([
    ("call_id", pa.string()),
    ("input", pa.string()),
    ("label", pa.string()),
    ("frontier_label", pa.string()),
    ("reviewed", pa.bool_()),
    ("normalised_hash", pa.string()),
])
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True,
                       version="2.6", data_page_version="1.0", row_group_size=1 << 20,
                       store_schema=False)


@dataclass(frozen=True)
class SourceData:
    """What the topics held up to the read offsets: the dataset records the curator wrote, the
    reviews and the forgotten inputs (work proportional to distinct inputs, not to calls)."""

    records: Replay[DatasetRecord]
    reviews: Replay[ReviewedLabel]
    forgotten: Replay[DatasetForgotten]


async def read_sources(settings: CommonSettings, codec: Codec, *, dataset_end: dict[int, int] | None = None,
                       reviewed_end: dict[int, int] | None = None) -> SourceData:
    kafka, ns = settings.kafka, settings.topic_namespace
    records, reviews, forgotten = await asyncio.gather(
        replay_topic(kafka, codec, catalog.DATASET, ns, DatasetRecord, end_offsets=dataset_end, tombstones=True),
        replay_topic(kafka, codec, catalog.LABELS_REVIEWED, ns, ReviewedLabel, end_offsets=reviewed_end),
        replay_topic(kafka, codec, catalog.DATASET_FORGOTTEN, ns, DatasetForgotten))
    return SourceData(records, reviews, forgotten)


def forgotten_keys(data: SourceData) -> set[str]:
    return {record_key(i.value.task, i.value.normalised_hash) for i in data.forgotten.records}


def curate_sources(spec: TaskSpec, data: SourceData, holdout_fraction: float) -> Dataset:
    """The task's dataset from the dataset topic (the curator admitted every call in it) and the reviews."""
    records = [r for r in live_records(data.records.records, forgotten_keys(data)) if r.task == spec.name]
    reviews = latest_reviews(item.value for item in data.reviews.records if item.value.task == spec.name)
    return dataset_of(spec.name, merge_shards(records).values(), reviews, holdout_fraction)


def rows_table(examples: list[Example]) -> pa.Table:
    rows = sorted(examples, key=lambda e: e.normalised_hash)
    return pa.table({
        "call_id": [e.call_id for e in rows],
        "input": [e.input for e in rows],
        "label": [e.label for e in rows],
        "frontier_label": [e.frontier_label for e in rows],
        "reviewed": [e.reviewed for e in rows],
        "normalised_hash": [e.normalised_hash for e in rows],
    }, schema=COLUMNS)


def write_parquet(table: pa.Table, path: Path) -> str:
    pq.write_table(table, path, **PARQUET_OPTIONS)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def offset_ranges(replay: Replay) -> dict[str, list[int]]:
    return {str(p): [start, end] for p, (start, end) in sorted(replay.offsets.items())}


def newest_ts(data: SourceData) -> Optional[str]:
    stamps = [i.value.last_seen for i in data.records.records if i.value is not None]
    stamps += [i.value.ts for i in data.reviews.records]
    if not stamps:
        return None
    newest = max(s if s.tzinfo else s.replace(tzinfo=timezone.utc) for s in stamps)
    return newest.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def manifest_for(spec: TaskSpec, dataset: Dataset, data: SourceData, holdout_fraction: float,
                 files: dict[str, str]) -> dict:
    train, holdout = dataset.split("train"), dataset.split("holdout")
    labels = list(spec.labels) if spec.labels else sorted({e.label for e in dataset.examples})
    body = {
        "task": spec.name,
        "created_at": newest_ts(data),
        "labels": labels,
        "counts": {"train": len(train), "holdout": len(holdout)},
        "reviewed": {"train": sum(e.reviewed for e in train), "holdout": sum(e.reviewed for e in holdout)},
        "label_distribution": dataset.label_counts,
        "source": {data.records.topic: offset_ranges(data.records), data.reviews.topic: offset_ranges(data.reviews),
                   data.forgotten.topic: offset_ranges(data.forgotten)},
        "files": files,
        "holdout_fraction": holdout_fraction,
        **({"out_of_scope_label": spec.out_of_scope_label} if spec.out_of_scope_label else {}),
        "curation": {**dataset.stats.__dict__, "reviewed_applied": dataset.reviewed_applied,
                     "excluded_by_review": dataset.excluded_by_review,
                     "undecodable_records": len(data.records.undecodable) + len(data.reviews.undecodable)},
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    return {"snapshot_id": f"{spec.name}-{digest}", **body}


def write_snapshot(spec: TaskSpec, dataset: Dataset, data: SourceData, holdout_fraction: float,
                   datasets_dir: Path) -> tuple[Path, dict]:
    """Write the snapshot folder atomically; returns it and the manifest."""
    task_dir = datasets_dir / spec.name
    task_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=task_dir))
    try:
        files = {name: write_parquet(rows_table(dataset.split(split)), tmp / name)
                 for name, split in (("train.parquet", "train"), ("holdout.parquet", "holdout"))}
        manifest = manifest_for(spec, dataset, data, holdout_fraction, files)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        final = task_dir / manifest["snapshot_id"]
        if final.exists():
            shutil.rmtree(final)  # same id, same inputs: the content is the same
        os.replace(tmp, final)
        return final, manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_snapshot(folder: Path) -> tuple[dict, pa.Table, pa.Table]:
    """Read a snapshot back and check the files against the manifest's sha256."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, sha in manifest["files"].items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != sha:
            raise ValueError(f"{folder / name}: sha256 differs from the manifest")
    return manifest, pq.read_table(folder / "train.parquet"), pq.read_table(folder / "holdout.parquet")


async def take_snapshot(settings: CommonSettings, spec: TaskSpec, holdout_fraction: float, *,
                        codec: Codec | None = None, datasets_dir: Path | None = None) -> tuple[Path, dict]:
    codec = codec or Codec(settings.schema_registry_url)
    data = await read_sources(settings, codec)
    dataset = curate_sources(spec, data, holdout_fraction)
    folder_root = datasets_dir or settings.var_dir / "datasets"
    return await asyncio.to_thread(write_snapshot, spec, dataset, data, holdout_fraction, folder_root)


async def small_answers(settings: CommonSettings, codec: Codec, task: str) -> list[SmallAnswer]:
    """Disagreements and shadow results of a task, as what the small model said per call."""
    kafka, ns = settings.kafka, settings.topic_namespace
    disagreements, shadow = await asyncio.gather(
        replay_topic(kafka, codec, catalog.DISAGREEMENTS, ns, Disagreement),
        replay_topic(kafka, codec, catalog.SHADOW_RESULTS, ns, ShadowResult))
    out = [SmallAnswer(d.value.call_id, d.value.small_output, d.value.confidence, d.value.model_version, True)
           for d in disagreements.records if d.value.task == task]
    out += [SmallAnswer(s.value.call_id, s.value.output, s.value.confidence, s.value.model_version,
                        s.value.frontier_output is not None and s.value.output != s.value.frontier_output)
            for s in shadow.records if s.value.task == task]
    return out


async def review_queue(settings: CommonSettings, task: str, *, holdout_fraction: float, limit: int = 50,
                       low_confidence: float = 0.6, codec: Codec | None = None) -> list[ReviewItem]:
    """The review queue of a task, from the topics as they are now (`graduate dataset review-queue`; the
    review page keeps the same inputs in memory, services/review/view.py)."""
    codec = codec or Codec(settings.schema_registry_url)
    spec = load_tasks(settings.tasks_file).get(task)
    data, answers = await asyncio.gather(read_sources(settings, codec), small_answers(settings, codec, task))
    dataset = curate_sources(spec, data, holdout_fraction)
    return build_review_queue(dataset, answers, limit=limit, low_confidence=low_confidence)
