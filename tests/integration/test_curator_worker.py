"""The curator worker and the dataset commands on a replayed Banking77 stream (real broker, real worker)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from services.common.catalog import (CALLS_CAPTURED, DATASET, DATASET_FORGOTTEN, DEADLETTER, DISAGREEMENTS,
                                     LABELS_REVIEWED, SHADOW_RESULTS, topic_name)
from services.common.contracts import CapturedCall, DeadLetter, Disagreement, ReviewedLabel, ShadowResult
from services.common.normalize import input_hash, normalise_input, split_of
from services.common.settings import REPO_ROOT
from services.common.settings import CommonSettings
from services.curator.dataset import live_records, merge_shards
from services.curator.snapshot import forgotten_keys, read_snapshot, read_sources
from tests.integration.test_workers import (BANKING, FREEFORM, GRADUATE, banking77_calls, freeform_calls,
                                            poison_payloads, produce_raw, start_worker, stop_worker, wait_for,
                                            worker_env)
from tests.support import decode_all, produce, read_topic

pytestmark = pytest.mark.integration


def expected_dataset(calls: list[CapturedCall], reviews: dict[str, ReviewedLabel], fraction: float) -> dict:
    """What the snapshot must hold, computed directly from the calls: hash -> (split, label, reviewed)."""
    groups: dict[str, list[CapturedCall]] = defaultdict(list)
    for c in calls:
        groups[input_hash(c.task, normalise_input(c.input)).hex()].append(c)
    out = {}
    for digest, group in groups.items():
        usable = [c for c in group if c.output is not None]
        review = next((reviews[c.call_id] for c in group if c.call_id in reviews), None)
        if review is not None and review.verdict == "not_in_label_set":
            continue
        if review is not None:
            out[digest] = (split_of(BANKING, group[0].input, fraction), review.label, True)
        elif usable:
            latest = max(usable, key=lambda c: (c.ts, c.call_id))
            out[digest] = (split_of(BANKING, group[0].input, fraction), latest.output, False)
    return out


async def dataset_calls(kafka, codec, namespace: str) -> dict[str, int]:
    """Calls per task in the dataset topic as a snapshot reads it (shards merged)."""
    data = await read_sources(CommonSettings(kafka=kafka, topic_namespace=namespace), codec)
    out: dict[str, int] = defaultdict(int)
    for i in merge_shards(live_records(data.records.records, forgotten_keys(data))).values():
        out[i.task] += i.calls
    return dict(out)


async def wait_for_dataset(kafka, codec, namespace: str, want: dict[str, int], worker, timeout: float = 120) -> None:
    """Until the dataset topic counts `want` calls per task (the curator sends a batch's records after
    updating its stats); fails on a count above (a call counted twice) as on a timeout."""
    deadline = time.monotonic() + timeout
    got: dict = {}
    while time.monotonic() < deadline:
        got = await dataset_calls(kafka, codec, namespace)
        if got == want:
            return
        assert all(got.get(t, 0) <= n for t, n in want.items()), f"calls counted twice: {got} > {want}"
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"{worker.name} exited:\n{worker.tail()}")
        await asyncio.sleep(1.0)
    raise AssertionError(f"the dataset topic holds {got}, not {want}")


def run_cli(args: list[str], env: dict) -> str:
    done = subprocess.run([GRADUATE, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


async def test_curator_worker_snapshot_and_review_queue(topics, namespace, kafka_settings, codec, tmp_path: Path):
    replay = banking77_calls(3000)
    free = freeform_calls(150)
    ns = namespace
    # reviews: 20 holdout inputs relabelled, one train input ruled out of the label set
    holdout_calls = [c for c in replay.calls if c.output and split_of(BANKING, c.input, 0.15) == "holdout"]
    train_calls = [c for c in replay.calls if c.output and split_of(BANKING, c.input, 0.15) == "train"]
    reviews = {c.call_id: ReviewedLabel(call_id=c.call_id, task=BANKING, label="card_linking" if c.output != "card_linking"
                                        else "card_arrival", reviewer="gold") for c in holdout_calls[:20]}
    reviews[train_calls[0].call_id] = ReviewedLabel(call_id=train_calls[0].call_id, task=BANKING,
                                                    verdict="not_in_label_set", reviewer="gold")
    captured = topic_name(CALLS_CAPTURED, ns)
    await produce(kafka_settings, codec, captured, [(c.call_id, c) for c in replay.calls[:1500]])
    await produce_raw(kafka_settings, captured, [(k, v) for k, v, _ in poison_payloads(codec)])
    await produce(kafka_settings, codec, captured, [(c.call_id, c) for c in replay.calls[1500:] + free])
    await produce(kafka_settings, codec, topic_name(LABELS_REVIEWED, ns), list(reviews.items()))

    expected = expected_dataset(replay.calls, reviews, 0.15)
    groups = defaultdict(set)
    for c in replay.calls:
        if c.output is not None:
            groups[input_hash(BANKING, normalise_input(c.input))].add(c.output)
    conflicting = sum(len(v) > 1 for v in groups.values())
    assert conflicting >= 4  # the planted conflicts (a planted one may land on a broken input)

    worker = start_worker("curator", ns, kafka_settings, tmp_path)
    try:
        def caught_up():
            stats = worker.get("/curator/stats/")
            ok = stats.get(BANKING, {}).get("calls") == 3000 and stats.get(FREEFORM, {}).get("calls") == 150
            return stats if ok else None

        stats = await wait_for(caught_up, 240, "the curator to take in 3150 calls", worker)
        await wait_for_dataset(kafka_settings, codec, ns, {BANKING: 3000, FREEFORM: 150}, worker)
        assert stats[BANKING]["parse_failures"] == len(replay.parse_failures)
        assert stats[BANKING]["conflicting_inputs"] == conflicting
        assert stats[BANKING]["inputs"] == len({input_hash(BANKING, normalise_input(c.input)) for c in replay.calls})
        assert stats[FREEFORM]["inputs"] == 150
        letters = decode_all(codec, await read_topic(kafka_settings, topic_name(DEADLETTER, ns), min_count=3), DeadLetter)
        assert sorted(d.key for d in letters) == sorted(k for k, _, _ in poison_payloads(codec))
        assert all(d.processor == "curator" and d.source_topic == captured for d in letters)

        # the snapshot: counts, no overlap, reviews, parse failures never labels, byte-for-byte repeatable
        env = worker_env(ns, kafka_settings, tmp_path)
        first = json.loads(run_cli(["dataset", "snapshot", "--task", BANKING, "--json"], env))
        folder = Path(first["path"])
        bytes_first = {p.name: p.read_bytes() for p in folder.iterdir()}
        second = json.loads(run_cli(["dataset", "snapshot", "--task", BANKING, "--json"], env))
        assert second["snapshot_id"] == first["snapshot_id"] and Path(second["path"]) == folder
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == bytes_first
        manifest, train, holdout = read_snapshot(folder)
        want_train = {h: v for h, v in expected.items() if v[0] == "train"}
        want_holdout = {h: v for h, v in expected.items() if v[0] == "holdout"}
        assert manifest["counts"] == {"train": len(want_train), "holdout": len(want_holdout)}
        assert manifest["reviewed"] == {"train": 0, "holdout": 20}
        assert manifest["curation"]["conflicting_inputs"] == conflicting
        assert manifest["curation"]["excluded_by_review"] == 1
        assert manifest["curation"]["calls"] == 3000 and manifest["curation"]["distinct_inputs"] == stats[BANKING]["inputs"]
        assert set(manifest["source"]) == {topic_name(t, ns) for t in (DATASET, LABELS_REVIEWED, DATASET_FORGOTTEN)}
        for table, want in ((train, want_train), (holdout, want_holdout)):
            rows = table.to_pylist()
            assert {r["normalised_hash"]: (r["label"], r["reviewed"]) for r in rows} == {
                h: (label, reviewed) for h, (_, label, reviewed) in want.items()}
            assert all(r["label"] is not None for r in rows)
        assert not set(train.column("normalised_hash").to_pylist()) & set(holdout.column("normalised_hash").to_pylist())
        broken_only = {c.input for c in replay.calls if c.call_id in replay.parse_failures} - {
            c.input for c in replay.calls if c.output is not None}
        assert not broken_only & set(train.column("input").to_pylist() + holdout.column("input").to_pylist())

        # the review queue: a disagreement and a low-confidence shadow result first, then a sample
        rows = [r for r in holdout.to_pylist() if not r["reviewed"]]
        d, low = rows[0], rows[1]
        await produce(kafka_settings, codec, topic_name(DISAGREEMENTS, ns), [(d["call_id"], Disagreement(
            call_id=d["call_id"], task=BANKING, model_version="v1", input=d["input"], frontier_output=d["label"],
            small_output="card_linking", confidence=0.8))])
        await produce(kafka_settings, codec, topic_name(SHADOW_RESULTS, ns), [(low["call_id"], ShadowResult(
            call_id=low["call_id"], task=BANKING, model_version="v1", output=low["label"], confidence=0.2,
            latency_ms=5.0, frontier_output=low["label"]))])
        queue = json.loads(run_cli(["dataset", "review-queue", "--task", BANKING, "--limit", "12", "--json"], env))
        assert [(q["call_id"], q["reason"]) for q in queue[:2]] == [(d["call_id"], "disagreement"),
                                                                   (low["call_id"], "low_confidence")]
        assert len(queue) == 12 and all(q["reason"] == "sample" for q in queue[2:])
        unreviewed_holdout = {r["call_id"] for r in rows}
        assert all(q["call_id"] in unreviewed_holdout for q in queue)
        from_worker = worker.get(f"/curator/review-queue/?task={BANKING}&limit=12", timeout=60)
        assert [q["call_id"] for q in from_worker] == [q["call_id"] for q in queue]
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()
