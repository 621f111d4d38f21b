"""Router latency, measured side by side in one run on loopback (a bounded load, not a stress test).

    .venv/bin/python bench/bench_router.py [--small-n 300] [--frontier-n 128] [--concurrency 16]

Needs Kafka and Triton (`make up`). Starts the simulator and two routers as real processes:
- small path: POST /v1/tasks/{task}/predict with the task in small mode (keyword model in the real
  Triton, every answer confident), one request at a time, against direct Triton gRPC calls with
  the same client the router uses (SmallModelClient) and against a do-nothing FastAPI endpoint
  (the floor of any HTTP hop from this client), in interleaved blocks;
- frontier path: the simulator at 400–900 ms (SIMULATED frontier, not a real LLM), N requests at a
  bounded concurrency, through a router with capture on and one with capture off. Each run gets a
  fresh simulator with the same seed and the same warm-up, so both draw the same multiset of
  upstream latencies: the difference between the two is the router's own overhead.
Writes bench/results/router.json with p50/p95/p99 per path and the ratios:
small/frontier p95 (goal <= 1/40), router small / direct Triton p50 (goal <= 1.3), capture on/off
p50 and p95 (goal <= 1.01).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from services.common.catalog import CATALOG, ROUTING_DECISIONS, topic_name  # noqa: E402
from services.common.codec import Codec  # noqa: E402
from services.common.contracts import RoutingDecision  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics  # noqa: E402
from services.common.settings import CommonSettings  # noqa: E402
from services.common.triton import SmallModelClient  # noqa: E402
from services.router.keys import create_key  # noqa: E402
from tests.support import produce  # noqa: E402
from tests.support_triton import load_model, unload_and_remove, write_keyword_model  # noqa: E402

TASK = "banking77-intent"
RESULTS = ROOT / "bench" / "results" / "router.json"
WARMUP = 16
GRADUATE = [str(Path(sys.executable).with_name("graduate"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banking77_texts(n: int) -> list[str]:
    with open(ROOT / "data" / "banking77" / "test.csv", newline="") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    return [rows[i % len(rows)] for i in range(n)]


def percentiles(samples_ms: list[float], errors: int = 0) -> dict:
    s = sorted(samples_ms)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(round(p * (len(s) - 1))))], 3)

    return {"n": len(s), "errors": errors, "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "mean_ms": round(statistics.fmean(s), 3)}


class Process:
    """A `graduate ...` server process, waited for and stopped."""

    def __init__(self, args: list[str], env: dict[str, str], health: str, log: Path) -> None:
        self.health, self.log = health, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([*GRADUATE, *args], env={**os.environ, **env}, stdout=out,
                                         stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 120.0) -> "Process":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.health} exited; see {self.log}")
            try:
                if httpx.get(self.health, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.health} not ready after {timeout} s; see {self.log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def simulator(workdir: Path, name: str, latency: str) -> tuple[Process, str]:
    port = free_port()
    p = Process(["frontier-sim", "--port", str(port), "--latency-ms", latency, "--seed", "0",
                 "--log-level", "warning"], {}, f"http://127.0.0.1:{port}/healthz", workdir / f"{name}.log")
    return p.wait(), f"http://127.0.0.1:{port}/v1"


def router(workdir: Path, name: str, namespace: str, frontier_url: str, capture: bool,
           common: CommonSettings) -> tuple[Process, str]:
    port = free_port()
    env = {"GRADUATE_TOPIC_NAMESPACE": namespace, "GRADUATE_VAR_DIR": str(workdir / name),
           "GRADUATE_KAFKA_BOOTSTRAP": common.kafka.bootstrap, "GRADUATE_TRITON_GRPC_URL": common.triton_grpc_url,
           "GRADUATE_ROUTER_API_KEYS_FILE": str(workdir / "keys.json"), "GRADUATE_FRONTIER_BASE_URL": frontier_url,
           "GRADUATE_ROUTER_CAPTURE_ENABLED": "true" if capture else "false", "GRADUATE_ROUTER_CAPTURE_NAME": name,
           "GRADUATE_ROUTER_SMALL_SAMPLE_RATE": "0", "GRADUATE_FRONTIER_MAX_CONNECTIONS": "256",
           "GRADUATE_ROUTER_METRICS_PORT": str(free_port())}
    p = Process(["serve", "router", "--port", str(port), "--log-level", "warning"], env,
                f"http://127.0.0.1:{port}/readyz", workdir / f"{name}.log")
    return p.wait(), f"http://127.0.0.1:{port}"


HOP_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
app = FastAPI()

@app.post("/v1/tasks/{task}/predict")
async def predict(task: str, request: Request):
    body = await request.json()
    return JSONResponse({"output": body["input"][:1], "served_by": "small", "latency_ms": 0.0})
"""


