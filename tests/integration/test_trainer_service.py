"""The trainer worker on the real Kafka: retrain requests in, its own snapshot, ModelRegistered and dead letters out.

The training run itself is replaced by a function returning a ready event (the pipeline has its
own integration test against Triton); Kafka, the codec, the curator's snapshot code and the
worker's loop are the real ones.
"""
import asyncio
import json
from pathlib import Path

import pytest

from services.common.contracts import (CapturedCall, DeadLetter, ModelRegistered, PairedCounts, RetrainRequest,
                                       ReviewedLabel)
from tests.integration.test_curator_worker import wait_for_dataset
from tests.integration.test_workers import start_worker, stop_worker
from tests.support import decode_all, produce, read_topic
from trainer.pipeline import TrainRun
from trainer.service import run
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration

TASK = "banking77-intent"
LABELS = ("card_arrival", "lost_or_stolen_card")


def registered(version: int) -> ModelRegistered:
    return ModelRegistered(task=TASK, version=str(version), base_model="b", snapshot_id="s", holdout_size=10,
                           gold_reviewed=3, gold_frontier=7, small_accuracy=0.9, frontier_accuracy=0.95,
                           agreement=0.9, paired=PairedCounts(both_correct=9, frontier_only=1), threshold=0.7,
                           coverage=0.8, artifact_uri="file:///m/1", triton_model=TASK)


def captured(i: int) -> CapturedCall:
    label = LABELS[i % 2]
    return CapturedCall(call_id=f"c{i}", task=TASK, input=f"customer message number {i} about {label}",
                        output_raw=label, output=label, latency_ms=400.0)


async def test_worker_snapshots_the_dataset_topic_itself_and_refuses_without_reviews(
        tmp_path: Path, topics, namespace, kafka_settings, codec, group_id) -> None:
    """Calls without reviews: refused with the reason; with reviews: trained on its own fresh snapshot."""
    calls: list[tuple[str, str]] = []

    def fake_train(settings, task, snapshot_ref):
        calls.append((task, snapshot_ref))
        event = registered(len(calls)).model_copy(update={"snapshot_id": snapshot_ref})
        return TrainRun({}, event, tmp_path, len(calls), tmp_path, tmp_path / "card.md")

    settings = TrainerSettings(var_dir=tmp_path, kafka=kafka_settings, topic_namespace=namespace,
                               consumer_group=group_id)
    requests = topics["graduate.retrain.requests"]
    history = [captured(i) for i in range(40)]
    await produce(kafka_settings, codec, topics["graduate.calls.captured"], [(c.call_id, c) for c in history])
    curator = start_worker("curator", namespace, kafka_settings, tmp_path)  # it keeps the dataset topic
    try:
        await wait_for_dataset(kafka_settings, codec, namespace, {TASK: 40}, curator)
    finally:
        assert stop_worker(curator) == 0, curator.tail()
    await produce(kafka_settings, codec, requests, [
        (TASK, RetrainRequest(task=TASK, reason="first", kind="first", requested_by="controller"))])
    letters = await _serve(settings, kafka_settings, topics["graduate.deadletter"], 1, fake_train)
    (refusal,) = decode_all(codec, letters, DeadLetter)
    assert "too few reviewed holdout items: 0, the gate needs 5" in refusal.reason and calls == []

    reviews = [ReviewedLabel(call_id=c.call_id, task=TASK, label=c.output, reviewer="r") for c in history]
    await produce(kafka_settings, codec, topics["graduate.labels.reviewed"], [(r.call_id, r) for r in reviews])
    await produce(kafka_settings, codec, requests, [
        (TASK, wanted := RetrainRequest(task=TASK, reason="approved", kind="manual", requested_by="me"))])
    models = await _serve(settings, kafka_settings, topics["graduate.models"], 1, fake_train)

    (event,) = decode_all(codec, models, ModelRegistered)
    ((task, snapshot_id),) = calls
    folder = tmp_path / "datasets" / TASK / snapshot_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert task == TASK and manifest["snapshot_id"] == snapshot_id == event.snapshot_id
    assert manifest["reviewed"]["holdout"] >= 5 and manifest["counts"]["train"] + manifest["counts"]["holdout"] == 40
    assert event.retrain_request_id == wanted.request_id  # the registration names the request it answers


async def _serve(settings, kafka_settings, topic: str, count: int, train) -> list:
    """Run the worker until `topic` holds `count` records."""
    stop = asyncio.Event()
    worker = asyncio.create_task(run(settings, stop=stop, train=train, holdout_fraction=0.5, min_reviewed_holdout=5))
    try:
        return await read_topic(kafka_settings, topic, min_count=count, timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)


async def test_worker_dead_letters_what_it_cannot_train(
        tmp_path: Path, topics, namespace, kafka_settings, codec, group_id) -> None:
    requests = topics["graduate.retrain.requests"]
    await produce(kafka_settings, codec, requests, [
        ("nope", RetrainRequest(task="no-such-task", reason="drift", requested_by="controller")),
        ("draft-reply", RetrainRequest(task="draft-reply", reason="drift", requested_by="controller")),
    ])
    await produce_raw(kafka_settings, requests, b"not avro")
    settings = TrainerSettings(var_dir=tmp_path, kafka=kafka_settings, topic_namespace=namespace,
                               consumer_group=group_id)
    stop = asyncio.Event()
    worker = asyncio.create_task(run(settings, stop=stop, train=lambda *a: None, holdout_fraction=0.5,
                                     min_reviewed_holdout=5))
    try:
        letters = await read_topic(kafka_settings, topics["graduate.deadletter"], min_count=3, timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    reasons = sorted(letter.reason for letter in decode_all(codec, letters, DeadLetter))
    assert len(reasons) == 3
    assert any("unknown task 'no-such-task'" in r for r in reasons)
    assert any("draft-reply is freeform" in r for r in reasons)
    assert any("not Avro" in r for r in reasons)


async def produce_raw(kafka_settings, topic: str, value: bytes) -> None:
    from services.common.kafka import make_producer

    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"garbage")
    finally:
        await producer.stop()
