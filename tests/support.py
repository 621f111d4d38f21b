"""Helpers for integration tests: read a topic to its end, produce contracts."""
from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.codec import Codec
from services.common.contracts import Contract
from services.common.kafka import make_producer
from services.common.settings import KafkaSettings

T = TypeVar("T", bound=Contract)


async def produce(kafka: KafkaSettings, codec: Codec, topic: str, records: list[tuple[str, Contract]]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        futures = [await producer.send(topic, codec.encode(value), key=key.encode()) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(kafka: KafkaSettings, topic: str, *, min_count: int = 0, timeout: float = 30.0) -> list:
    """Every record of `topic` from the beginning; waits (bounded) until at least min_count exist."""
    consumer = AIOKafkaConsumer(**kafka.client_config(), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])]
            if not parts:
                await consumer._client.force_metadata_update()  # new topic: metadata not there yet
                parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            records = []
            while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(*parts, timeout_ms=1000)
                for msgs in batch.values():
                    records.extend(msgs)
            if len(records) >= min_count or time.monotonic() > deadline:
                return records
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


def decode_all(codec: Codec, records: list, model: type[T]) -> list[T]:
    return [codec.decode(r.value, model) for r in records]
