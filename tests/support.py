"""Helpers for integration tests: read a topic to its end, produce contracts."""
from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from typing import TypeVar

from services.common.codec import Codec
from services.common.contracts import Contract
from services.common.kafka import make_producer
from services.common.reader import TopicReader
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
    deadline = time.monotonic() + timeout
    while True:
        records = []
        async with TopicReader(kafka, topic) as reader:
            async for batch in reader:
                records.extend(batch)
        if len(records) >= min_count or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.5)


def decode_all(codec: Codec, records: list, model: type[T]) -> list[T]:
    return [codec.decode(r.value, model) for r in records]


def load_bench_script(name: str):
    """bench/<name>.py as a module (the benches are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
