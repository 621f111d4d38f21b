"""The trainer as a Job: `group_drained` against the real broker (services/workers.py)."""
from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from services.common.catalog import RETRAIN_REQUESTS, topic_name
from services.workers import drained, group_drained
from tests.support import produce
from services.common.contracts import RetrainRequest


def test_drained_needs_every_partition_committed_to_its_end():
    assert drained({"p0": 5, "p1": 3}, {"p0": 5, "p1": 3})
    assert not drained({"p0": 5}, {"p0": 5, "p1": 3})  # p1 never committed, not empty
    assert drained({}, {"p0": 0})
    assert drained({"p0": -1}, {"p0": 0}) and not drained({"p0": -1}, {"p0": 1})
    assert not drained({"p0": 4}, {"p0": 5})


async def test_a_group_is_drained_once_it_committed_every_request(topics, namespace, kafka_settings, codec):
    topic = topic_name(RETRAIN_REQUESTS, namespace)
    group = f"{namespace}graduate-trainer"
    assert await group_drained(kafka_settings, group, topic)  # empty topic, no group yet
    request = RetrainRequest(task="banking77-intent", reason="test", requested_by="test")
    await produce(kafka_settings, codec, topic, [(request.request_id, request)])
    assert not await group_drained(kafka_settings, group, topic)

    consumer = AIOKafkaConsumer(topic, **kafka_settings.client_config(), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=10000)
        while not got:
            got = await consumer.getmany(timeout_ms=10000)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert await group_drained(kafka_settings, group, topic)
