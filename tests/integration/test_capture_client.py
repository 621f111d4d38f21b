"""The capture library against the real Kafka: sync and async recording, and replay of a spool."""
from __future__ import annotations

import threading

import pytest

from services.capture import CaptureClient, CaptureSettings
from services.common.catalog import CALLS_CAPTURED, topic_name
from services.common.contracts import CapturedCall
from tests.support import decode_all, read_topic

pytestmark = pytest.mark.integration


def call_fields(i: int) -> dict:
    return dict(call_id=f"cap-{i:04d}", task="banking77-intent", input=f"where is my card {i}",
                output_raw="card_arrival", output="card_arrival", latency_ms=420.0, prompt_tokens=80,
                completion_tokens=3, cost_usd=0.00023, model="gpt-4o-mini", tenant="billing")


async def test_sync_and_async_records_land_once_each(topics, kafka_settings, namespace, codec, tmp_path):
    client = CaptureClient(kafka_settings, name="itest", namespace=namespace,
                           settings=CaptureSettings(spool_dir=tmp_path / "spool"))
    await client.astart()
    threads = [threading.Thread(target=lambda i=i: client.record_call(**call_fields(i))) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(10, 20):
        await client.arecord_call(CapturedCall(**call_fields(i)))
    await client.arecord_call(**call_fields(3))  # a duplicate call_id: ignored
    await client.astop()
    stats = client.stats()
    assert (stats.delivered, stats.duplicates_ignored, stats.spool_records) == (20, 1, 0)

    records = await read_topic(kafka_settings, topic_name(CALLS_CAPTURED, namespace), min_count=20)
    calls = decode_all(codec, records, CapturedCall)
    assert sorted(c.call_id for c in calls) == [f"cap-{i:04d}" for i in range(20)]
    assert all(r.key == c.call_id.encode() for r, c in zip(records, calls, strict=True))
    assert calls[0].model_dump(exclude={"ts", "call_id", "input"}) == CapturedCall(**call_fields(0)).model_dump(
        exclude={"ts", "call_id", "input"})


async def test_a_spool_from_an_earlier_run_is_replayed_in_order(topics, kafka_settings, namespace, codec, tmp_path):
    settings = CaptureSettings(spool_dir=tmp_path / "spool")
    offline = CaptureClient(kafka_settings, name="itest", namespace=namespace, settings=settings)
    for i in range(30):  # never started: everything goes to the spool
        offline.record_call(**call_fields(i))
    assert offline.stats().spool_records == 30
    offline.stop()

    online = CaptureClient(kafka_settings, name="itest", namespace=namespace, settings=settings)
    await online.astart()
    await online.arecord_call(**call_fields(100))
    await online.astop()
    assert online.stats().spool_records == 0

    records = await read_topic(kafka_settings, topic_name(CALLS_CAPTURED, namespace), min_count=31)
    keys = [r.key.decode() for r in records]
    assert sorted(keys) == sorted([f"cap-{i:04d}" for i in range(30)] + ["cap-0100"])
    by_partition: dict[int, list[str]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r.key.decode())
    for keys_in_partition in by_partition.values():
        spooled = [k for k in keys_in_partition if k != "cap-0100"]
        assert spooled == sorted(spooled)  # replayed in the order they were spooled
