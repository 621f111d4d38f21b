"""Records bound for chosen partitions, sent in one aiokafka record batch per topic partition.

aiokafka's `send` costs a future, a metadata check and an accumulator append per record (7.8-8.5 µs
of CPU a record against the local broker); appending a batch's records to one `BatchBuilder` per
topic partition (`create_batch` / `append` / `send_batch`) costs 1.6-1.8 µs with 256 KiB batches
(bench/results/send.json). The batch processors' `send_many` (services/common/batch.py) and
bench/bench_send.py both send through `send_batched`, so the bench measures the product's code.
"""
from __future__ import annotations

import asyncio
from typing import Any, Iterable, Optional

Record = tuple[str, int, Optional[bytes], bytes, list]  # topic, partition, key, value, headers


async def send_batched(producer: Any, records: Iterable[Record]) -> list[asyncio.Future]:
    """Append `records` to one record batch per (topic, partition) of `producer` (an
    AIOKafkaProducer) and send each batch; returns the futures to await. Order per topic partition
    is kept: a full batch is sent before the next is begun, and a record larger than a batch goes
    alone in one (a builder always takes its first record). The batches are this call's own: a
    `send` to the same partition meanwhile starts a batch of its own."""
    futures: list[asyncio.Future] = []
    builders: dict[tuple[str, int], Any] = {}
    for topic, partition, key, value, headers in records:
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[(topic, partition)] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full
            builder.close()
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[(topic, partition)] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None, headers=headers)
    for (topic, partition), builder in builders.items():
        builder.close()
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures
