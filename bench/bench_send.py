"""The batch processors' producer path: aiokafka `send` per record vs record batches per partition.

The curator sends a dataset record per input touched, to a chosen partition (its shard), so a
batch's records can go in one `BatchBuilder` per partition (`create_batch` / `append` /
`send_batch`: services/common/record_batches.py, what the batch processors send through) instead of
one `send` future each. Measured
side by side in one run against the broker at GRADUATE_KAFKA_BOOTSTRAP: CPU µs and wall µs per
record to send N real DatasetRecords (bench_processors' feed, one record per call, 2,000 a batch
as the curator reads them, spread over the dataset topic's 12 partitions) and await them, for
`send`, and for `send_batch` with record batches of 16 KiB (aiokafka's default) and 256 KiB (the
batch processors' producer). Writes bench/results/send.json.

    .venv/bin/python bench/bench_send.py [--n 24000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
import zlib
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_processors import captured_calls  # noqa: E402
from services.common.catalog import DATASET, topic_name  # noqa: E402
from services.common.codec import Codec  # noqa: E402
from services.common.contracts import DatasetRecord  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics, make_producer  # noqa: E402
from services.common.record_batches import send_batched  # noqa: E402
from services.common.settings import KafkaSettings  # noqa: E402
from services.curator.dataset import new_entry, record_key  # noqa: E402
from services.curator.logic import curate_call  # noqa: E402

BATCH = 2000  # records per curator batch (GRADUATE_CURATOR_BATCH_SIZE)


def dataset_records(n: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of the dataset record each of n calls would write as a new input."""
    encode = Codec().fields_encoder(DatasetRecord)
    out = []
    for call in captured_calls(n, prefix="s"):
        shard = zlib.crc32(call.call_id.encode()) % DATASET.partitions
        c = curate_call(call)
        out.append((shard, record_key(c.task, c.normalised_hash).encode(), encode(new_entry(c, 0, shard))))
    return out


async def send_each(producer, topic: str, records: list) -> None:
    for i in range(0, len(records), BATCH):
        futures = [await producer.send(topic, value, key=key, partition=p) for p, key, value in records[i:i + BATCH]]
        await asyncio.gather(*futures)


async def send_batches(producer, topic: str, records: list) -> None:
    for i in range(0, len(records), BATCH):
        await asyncio.gather(*await send_batched(producer, ((topic, p, key, value, []) for p, key, value
                                                            in records[i:i + BATCH])))


async def measure(kafka: KafkaSettings, n: int, rounds: int) -> dict:
    records = dataset_records(n)
    namespace = f"benchsend{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka, namespace)
    topic = topic_name(DATASET, namespace)
    ways = {"send": (send_each, 16384), "send_batch, 16 KiB batches": (send_batches, 16384),
            "send_batch, 256 KiB batches": (send_batches, 256 * 1024)}
    results: dict = {name: {"cpu_us_per_record": [], "wall_us_per_record": []} for name in ways}
    try:
        for _ in range(rounds):
            for name, (way, batch_bytes) in ways.items():
                producer = make_producer(kafka, max_batch_size=batch_bytes)
                await producer.start()
                try:
                    await way(producer, topic, records[:BATCH])  # warm up: connections, metadata
                    cpu, wall = time.process_time(), time.perf_counter()
                    await way(producer, topic, records)
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                finally:
                    await producer.stop()
                results[name]["cpu_us_per_record"].append(round(cpu / n * 1e6, 2))
                results[name]["wall_us_per_record"].append(round(wall / n * 1e6, 2))
    finally:
        await delete_topics(kafka, namespace=namespace)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "send.json")
    args = parser.parse_args()
    kafka = KafkaSettings(bootstrap=os.environ.get("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    results = asyncio.run(measure(kafka, args.n, args.rounds))
    best = {name: min(r["cpu_us_per_record"]) for name, r in results.items()}
    report = {
        "benchmark": "dataset records sent per record (send) vs in record batches per partition (send_batch)",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared_machine": True},
        "n": args.n, "rounds": args.rounds, "records_per_curator_batch": BATCH, "partitions": DATASET.partitions,
        "results": results,
        "headline": [{"name": f"CPU µs per dataset record sent: {name} (best of {args.rounds})", "value": v}
                     for name, v in best.items()],
        "notes": "CPU: this process's user+system time over the sends and their acks (acks=all, idempotent "
                 "producer as make_producer makes it), per record; wall: the same span. One batch of 2,000 "
                 "records is sent and awaited at a time, as the curator does per getmany.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))


if __name__ == "__main__":
    main()
