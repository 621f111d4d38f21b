"""The one topic reader (services/common/reader.py) against the real broker: its edge cases."""
from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.common.catalog import ROUTER_OUTCOMES, topic_name
from services.common.contracts import RouterOutcome
from services.common.kafka import delete_topics, ensure_topics, make_producer, wait_for_leaders
from services.common.reader import Span, TopicReader, read_latest, replay_topic

pytestmark = pytest.mark.integration


async def create(kafka, name: str, partitions: int, config: dict | None = None) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_config())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        await wait_for_leaders(admin, [name])
    finally:
        await admin.close()


async def send(kafka, name: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for partition, key, value in records:
            await producer.send_and_wait(name, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def read_all(reader: TopicReader) -> list:
    out = []
    async for records in reader:
        out += records
    return out


async def test_empty_partitions_moving_ends_last_and_until(kafka_settings, namespace):
    name = f"{namespace}reader"
    await create(kafka_settings, name, 3)
    try:
        async with TopicReader(kafka_settings, name) as reader:  # every partition empty: done at once
            assert await read_all(reader) == [] and reader.caught_up
            assert list(reader.spans.values()) == [Span(0, 0)] * 3 and not reader.missing
        await send(kafka_settings, name, [(0, f"k{i}".encode(), f"v{i}".encode()) for i in range(5)]
                   + [(2, b"x", b"y")])
        async with TopicReader(kafka_settings, name) as reader:
            await send(kafka_settings, name, [(0, b"late", b"late")])  # after the ends were taken
            got = await read_all(reader)
        got.sort(key=lambda r: (r.partition, r.offset))  # in offset order per partition, partitions interleaved
        assert [(r.partition, r.value) for r in got] == [(0, f"v{i}".encode()) for i in range(5)] + [(2, b"y")]
        assert {tp.partition: (s.start, s.end) for tp, s in reader.spans.items()} == {0: (0, 5), 1: (0, 0), 2: (0, 1)}
        async with TopicReader(kafka_settings, name, last=2) as reader:
            assert [r.value for r in await read_all(reader) if r.partition == 0] == [b"v4", b"late"]
        async with TopicReader(kafka_settings, name, partitions=[0], until={0: 3}) as reader:
            assert [r.value for r in await read_all(reader)] == [b"v0", b"v1", b"v2"]
    finally:
        await delete_topics(kafka_settings, [name])


async def test_follow_reports_caught_up_then_reads_what_arrives(kafka_settings, namespace):
    name = f"{namespace}follow"
    await create(kafka_settings, name, 2)
    try:
        await send(kafka_settings, name, [(1, b"a", b"1")])
        seen, caught_up_after = [], None
        async with TopicReader(kafka_settings, name, follow=True, poll_ms=200) as reader:
            async def drive():
                nonlocal caught_up_after
                async for records in reader:
                    seen.extend(r.value for r in records)
                    if reader.caught_up and caught_up_after is None:
                        caught_up_after = list(seen)
                        await send(kafka_settings, name, [(0, b"b", b"2")])
                    if len(seen) == 2:
                        return
            await asyncio.wait_for(drive(), 30)
        assert caught_up_after == [b"1"] and seen == [b"1", b"2"]
        positions = {tp.partition: p for tp, p in reader.positions.items()}
        assert positions == {0: 1, 1: 1}
        async with TopicReader(kafka_settings, name, positions=reader.positions) as resumed:  # nothing new
            assert await read_all(resumed) == []
    finally:
        await delete_topics(kafka_settings, [name])


async def marker_written(kafka_settings, name: str, end: int, timeout_s: float = 30) -> None:
    """Wait until partition 0 ends at `end`: the coordinator appends a transaction's commit marker after
    the commit returns to the producer (CI once read the partition while it still ended at the last record)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        async with TopicReader(kafka_settings, name, partitions=[0], last=1) as probe:
            if [s.end for s in probe.spans.values()] == [end]:
                return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name}[0] did not reach offset {end} in {timeout_s} s")
        await asyncio.sleep(0.1)


async def test_gap_at_the_end_latest_per_key_and_tombstones(kafka_settings, namespace):
    """A transaction's commit marker takes the last offset, so `end - 1` is no record: the read must
    still finish (the way a compacted gap does); the latest value per key wins, a tombstone is None."""
    name = f"{namespace}gaps"
    await create(kafka_settings, name, 1, {"cleanup.policy": "compact"})
    producer = AIOKafkaProducer(**kafka_settings.client_config(), transactional_id=f"{namespace}tx")
    await producer.start()
    try:
        async with producer.transaction():
            for key, value in ((b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"b", None)):
                await producer.send(name, value, key=key, partition=0)
        latest = await read_latest(kafka_settings, name, [0])
        assert latest == {b"a": b"3", b"b": None}
        await marker_written(kafka_settings, name, end=5)
        async with TopicReader(kafka_settings, name, last=1) as reader:  # only the marker is in [end-1, end)
            assert await asyncio.wait_for(read_all(reader), 30) == [] and reader.caught_up
        assert [s.end for s in reader.spans.values()] == [5]  # four records and the commit marker
    finally:
        await producer.stop()
        await delete_topics(kafka_settings, [name])


async def test_missing_topics_and_undecodable_records(kafka_settings, namespace, codec):
    async with TopicReader(kafka_settings, f"{namespace}nowhere") as reader:
        assert await read_all(reader) == [] and reader.missing == {f"{namespace}nowhere"}
    with pytest.raises(LookupError, match="do not exist"):
        async with TopicReader(kafka_settings, f"{namespace}nowhere", missing_ok=False):
            pass
    await ensure_topics(kafka_settings, namespace, (ROUTER_OUTCOMES,))
    name = topic_name(ROUTER_OUTCOMES, namespace)
    try:
        good = RouterOutcome(call_id="c1", task="t", mode="frontier", served_by="frontier", latency_ms=1.0)
        await send(kafka_settings, name, [(3, b"t", codec.encode(good)), (3, b"t", b"not avro"),
                                          (5, b"u", codec.encode(good))])
        replay = await replay_topic(kafka_settings, codec, ROUTER_OUTCOMES, namespace, RouterOutcome)
        assert [(i.meta.partition, i.meta.offset, i.value.call_id) for i in replay.records] == [(3, 0, "c1"), (5, 0, "c1")]
        assert [(m.partition, m.offset) for m, _ in replay.undecodable] == [(3, 1)]
        assert replay.undecodable[0][1]  # the reason
        assert replay.offsets[3] == (0, 2) and replay.offsets[0] == (0, 0)
        last = await replay_topic(kafka_settings, codec, ROUTER_OUTCOMES, namespace, RouterOutcome, last=1)
        assert [i.meta.partition for i in last.records] == [5] and len(last.undecodable) == 1
    finally:
        await delete_topics(kafka_settings, [name])