def http_hop(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A FastAPI endpoint that does nothing, under uvicorn like the router: the floor of any HTTP hop."""
    port = free_port()
    (workdir / "hop_app.py").write_text(HOP_APP)
    log = open(workdir / "hop.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "hop_app:app", "--app-dir", str(workdir), "--port",
                             str(port), "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/tasks/x/predict", json={"input": "x"}, timeout=1)
            return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("the HTTP hop baseline did not start")


async def load(url: str, key: str, texts: list[str], concurrency: int, expect: str | None = None,
               server_side: list[float] | None = None) -> tuple[list[float], int]:
    """POST predict for every text with at most `concurrency` in flight; latencies in ms, and errors.
    `server_side` collects the latency the router itself reports (`latency_ms`, inside the route)."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=60) as client:
        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                text = queue.get_nowait()
                start = time.perf_counter()
                r = await client.post(f"/v1/tasks/{TASK}/predict", json={"input": text})
                elapsed = (time.perf_counter() - start) * 1000
                if r.status_code != 200 or (expect and r.json()["served_by"] != expect):
                    errors += 1
                else:
                    latencies.append(elapsed)
                    if server_side is not None:
                        server_side.append(r.json()["latency_ms"])
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


async def direct_triton(grpc_url: str, model: str, texts: list[str]) -> list[float]:
    client = SmallModelClient(grpc_url, timeout_s=5)
    latencies = []
    try:
        for t in texts:
            start = time.perf_counter()
            await client.classify(model, "1", [t])
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        await client.close()
    return latencies


async def bench_small(url: str, hop_url: str, key: str, grpc_url: str, model: str, n: int, blocks: int = 6) -> dict:
    """Router small path, direct Triton and a do-nothing HTTP hop, one request at a time, interleaved blocks."""
    texts = [f"my card did not arrive ({i})" for i in range(n)]
    await load(url, key, texts[:WARMUP], 1, expect="small")
    await load(hop_url, key, texts[:WARMUP], 1)
    await direct_triton(grpc_url, model, texts[:WARMUP])
    routed, inside, direct, hop, errors = [], [], [], [], 0
    per = max(1, n // blocks)
    for b in range(blocks):
        chunk = texts[b * per:(b + 1) * per]
        r, e = await load(url, key, chunk, 1, expect="small", server_side=inside)
        routed += r
        errors += e
        direct += await direct_triton(grpc_url, model, chunk)
        hop += (await load(hop_url, key, chunk, 1))[0]
    return {"router_small": percentiles(routed, errors), "direct_triton": percentiles(direct),
            "router_small_inside_route": percentiles(inside), "http_hop_floor": percentiles(hop)}


async def bench_frontier(workdir: Path, namespace: str, key: str, common: CommonSettings, capture: bool,
                         texts: list[str], concurrency: int) -> dict:
    name = "capture_on" if capture else "capture_off"
    sim, sim_url = simulator(workdir, f"sim-{name}", "400-900")
    rt, url = router(workdir, f"router-{name}", namespace, sim_url, capture, common)
    try:
        await load(url, key, banking77_texts(WARMUP), concurrency)  # same warm-up, same simulator draws
        started = time.perf_counter()
        latencies, errors = await load(url, key, texts, concurrency, expect="frontier")
        result = percentiles(latencies, errors)
        result["wall_s"] = round(time.perf_counter() - started, 2)
        return result
    finally:
        rt.stop()
        sim.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-n", type=int, default=300)
    parser.add_argument("--frontier-n", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    common = CommonSettings()
    namespace = f"bench{uuid.uuid4().hex[:8]}."
    workdir = Path(tempfile.mkdtemp(prefix="graduate-bench-router-"))
    key = create_key(workdir / "keys.json", "bench")
    model = write_keyword_model(common.model_repository, {"arrive": "card_arrival"}, "card_linking")
    await ensure_topics(common.kafka, namespace)
    results: dict = {}
    try:
        load_model(common.triton_http_url, model)
        texts = banking77_texts(args.frontier_n)
        # Frontier path first (no routing decision yet = frontier mode): capture on, then off.
        results["frontier_capture_on"] = await bench_frontier(workdir, namespace, key, common, True, texts,
                                                              args.concurrency)
        results["frontier_capture_off"] = await bench_frontier(workdir, namespace, key, common, False, texts,
                                                               args.concurrency)
        # Small path: the task in small mode on the keyword model (every answer confident).
        decision = RoutingDecision(task=TASK, mode="small", model_version="1", threshold=0.5, triton_model=model,
                                   reason="benchmark", decided_by="bench")
        await produce(common.kafka, Codec(), topic_name(ROUTING_DECISIONS, namespace), [(TASK, decision)])
        sim, sim_url = simulator(workdir, "sim-small", "400-900")  # only for fallbacks (none expected)
        rt, url = router(workdir, "router-small", namespace, sim_url, True, common)
        hop, hop_url = http_hop(workdir)
        try:
            results.update(await bench_small(url, hop_url, key, common.triton_grpc_url, model, args.small_n))
        finally:
            hop.terminate()
            hop.wait(10)
            rt.stop()
            sim.stop()
    finally:
        unload_and_remove(common.triton_http_url, common.model_repository, model)
        await delete_topics(common.kafka, [topic_name(s, namespace) for s in CATALOG])
        shutil.rmtree(workdir, ignore_errors=True)

    small, direct = results["router_small"], results["direct_triton"]
    on, off = results["frontier_capture_on"], results["frontier_capture_off"]
    ratios = {
        "small_over_frontier_p95_ratio": round(small["p95_ms"] / on["p95_ms"], 5),
        "router_small_over_direct_triton_p50_ratio": round(small["p50_ms"] / direct["p50_ms"], 3),
        "inside_route_over_direct_triton_p50_ratio": round(results["router_small_inside_route"]["p50_ms"]
                                                           / direct["p50_ms"], 3),
        "router_small_over_http_hop_plus_triton_p50_ratio": round(
            small["p50_ms"] / (results["http_hop_floor"]["p50_ms"] + direct["p50_ms"]), 3),
        "capture_on_over_off_p50_ratio": round(on["p50_ms"] / off["p50_ms"], 4),
        "capture_on_over_off_p95_ratio": round(on["p95_ms"] / off["p95_ms"], 4),
    }
    report = {
        "benchmark": "router latency: small path, frontier path, direct Triton, capture on/off",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end)",
        "notes": ("Frontier = graduate frontier-sim, a SIMULATED model (400-900 ms), not a real LLM. Small model = "
                  "a keyword model (Triton Python backend, CPU). Small path and direct Triton: one request at a "
                  f"time, {args.small_n} each, interleaved blocks; frontier path: {args.frontier_n} requests at "
                  f"concurrency {args.concurrency}, a fresh simulator with seed 0 per run. Shared 2-core machine."),
        "config": {"small_n": args.small_n, "frontier_n": args.frontier_n, "concurrency": args.concurrency,
                   "warmup": WARMUP},
        "results": results,
        "ratios": ratios,
        "headline": [
            {"name": "router small / frontier p95", "value": ratios["small_over_frontier_p95_ratio"],
             "goal": "<= 0.025"},
            {"name": "router small / direct Triton p50", "value": ratios["router_small_over_direct_triton_p50_ratio"],
             "goal": "<= 1.3"},
            {"name": "capture on / off p50", "value": ratios["capture_on_over_off_p50_ratio"], "goal": "<= 1.01"},
        ],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
