"""Processor throughput vs a raw aiokafka consumer on the same topic, same broker, same run.

    .venv/bin/python bench/bench_processors.py [--n 5000] [--processors curator,profiler]

Produces N Banking77-based captured calls into a fresh namespace, then measures:
- raw: an AIOKafkaConsumer reading every partition to the end (bytes only), and the same reading
  plus Avro decoding (what every processor must do at least);
- each processor as a real `graduate worker` subprocess: source messages per second from its
  first processed event to its last (start-up excluded), read from its /metrics page;
- `faust-noop`: the same plumbing with a handler that does nothing, the floor of faust itself.
Writes bench/results/processors.json with the ratios processor / raw. The machine is shared, so
absolute numbers are noisy; the ratios are measured side by side.
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
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from services.common.catalog import CALLS_CAPTURED, CATALOG, topic_name  # noqa: E402
from services.common.codec import Codec  # noqa: E402
from services.common.contracts import CapturedCall  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics  # noqa: E402
from services.common.settings import KafkaSettings  # noqa: E402
from tests.integration.test_workers import banking77_calls, metric, start_worker, stop_worker  # noqa: E402
from tests.support import produce  # noqa: E402

# source messages a processor's handlers see per captured call (the curator re-keys by input)
EVENTS_PER_CALL = {"curator": 2, "profiler": 1, "faust-noop": 1}


def serve_noop() -> None:
    """A faust worker with the plumbing and a handler that does nothing: the floor of the stack."""
    import faust

    from services.common import catalog
    from services.common.settings import load_settings
    from services.common.streams import WorkerSettings, each_batch, make_app, source_topic

    settings = load_settings(WorkerSettings)
    app = make_app("faust-noop", settings)
    captured = source_topic(app, catalog.CALLS_CAPTURED, settings.topic_namespace)

    @each_batch(app, captured, CapturedCall, size=500, within=0.2)
    def nothing(items) -> None:
        return None

    faust.Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()


def start_noop(namespace: str, kafka: KafkaSettings, workdir: Path):
    import subprocess

    from tests.integration.test_workers import Worker, free_port, worker_env

    port = free_port()
    log = workdir / f"faust-noop-{port}.log"
    env = worker_env(namespace, kafka, workdir, GRADUATE_WORKER_WEB_PORT=str(port),
                     GRADUATE_WORKER_DATADIR=str(workdir / f"noop-{port}"))
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--serve-noop"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    return Worker("faust-noop", port, proc, log)


async def raw_consume(kafka: KafkaSettings, topic: str, n: int, codec: Codec | None) -> dict:
    consumer = AIOKafkaConsumer(**kafka.client_config(), enable_auto_commit=False, max_poll_records=500)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # metadata of a topic created just now
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, started = 0, time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000)
            for msgs in batch.values():
                for m in msgs:
                    if codec is not None:
                        codec.decode(m.value, CapturedCall)
                    seen += 1
        elapsed = time.perf_counter() - started
        return {"messages": seen, "seconds": round(elapsed, 3), "msgs_per_s": round(seen / elapsed, 1)}
    finally:
        await consumer.stop()


async def run_processor(name: str, namespace: str, kafka: KafkaSettings, n: int, workdir: Path) -> dict:
    worker = (start_noop(namespace, kafka, workdir) if name == "faust-noop"
              else start_worker(name, namespace, kafka, workdir, tag="-bench"))
    target = n * EVENTS_PER_CALL[name]
    first = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                done = metric(worker.get("/metrics"), "graduate_processor_processed_total", processor=name) or 0
            except OSError:
                done = 0
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done >= target:
                elapsed = now - first[0]
                counted = (target - first[1]) / EVENTS_PER_CALL[name]
                return {"messages": n, "seconds": round(elapsed, 3), "msgs_per_s": round(counted / elapsed, 1),
                        "handler_events": target}
            if worker.proc.poll() is not None:
                raise RuntimeError(f"{name} worker exited:\n{worker.tail()}")
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{name} did not finish:\n{worker.tail()}")
    finally:
        stop_worker(worker)


async def main(n: int, processors: list[str], out: Path) -> dict:
    kafka = KafkaSettings(bootstrap=os.environ.get("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    namespace = f"bench{uuid.uuid4().hex[:8]}."
    codec = Codec()
    workdir = Path("/tmp") / f"graduate-{namespace.rstrip('.')}"
    workdir.mkdir(parents=True, exist_ok=True)
    await ensure_topics(kafka, namespace)
    try:
        topic = topic_name(CALLS_CAPTURED, namespace)
        calls = banking77_calls(n, prefix="bench").calls
        await produce(kafka, codec, topic, [(c.call_id, c) for c in calls])
        await raw_consume(kafka, topic, n, None)  # warm the broker's page cache and the connection
        results: dict = {"raw_read": await raw_consume(kafka, topic, n, None),
                         "raw_read_decode": await raw_consume(kafka, topic, n, codec)}
        for name in processors:
            results[name] = await run_processor(name, namespace, kafka, n, workdir)
        # raw again after the processors, so drift on the shared machine shows
        results["raw_read_decode_after"] = await raw_consume(kafka, topic, n, codec)
        raw = (results["raw_read_decode"]["msgs_per_s"] + results["raw_read_decode_after"]["msgs_per_s"]) / 2
        report = {
            "benchmark": "processors vs raw aiokafka consumer, same topic, same broker, same run",
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared_machine": True},
            "n": n, "partitions": CALLS_CAPTURED.partitions, "results": results,
            "ratios_vs_raw_read_decode": {p: round(results[p]["msgs_per_s"] / raw, 3) for p in processors},
            "ratios_vs_raw_read": {p: round(results[p]["msgs_per_s"] / results["raw_read"]["msgs_per_s"], 3)
                                   for p in processors},
            "goal": "ratio >= 0.5",
            "notes": "processor rate = captured calls per second between its first and last processed event "
                     "(worker start-up and group join excluded); the curator's rate covers both of its stages "
                     "(curate + re-keyed input tracking), each with a changelog-backed table write.",
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        return report
    finally:
        await delete_topics(kafka, [topic_name(s, namespace) for s in CATALOG])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--processors", default="faust-noop,curator,profiler")
    parser.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "processors.json")
    args = parser.parse_args()
    if args.serve_noop:
        serve_noop()
        sys.exit(0)
    report = asyncio.run(main(args.n, args.processors.split(","), args.out))
    print(json.dumps({"results": report["results"], "ratios_vs_raw_read_decode": report["ratios_vs_raw_read_decode"]},
                     indent=2))
