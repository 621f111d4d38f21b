"""The curator writes snapshots the trainer reads: one format, checked across the two packages."""
from __future__ import annotations

import csv

from services.common.contracts import CapturedCall, ReviewedLabel
from services.common.settings import REPO_ROOT
from services.common.tasks import load_tasks
from services.curator.snapshot import SourceData, curate_sources, write_snapshot
from tests.dataset_support import source_data
from trainer.snapshot import load_snapshot


def _source(n: int = 600) -> SourceData:
    with open(REPO_ROOT / "data" / "banking77" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    calls = []
    for i, row in enumerate(rows):
        call = CapturedCall(call_id=f"c{i}", task="banking77-intent", input=row["text"], output_raw=row["category"],
                            output=row["category"], latency_ms=500.0)
        calls.append((i % 12, i, call))
    # a duplicate with different case and spacing, and a parse failure
    calls.append((0, 10_000, CapturedCall(call_id="dup", task="banking77-intent", input="  " + rows[0]["text"].upper(),
                                          output_raw=rows[0]["category"], output=rows[0]["category"], latency_ms=1.0)))
    calls.append((1, 10_001, CapturedCall(call_id="bad", task="banking77-intent", input="gibberish answer",
                                          output_raw="??", output=None, parse_ok=False, latency_ms=1.0)))
    return source_data(calls, [ReviewedLabel(call_id="c3", task="banking77-intent", label="card_linking",
                                             reviewer="ana")])


def test_curator_snapshot_loads_in_the_trainer(tmp_path):
    spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get("banking77-intent")
    data = _source()
    dataset = curate_sources(spec, data, 0.15)
    folder, manifest = write_snapshot(spec, dataset, data, 0.15, tmp_path)
    snap = load_snapshot(folder)
    assert snap.snapshot_id == manifest["snapshot_id"]
    assert len(snap.train) + len(snap.holdout) == 600  # the duplicate folded in, the parse failure dropped
    assert not set(snap.train.normalised_hash) & set(snap.holdout.normalised_hash)
    reviewed = [i for i, cid in enumerate(list(snap.train.call_id) + list(snap.holdout.call_id)) if cid == "c3"]
    labels = list(snap.train.label) + list(snap.holdout.label)
    assert reviewed and labels[reviewed[0]] == "card_linking"
    # the same inputs give the same bytes
    again, manifest2 = write_snapshot(spec, curate_sources(spec, data, 0.15), data, 0.15, tmp_path / "again")
    assert manifest2["files"] == manifest["files"]
