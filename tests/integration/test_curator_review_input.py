"""A review names its input (ReviewedLabel.normalised_hash): on the real broker with a real curator,
a review of an old call of a hot input — fallen out of the dataset record's latest call ids — is the
gold label of that input in the snapshot, and `graduate dataset forget` removes the input and its review."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.common.catalog import CALLS_CAPTURED, LABELS_REVIEWED, topic_name
from services.common.contracts import CapturedCall, ReviewedLabel
from services.common.settings import REPO_ROOT, CommonSettings
from services.common.tasks import load_tasks
from services.curator.dataset import MAX_RECENT, live_records
from services.curator.forget import hash_of_input
from services.curator.snapshot import read_snapshot, read_sources
from tests.integration.test_curator_worker import run_cli, wait_for_dataset
from tests.integration.test_workers import BANKING, produce_to_partition, start_worker, stop_worker, wait_for, worker_env
from tests.support import produce

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
HOT = "My new card still has not arrived, where is it?"
OTHERS = ["How do I change my PIN?", "My top-up failed", "I was charged twice for one payment"]


def call(call_id: str, text: str, label: str, seconds: int) -> CapturedCall:
    return CapturedCall(call_id=call_id, task=BANKING, ts=T0 + timedelta(seconds=seconds), input=text,
                        output_raw=label, output=label, latency_ms=500.0, model="frontier-sim")


def snapshot_rows(env: dict) -> dict[str, dict]:
    snap = json.loads(run_cli(["dataset", "snapshot", "--task", BANKING, "--json"], env))
    _, train, holdout = read_snapshot(Path(snap["path"]))
    return {r["normalised_hash"]: r for r in train.to_pylist() + holdout.to_pylist()}


async def test_a_review_of_an_old_call_of_a_hot_input_is_gold_and_forget_removes_it(
        topics, namespace, kafka_settings, codec, tmp_path: Path):
    spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(BANKING)
    digest = hash_of_input(spec, HOT)
    hot = [call(f"h{i:03d}", HOT, "card_arrival", i) for i in range(MAX_RECENT + 8)]  # all on one shard
    others = [call(f"o{i}", text, "change_pin", 100 + i) for i, text in enumerate(OTHERS)]
    worker = start_worker("curator", namespace, kafka_settings, tmp_path)
    try:
        await wait_for(lambda: worker.get("/readyz") is not None, 90, "the curator ready", worker)
        await produce_to_partition(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace), hot, partition=0)
        await produce(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace), [(c.call_id, c) for c in others])
        await wait_for_dataset(kafka_settings, codec, namespace, {BANKING: len(hot) + len(others)}, worker)
        data = await read_sources(CommonSettings(kafka=kafka_settings, topic_namespace=namespace), codec)
        (record,) = [r for r in live_records(data.records.records) if r.normalised_hash == digest]
        assert "h000" not in record.recent_call_ids  # the reviewed call fell out of the record's latest ids

        # the first call of the hot input reviewed: the frontier said card_arrival, a person says otherwise
        review = ReviewedLabel(call_id="h000", task=BANKING, label="card_delivery_estimate", reviewer="ana",
                               normalised_hash=digest)
        await produce(kafka_settings, codec, topic_name(LABELS_REVIEWED, namespace), [(review.call_id, review)])
        env = worker_env(namespace, kafka_settings, tmp_path)
        rows = snapshot_rows(env)
        assert len(rows) == 1 + len(OTHERS)
        assert (rows[digest]["label"], rows[digest]["frontier_label"], rows[digest]["reviewed"]) == \
               ("card_delivery_estimate", "card_arrival", True)
        assert not any(r["reviewed"] for h, r in rows.items() if h != digest)

        out = run_cli(["dataset", "forget", "--task", BANKING, "--input", HOT, "--reason", "test"], env)
        assert digest in out
        rows = snapshot_rows(env)
        assert digest not in rows and len(rows) == len(OTHERS) and not any(r["reviewed"] for r in rows.values())
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()
