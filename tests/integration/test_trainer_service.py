"""The trainer worker on the real Kafka: retrain requests in, ModelRegistered and dead letters out.

The training run itself is replaced by a function returning a ready event (the pipeline has its
own integration test against Triton); Kafka, the codec and the worker's loop are the real ones.
"""
import asyncio
from pathlib import Path

import pytest

from services.common.contracts import DeadLetter, ModelRegistered, PairedCounts, RetrainRequest
from tests.support import decode_all, produce, read_topic
from trainer.pipeline import TrainRun
from trainer.service import run
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration

TASK = "banking77-intent"


def registered(version: int) -> ModelRegistered:
    return ModelRegistered(task=TASK, version=str(version), base_model="b", snapshot_id="s", holdout_size=10,
                           gold_reviewed=3, gold_frontier=7, small_accuracy=0.9, frontier_accuracy=0.95,
                           agreement=0.9, paired=PairedCounts(both_correct=9, frontier_only=1), threshold=0.7,
                           coverage=0.8, artifact_uri="file:///m/1", triton_model=TASK)


async def test_worker_trains_on_request_and_dead_letters_the_rest(
        tmp_path: Path, topics, namespace, kafka_settings, codec, group_id) -> None:
    calls: list[tuple[str, str]] = []

    def fake_train(settings, task, snapshot_ref):
        calls.append((task, snapshot_ref))
        return TrainRun({}, registered(len(calls)), tmp_path, len(calls), tmp_path, tmp_path / "card.md")

    requests = topics["graduate.retrain.requests"]
    await produce(kafka_settings, codec, requests, [
        (TASK, wanted := RetrainRequest(task=TASK, reason="drift", requested_by="controller")),
        ("nope", RetrainRequest(task="no-such-task", reason="drift", requested_by="controller")),
        ("draft-reply", RetrainRequest(task="draft-reply", reason="drift", requested_by="controller")),
    ])
    await produce_raw(kafka_settings, requests, b"not avro")
    settings = TrainerSettings(var_dir=tmp_path, kafka=kafka_settings, topic_namespace=namespace,
                               consumer_group=group_id)
    stop = asyncio.Event()
    worker = asyncio.create_task(run(settings, stop=stop, train=fake_train))
    try:
        models = await read_topic(kafka_settings, topics["graduate.models"], min_count=1, timeout=60)
        letters = await read_topic(kafka_settings, topics["graduate.deadletter"], min_count=3, timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    assert calls == [(TASK, "latest")]
    (event,) = decode_all(codec, models, ModelRegistered)
    assert (event.task, event.version) == (TASK, "1") and models[0].key == f"{TASK}/1".encode()
    assert event.retrain_request_id == wanted.request_id  # the registration names the request it answers
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
