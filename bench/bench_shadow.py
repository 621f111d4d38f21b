"""Shadow throughput: micro-batched Triton requests vs one request per call, same run.

    .venv/bin/python bench/bench_shadow.py [--n-runner 1000] [--n-worker 600]

Needs the local Kafka and Triton (`make up`). A keyword model with the graduate model contract
(tests/support_triton.py, Python backend) is loaded for the run and removed after. Measures:
- runner: ShadowRunner.shadow() in-process against the real Triton over gRPC, the calls cut into
  requests of 32 (4 in flight) vs requests of 1 (4 in flight, and 1 in flight);
- worker: the real `graduate worker shadow` subprocess on N captured calls, micro-batches of 64
  with requests of 32 vs batches of 1 with requests of 1; calls per second from the first
  result to the last (Kafka record timestamps; start-up excluded).
Writes bench/results/shadow.json. The machine is shared, so absolute numbers are noisy; the
ratios are measured side by side. The keyword model costs almost nothing per text, so the
ratio is mostly per-request overhead (gRPC, Triton scheduling, the Python backend): a real
encoder spends more per text and batches better on a GPU, less on two CPU cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common import catalog  # noqa: E402
from services.common.catalog import CATALOG, topic_name  # noqa: E402
from services.common.codec import Codec  # noqa: E402
from services.common.contracts import RoutingDecision  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics  # noqa: E402
from services.common.settings import KafkaSettings  # noqa: E402
from services.common.triton import SmallModelClient  # noqa: E402
from services.shadow.logic import RoutingState, ShadowPolicy  # noqa: E402
from services.shadow.runner import ShadowRunner  # noqa: E402
from tests.integration.test_shadow_judge import DEFAULT, KEYWORDS, Worker, make_calls  # noqa: E402
from tests.support import produce, read_topic  # noqa: E402
from tests.support_triton import load_model, unload_and_remove, write_keyword_model  # noqa: E402

TASK = "bench-intent"


def decision(model: str) -> RoutingDecision:
    return RoutingDecision(task=TASK, mode="shadow", model_version="1", triton_model=model, reason="bench",
                           decided_by="bench")


async def bench_runner(grpc_url: str, model: str, n: int) -> dict:
    state = RoutingState()
    state.apply_decision(decision(model))
    calls = make_calls(TASK, n, random.Random(1), prefix="r")
    out = {}
    for name, max_request, in_flight in (("batched_32x4", 32, 4), ("per_call_x4", 1, 4), ("per_call_x1", 1, 1)):
        client = SmallModelClient(grpc_url, timeout_s=30)
        runner = ShadowRunner(client, state, ShadowPolicy(), max_request=max_request, max_in_flight=in_flight)
        try:
            await runner.shadow(calls[:64])  # warm the channel and the model
            started = time.perf_counter()
            results, failed = await runner.shadow(calls)
            seconds = time.perf_counter() - started
        finally:
            await client.close()
        assert len(results) == n and not failed, (len(results), failed)
        out[name] = {"calls": n, "request_texts": max_request, "in_flight": in_flight,
                     "seconds": round(seconds, 3), "calls_per_s": round(n / seconds, 1)}
    return out


async def bench_worker(kafka: KafkaSettings, codec: Codec, grpc_url: str, model: str, n: int, folder: Path,
                       batch: int, max_request: int) -> dict:
    namespace = f"b{uuid.uuid4().hex[:10]}."
    await ensure_topics(kafka, namespace)
    worker = Worker("shadow", namespace, folder, GRADUATE_KAFKA_BOOTSTRAP=kafka.bootstrap,
                    GRADUATE_TRITON_GRPC_URL=grpc_url, GRADUATE_SHADOW_BATCH_SIZE=str(batch),
                    GRADUATE_SHADOW_MAX_REQUEST=str(max_request))
    try:
        await produce(kafka, codec, topic_name(catalog.ROUTING_DECISIONS, namespace), [(TASK, decision(model))])
        calls = make_calls(TASK, n, random.Random(2), prefix="w")
        await produce(kafka, codec, topic_name(catalog.CALLS_CAPTURED, namespace), [(c.call_id, c) for c in calls])
        worker.start()
        results_topic = topic_name(catalog.SHADOW_RESULTS, namespace)
        deadline = time.monotonic() + 600
        while True:
            records = await read_topic(kafka, results_topic, timeout=1)
            if len({r.key for r in records}) >= n:
                break
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"shadow worker did not finish ({len(records)}/{n}):\n{worker.tail()}")
            await asyncio.sleep(1.0)
        stamps = sorted(r.timestamp for r in records)
        seconds = (stamps[-1] - stamps[0]) / 1000
        after_first = sum(1 for t in stamps if t > stamps[0])  # the first batch's own time is not measured
        return {"calls": n, "batch": batch, "request_texts": max_request, "seconds": round(seconds, 3),
                "calls_per_s": round(after_first / seconds, 1) if seconds > 0 else None}
    finally:
        if worker.alive():
            worker.stop()
        ours = [topic_name(s, namespace) for s in CATALOG] + [f"{namespace}graduate-shadow-__assignor-__leader"]
        await delete_topics(kafka, ours)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-runner", type=int, default=1000)
    parser.add_argument("--n-worker", type=int, default=600)
    args = parser.parse_args()
    kafka = KafkaSettings(bootstrap=os.environ.get("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    http_url = os.environ.get("GRADUATE_TRITON_HTTP_URL", "127.0.0.1:8000")
    grpc_url = os.environ.get("GRADUATE_TRITON_GRPC_URL", "127.0.0.1:8001")
    repository = Path(os.environ.get("GRADUATE_MODEL_REPOSITORY", ROOT / "var" / "model-repository"))
    codec = Codec()
    model = write_keyword_model(repository, KEYWORDS, DEFAULT)
    folder = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    try:
        load_model(http_url, model)
        runner = await bench_runner(grpc_url, model, args.n_runner)
        batched = await bench_worker(kafka, codec, grpc_url, model, args.n_worker, folder, batch=64, max_request=32)
        per_call = await bench_worker(kafka, codec, grpc_url, model, args.n_worker, folder, batch=1, max_request=1)
    finally:
        unload_and_remove(http_url, repository, model)
        shutil.rmtree(folder, ignore_errors=True)
    worker_ratio = round(batched["calls_per_s"] / per_call["calls_per_s"], 2)
    runner_ratio = round(runner["batched_32x4"]["calls_per_s"] / runner["per_call_x4"]["calls_per_s"], 2)
    report = {
        "benchmark": "shadow: micro-batched Triton requests vs one request per call, same run",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared_machine": True},
        "model": "keyword classifier, Triton Python backend, CPU (tests/support_triton.py)",
        "results": {**{f"runner_{k}": v for k, v in runner.items()},
                    "worker_batched": batched, "worker_per_call": per_call},
        "ratios": {"worker_batched_vs_per_call_ratio": worker_ratio,
                   "runner_batched_vs_per_call_ratio": runner_ratio},
        "headline": [{"name": "shadow worker, micro-batched / one request per call", "value": worker_ratio}],
        "notes": "calls per second; worker figures count the results after the first one's timestamp, over the "
                 "time from the first result to the last (start-up and the first batch excluded)",
    }
    out = ROOT / "bench" / "results" / "shadow.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
