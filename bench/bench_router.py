"""Router latency and Triton throughput with a REAL fine-tuned MiniLM, side by side in one run.

    .venv/bin/python bench/bench_router.py [--small-n 300] [--frontier-n 512] [--frontier-blocks 8]
                                           [--concurrency 16] [--throughput-n 640] [--profile-s 15]

A part given 0 (--small-n 0: small path and queue delay; --frontier-n 0; --throughput-n 0; --profile-s 0)
is left out, and the JSON then goes to <var>/bench/router-partial.json unless --out says otherwise.

Needs Kafka and Triton (`make up`). The small model is all-MiniLM-L6-v2 fine-tuned by the product's
trainer on a Banking77 slice (bench/router_model.py: trained once, cached under var/bench), served
by the real Triton with the trainer's own config.pbtxt, as fp32 and as dynamic int8. Starts the
simulator and routers as real processes:
- small path, per variant: POST /v1/tasks/{task}/predict with the task in small mode (threshold 0:
  every answer served small), one request at a time on Banking77 test texts, against direct Triton
  gRPC calls with the client the router uses (SmallModelClient: the raw KServe stub on grpc.aio, the
  leanest Python client) and a do-nothing plain-ASGI endpoint under uvicorn (the floor of any Python
  HTTP hop), in interleaved blocks whose order rotates from block to block; beside them the router's
  own Triton round trip (RouterOutcome.small_latency_ms, timed around the same classify call). The HTTP calls are made with aiohttp, a lean client like the
  baseline's, and again with httpx (whose own CPU, ~0.6 ms a call here, a caller pays on any HTTP
  hop): the headline ratio is aiohttp's, httpx's is reported beside it;
- frontier path: the simulator at its default latency (400-900 ms; a SIMULATED frontier, not a real
  LLM) with --latency-per-input (each text's latency a function of the text and seed), N requests
  per arm at a bounded concurrency through a router with capture on and one with capture off, both
  up at once, in interleaved blocks of the same texts (the order alternating): both arms wait the
  same upstream latencies, so the difference is the router's own; beside it the router's added time
  (the caller's latency minus the simulated latency of that text);
- throughput, per variant: Triton with 8 concurrent gRPC clients (one text per request, so Triton's
  dynamic batcher forms the batches; one asyncio process with grpc.aio) against in-process
  onnxruntime on batches of 32 (the same TextClassifier Triton runs: tokenizer, graph, calibration,
  session options, every core), in interleaved rounds;
- the trainer's config (one instance; a batch runs as one onnxruntime call per core) against the
  configs it replaced (int8): a 500 us queue delay, two instances with the cores split between them,
  and one instance with onnxruntime's default threads; a lone request one at a time, sent back to
  back and with a 0.8 ms pause before each (about the router's HTTP round trip between its calls),
  and 8 clients;
- with --profile-s: py-spy samples the small-path router under load and the active CPU is split by
  where it goes (needs py-spy in the venv: `uv pip install py-spy`).
Writes bench/results/router.json with p50/p95/p99 per path, the throughputs, the profile and the
ratios against the goals: router small / direct Triton p50 <= 1.3 (fp32 and int8), small p95 /
frontier p95 <= 1/60, capture on / off <= 1.01, Triton int8 (8 clients) / in-process batch 32 >= 0.8.
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

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from services.common.catalog import CATALOG, ROUTER_OUTCOMES, ROUTING_DECISIONS, topic_name  # noqa: E402
from services.common.codec import Codec  # noqa: E402
from services.common.contracts import RouterOutcome, RoutingDecision  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics  # noqa: E402
from services.common.settings import CommonSettings  # noqa: E402
from services.common.triton import SmallModelClient  # noqa: E402
from services.frontier_sim.simulator import input_latency_ms  # noqa: E402
from services.router.keys import create_key  # noqa: E402
from tests.support import decode_all, produce, read_topic  # noqa: E402
from tests.support_triton import load_model, unload_and_remove  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import router_model  # noqa: E402

TASK = "banking77-intent"
RESULTS = ROOT / "bench" / "results" / "router.json"
WARMUP = 16
SIM_LATENCY = "400-900"  # the simulator's default (GRADUATE_SIM_LATENCY_MIN_MS/MAX_MS)
SIM_SEED = 0
PAUSE_S = 0.0008  # between a lone request's answer and the next request: about the router's HTTP round trip
GRADUATE = [str(Path(sys.executable).with_name("graduate"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banking77_texts(n: int, offset: int = 0) -> list[str]:
    with open(ROOT / "data" / "banking77" / "test.csv", newline="") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    return [rows[(offset + i) % len(rows)] for i in range(n)]


def percentiles(samples_ms: list[float], errors: int = 0) -> dict:
    s = sorted(samples_ms)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(round(p * (len(s) - 1))))], 3)

    return {"n": len(s), "errors": errors, "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "mean_ms": round(statistics.fmean(s), 3)}


class Process:
    """A `graduate ...` server process (under `prefix`, e.g. py-spy, if given), waited for and stopped."""

    def __init__(self, args: list[str], env: dict[str, str], health: str, log: Path,
                 prefix: list[str] | None = None) -> None:
        self.health, self.log = health, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([*(prefix or []), *GRADUATE, *args], env={**os.environ, **env}, stdout=out,
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


def simulator(workdir: Path, name: str, latency: str, per_input: bool = False) -> tuple[Process, str]:
    port = free_port()
    p = Process(["frontier-sim", "--port", str(port), "--latency-ms", latency, "--seed", str(SIM_SEED),
                 "--latency-per-input" if per_input else "--latency-in-arrival-order", "--log-level", "warning"],
                {}, f"http://127.0.0.1:{port}/healthz", workdir / f"{name}.log")
    return p.wait(), f"http://127.0.0.1:{port}/v1"


def router(workdir: Path, name: str, namespace: str, frontier_url: str, capture: bool,
           common: CommonSettings, prefix: list[str] | None = None,
           extra_env: dict[str, str] | None = None) -> tuple[Process, str]:
    port = free_port()
    env = {"GRADUATE_TOPIC_NAMESPACE": namespace, "GRADUATE_VAR_DIR": str(workdir / name),
           "GRADUATE_KAFKA_BOOTSTRAP": common.kafka.bootstrap, "GRADUATE_TRITON_GRPC_URL": common.triton_grpc_url,
           "GRADUATE_ROUTER_API_KEYS_FILE": str(workdir / "keys.json"), "GRADUATE_FRONTIER_BASE_URL": frontier_url,
           "GRADUATE_ROUTER_CAPTURE_ENABLED": "true" if capture else "false", "GRADUATE_ROUTER_CAPTURE_NAME": name,
           "GRADUATE_ROUTER_SMALL_SAMPLE_RATE": "0", "GRADUATE_FRONTIER_MAX_CONNECTIONS": "256",
           "GRADUATE_ROUTER_METRICS_PORT": str(free_port()), **(extra_env or {})}
    p = Process(["serve", "router", "--port", str(port), "--log-level", "warning"], env,
                f"http://127.0.0.1:{port}/readyz", workdir / f"{name}.log", prefix)
    return p.wait(), f"http://127.0.0.1:{port}"


HOP_APP = """
import json
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
app = FastAPI()

@app.post("/v1/tasks/{task}/predict")
async def predict(task: str, request: Request):
    body = await request.json()
    return JSONResponse({"output": body["input"][:1], "served_by": "small", "latency_ms": 0.0})


async def asgi(scope, receive, send):
    # the same answer as plain ASGI (no FastAPI, no Starlette): the floor of a Python HTTP hop
    if scope["type"] != "http":
        return await app(scope, receive, send)
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    out = json.dumps({"output": json.loads(body)["input"][:1], "served_by": "small", "latency_ms": 0.0}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
"""


def http_hop(workdir: Path, app: str = "app") -> tuple[subprocess.Popen, str]:
    """An endpoint that does nothing, under uvicorn (uvloop, httptools) like the router: the floor of any
    HTTP hop; `app` = "app" (FastAPI) or "asgi" (plain ASGI)."""
    port = free_port()
    (workdir / "hop_app.py").write_text(HOP_APP)
    log = open(workdir / f"hop-{app}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", f"hop_app:{app}", "--app-dir", str(workdir), "--port",
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
               server_side: list[float] | None = None, answered: list[str] | None = None,
               stagger_s: float = 0.0) -> tuple[list[float], int]:
    """POST predict for every text with at most `concurrency` in flight; latencies in ms, and errors.
    `server_side` collects the latency the router itself reports (`latency_ms`, inside the route),
    `answered` the text of each latency, in the same order; `stagger_s` apart, the workers start one
    after the other (a steady arrival rate from the start, not a burst of `concurrency` at once)."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=60) as client:
        async def worker(i: int) -> None:
            nonlocal errors
            await asyncio.sleep(i * stagger_s)
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
                    if answered is not None:
                        answered.append(text)
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies, errors


async def load_lean(url: str, key: str, texts: list[str], expect: str | None = None,
                    server_side: list[float] | None = None,
                    call_ids: list[str] | None = None) -> tuple[list[float], int]:
    """As `load` with concurrency 1, through aiohttp (one keep-alive connection): the client's own CPU
    per call is a fraction of httpx's, as the gRPC stub's is for the direct Triton baseline."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(url, connector=connector, headers={"Authorization": f"Bearer {key}"},
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        for text in texts:
            start = time.perf_counter()
            async with session.post(f"/v1/tasks/{TASK}/predict", json={"input": text}) as r:
                raw = await r.read()
            elapsed = (time.perf_counter() - start) * 1000
            body = json.loads(raw) if r.status == 200 else None
            if body is None or (expect and body["served_by"] != expect):
                errors += 1
            else:
                latencies.append(elapsed)
                if server_side is not None:
                    server_side.append(body["latency_ms"])
                if call_ids is not None:
                    call_ids.append(body["call_id"])
    return latencies, errors


async def direct_triton(client: SmallModelClient, model: str, texts: list[str], pause_s: float = 0.0) -> list[float]:
    """Triton asked directly, as the router asks it (same client class, one warm channel); `pause_s`
    between an answer and the next request."""
    latencies = []
    for t in texts:
        start = time.perf_counter()
        await client.classify(model, "1", [t])
        latencies.append((time.perf_counter() - start) * 1000)
        if pause_s:
            await asyncio.sleep(pause_s)
    return latencies


async def triton_throughput(grpc_url: str, model: str, texts: list[str], clients: int = 8) -> dict:
    """Texts per second through Triton with `clients` concurrent gRPC clients, one text per request."""
    pool = [SmallModelClient(grpc_url, timeout_s=30) for _ in range(clients)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    try:
        for c in pool:  # warm every channel
            await c.classify(model, "1", texts[:1])
        for t in texts:
            queue.put_nowait(t)

        async def one(client: SmallModelClient) -> None:
            while not queue.empty():
                await client.classify(model, "1", [queue.get_nowait()])
        started = time.perf_counter()
        await asyncio.gather(*(one(c) for c in pool))
        wall = time.perf_counter() - started
    finally:
        for c in pool:
            await c.close()
    return {"texts": len(texts), "clients": clients, "wall_s": round(wall, 3), "texts_per_s": round(len(texts) / wall, 1)}


async def lone_requests(grpc_url: str, models: dict[str, str], n: int, blocks: int = 6) -> dict:
    """A lone request's latency (one at a time, interleaved blocks) per {label: Triton model}: the same
    int8 model under the trainer's config and under the configs it is compared with."""
    texts = banking77_texts(n, offset=2000)
    client = SmallModelClient(grpc_url, timeout_s=5)
    lone: dict[str, list[float]] = {}
    per = max(1, n // blocks)
    try:
        for model in models.values():
            await direct_triton(client, model, banking77_texts(WARMUP))
        for b in range(blocks):
            for label, model in models.items():
                for pause, pause_s in (("", 0.0), ("_after_pause", PAUSE_S)):
                    lone.setdefault(f"lone_request{pause}_{label}", []).extend(
                        await direct_triton(client, model, texts[b * per:(b + 1) * per], pause_s))
    finally:
        await client.close()
    return {name: percentiles(samples) for name, samples in lone.items()}


async def throughput_rounds(grpc_url: str, models: dict[str, str], staged: dict[str, Path], texts: list[str],
                            rounds: int) -> dict:
    """Triton with 8 clients per {label: model} and the in-process batch-32 baseline of each variant, in
    `rounds` interleaved rounds (the load on the shared cores moves: one run each would measure it):
    per measure the median texts/s and every run's."""
    runs: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, model in models.items():
            runs.setdefault(f"triton_8_clients_{label}", []).append(
                (await triton_throughput(grpc_url, model, texts))["texts_per_s"])
        for variant, folder in staged.items():
            runs.setdefault(f"in_process_batch32_{variant}", []).append(
                (await asyncio.to_thread(in_process_throughput, folder, texts))["texts_per_s"])
    return {name: {"texts": len(texts), "texts_per_s": round(statistics.median(r), 1), "runs": r}
            for name, r in runs.items()}


def in_process_throughput(staged: Path, texts: list[str], batch: int = 32) -> dict:
    """Texts per second through the classifier Triton runs, in this process, `batch` texts per call."""
    from trainer.triton_model import TextClassifier

    classifier = TextClassifier(staged)
    classifier.logits(texts[:batch])  # warm
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        classifier.logits(texts[i:i + batch])
    wall = time.perf_counter() - started
    return {"texts": len(texts), "batch": batch, "wall_s": round(wall, 3), "texts_per_s": round(len(texts) / wall, 1)}



async def bench_small(url: str, hop_url: str, key: str, grpc_url: str, model: str, n: int, blocks: int = 10) -> dict:
    """Router small path, direct Triton and a do-nothing plain-ASGI hop, one request at a time,
    interleaved blocks in a rotating order; the HTTP calls with aiohttp and with httpx."""
    texts = banking77_texts(n, offset=WARMUP)
    warm = banking77_texts(WARMUP)
    await load_lean(url, key, warm, expect="small")
    await load(url, key, warm, 1, expect="small")
    await load_lean(hop_url, key, warm)
    await load(hop_url, key, warm, 1)
    client = SmallModelClient(grpc_url, timeout_s=5)  # the router's own client class and channel options
    routed, inside, direct, hop, routed_httpx, hop_httpx, errors = [], [], [], [], [], [], 0
    call_ids: list[str] = []
    per = max(1, n // blocks)

    async def routed_lean(chunk: list[str]) -> None:
        nonlocal errors
        r, e = await load_lean(url, key, chunk, expect="small", server_side=inside, call_ids=call_ids)
        routed.extend(r)
        errors += e

    async def routed_with_httpx(chunk: list[str]) -> None:
        nonlocal errors
        r, e = await load(url, key, chunk, 1, expect="small")
        routed_httpx.extend(r)
        errors += e

    async def direct_block(chunk: list[str]) -> None:
        direct.extend(await direct_triton(client, model, chunk))

    async def hop_lean(chunk: list[str]) -> None:
        hop.extend((await load_lean(hop_url, key, chunk))[0])

    async def hop_with_httpx(chunk: list[str]) -> None:
        hop_httpx.extend((await load(hop_url, key, chunk, 1))[0])

    paths = [routed_lean, direct_block, hop_lean, routed_with_httpx, hop_with_httpx]
    try:
        await direct_triton(client, model, warm)
        for b in range(blocks):
            chunk = texts[b * per:(b + 1) * per]
            # the order rotates every block, so no path always runs right after the same other one
            for path in paths[b % len(paths):] + paths[:b % len(paths)]:
                await path(chunk)
    finally:
        await client.close()
    return {"call_ids": call_ids, "router_small": percentiles(routed, errors), "direct_triton": percentiles(direct),
            "router_small_inside_route": percentiles(inside), "asgi_hop_floor": percentiles(hop),
            "router_small_httpx": percentiles(routed_httpx), "asgi_hop_floor_httpx": percentiles(hop_httpx)}


async def bench_frontier(workdir: Path, namespace: str, key: str, common: CommonSettings, texts: list[str],
                         concurrency: int, blocks: int) -> dict:
    """Capture on against capture off on the frontier path, for the same traffic: both routers up at once
    in front of one simulator whose latency is a function of the input (--latency-per-input), so both
    arms wait the same upstream latencies whatever the arrival order; the texts go in `blocks` blocks,
    each block through both routers, the order alternating, its workers starting one after the other
    (no burst of `concurrency` requests at each block's start). Beside the caller's latency, the router's
    added time: the caller's latency minus the simulated latency of that input."""
    low, high = map(float, SIM_LATENCY.split("-"))
    sim, sim_url = simulator(workdir, "sim-frontier", SIM_LATENCY, per_input=True)
    routers = {arm: router(workdir, f"router-{arm}", namespace, sim_url, arm == "capture_on", common)
               for arm in ("capture_on", "capture_off")}
    latencies: dict[str, list[float]] = {arm: [] for arm in routers}
    added: dict[str, list[float]] = {arm: [] for arm in routers}
    errors = dict.fromkeys(routers, 0)
    wall = dict.fromkeys(routers, 0.0)
    per = max(1, len(texts) // blocks)
    stagger = (low + high) / 2000 / concurrency  # the closed loop's steady arrival interval
    try:
        for _, url in routers.values():  # the same warm-up for both
            await load(url, key, banking77_texts(WARMUP, offset=3000), concurrency)
        for b in range(blocks):
            chunk = texts[b * per:(b + 1) * per]
            for arm in (("capture_on", "capture_off") if b % 2 == 0 else ("capture_off", "capture_on")):
                answered: list[str] = []
                started = time.perf_counter()
                ms, e = await load(routers[arm][1], key, chunk, concurrency, expect="frontier", answered=answered,
                                   stagger_s=stagger)
                wall[arm] += time.perf_counter() - started
                latencies[arm] += ms
                errors[arm] += e
                added[arm] += [m - input_latency_ms(TASK, t, SIM_SEED, low, high) for m, t in zip(ms, answered)]
    finally:
        for p, _ in routers.values():
            p.stop()
        sim.stop()
    out = {}
    for arm in routers:
        out[f"frontier_{arm}"] = percentiles(latencies[arm], errors[arm]) | {"wall_s": round(wall[arm], 2)}
        out[f"frontier_added_{arm}"] = percentiles(added[arm])
    return out


async def router_triton_legs(common: CommonSettings, namespace: str, at_least: int) -> dict[str, float]:
    """call_id -> the router's own Triton round trip (RouterOutcome.small_latency_ms: timed around the same
    SmallModelClient.classify call as the direct baseline), for every small answer the router published."""
    records = await read_topic(common.kafka, topic_name(ROUTER_OUTCOMES, namespace), min_count=at_least, timeout=30)
    return {o.call_id: o.small_latency_ms for o in decode_all(Codec(), records, RouterOutcome)
            if o.small_latency_ms is not None}


async def decide(common: CommonSettings, namespace: str, model: str, url: str, key: str) -> None:
    """Put the task in small mode on `model` (threshold 0: every answer is served small) and wait
    until the router follows the decision."""
    decision = RoutingDecision(task=TASK, mode="small", model_version="1", threshold=0.0, triton_model=model,
                               reason="benchmark", decided_by="bench")
    await produce(common.kafka, Codec(), topic_name(ROUTING_DECISIONS, namespace), [(TASK, decision)])
    if not url:
        return
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        while time.monotonic() < deadline:
            r = await client.post(f"/v1/tasks/{TASK}/predict", json={"input": "my card did not arrive"})
            if r.status_code == 200 and r.json()["served_by"] == "small" and model in str(
                    (await client.get("/v1/tasks")).json()):
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the router did not follow the decision for {model}")


# -- the profile -------------------------------------------------------------------------------
# Where a router's CPU goes. A stack counts for the capture when any frame is the capture's (its
# sender thread); else for the innermost frame that names a part; the event loop only when nothing
# else does. A stack whose leaf waits in epoll is idle (py-spy --nonblocking cannot always tell); a
# thread whose leaf is a native Thread.run is grpc's poller, counted for the Triton client.
CAPTURE = ("capture (sender thread: build, encode, aiokafka)",
           ("services/capture/", "aiokafka", "fastavro", "services/common/codec"))
PROFILE_PARTS = (
    ("Triton gRPC client", ("tritonclient", "grpc/", "services/common/triton")),
    ("API keys", ("services/router/keys",)),
    ("RouterOutcome and metrics", ("outcome_of", "prometheus_client", "services/router/metrics")),
    ("route logic", ("services/router/logic", "services/router/routes", "services/router/deps",
                     "services/common/redaction")),
    ("middleware and response (FastAPI/Starlette)", ("starlette", "fastapi", "services/router/app")),
    ("JSON and pydantic", ("json/", "pydantic")),
    ("uvicorn and HTTP (parse, socket write)", ("uvicorn", "h11", "httptools")),
)
EVENT_LOOP = ("asyncio event loop", ("asyncio/", "selectors"))
IDLE_LEAVES = ("EpollSelector.select", "select (selectors",
               "Runner.run (asyncio/runners.py")  # uvloop: its loop (epoll) is native, under Runner.run
GRPC_POLLER = ("Thread.run (threading.py",)  # grpc.aio's completion-queue poller thread (native)


def part_of(frames: list[str]) -> str:
    if any(m in f for f in frames for m in CAPTURE[1]):
        return CAPTURE[0]
    if frames[-1].startswith(GRPC_POLLER):
        return PROFILE_PARTS[0][0]
    for frame in reversed(frames):
        for name, marks in PROFILE_PARTS:
            if any(m in frame for m in marks):
                return name
    return EVENT_LOOP[0] if any(m in f for f in frames for m in EVENT_LOOP[1]) else "other"


def profile_shares(raw: Path) -> dict:
    """Shares of the busy (not idle) samples per part, from py-spy's raw (collapsed) output."""
    totals: dict[str, int] = {}
    idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            idle += int(count)
            continue
        part = part_of(frames)
        totals[part] = totals.get(part, 0) + int(count)
    n = sum(totals.values()) or 1
    return {"samples": n + idle, "busy_samples": n, "idle_samples": idle,
            "shares": {k: round(v / n, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}


async def profile_router(workdir: Path, namespace: str, key: str, common: CommonSettings, sim_url: str,
                         seconds: float) -> dict:
    """py-spy (200 Hz, active samples only, every thread) on a small-path router under a
    one-request-at-a-time load."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        return {"skipped": "py-spy is not in the venv (uv pip install py-spy)"}
    raw = workdir / "router.profile.txt"
    rt, url = router(workdir, "router-profile", namespace, sim_url, True, common)
    try:
        await load_lean(url, key, banking77_texts(WARMUP), expect="small")
        spy = await asyncio.create_subprocess_exec(
            str(py_spy), "record", "--pid", str(rt.proc.pid), "--rate", "200", "--duration", str(int(seconds)),
            "--format", "raw", "--nonblocking", "--output", str(raw),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        requests = 0
        while spy.returncode is None:
            await load_lean(url, key, banking77_texts(50, offset=requests), expect="small")
            requests += 50
            try:
                await asyncio.wait_for(spy.wait(), 0.001)
            except asyncio.TimeoutError:
                pass
        err = (await spy.stderr.read()).decode(errors="replace")
    finally:
        rt.stop()
    if not raw.exists():
        return {"skipped": f"py-spy wrote no profile: {err.strip()[-300:]}"}
    kept = common.var_dir / "bench" / "router.profile.txt"  # the raw stacks, for a closer look (not a result)
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(raw, kept)
    return {"requests": requests, "seconds": seconds, "raw_stacks": str(kept), **profile_shares(raw)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-n", type=int, default=300, help="requests per small-path measure (0: none)")
    parser.add_argument("--frontier-n", type=int, default=512, help="requests per arm, capture on and off (0: none)")
    parser.add_argument("--frontier-blocks", type=int, default=8, help="interleaved blocks of the frontier arms")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--throughput-n", type=int, default=640, help="texts per throughput run (0: none)")
    parser.add_argument("--throughput-rounds", type=int, default=3, help="interleaved rounds of the throughput runs")
    parser.add_argument("--profile-s", type=float, default=15,
                        help="py-spy the router this long (0: no profile; skipped without py-spy in the venv)")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes (default: bench/results/"
                        "router.json for a whole run, <var>/bench/router-partial.json when a part is left out)")
    args = parser.parse_args()
    whole = min(args.small_n, args.frontier_n, args.throughput_n, args.profile_s) > 0

    common = CommonSettings()
    staged = router_model.cached_models(common.var_dir, common.model_repository, common.triton_http_url)
    trained = json.loads((router_model.cache_dir(common.var_dir) / "trained.json").read_text())
    namespace = f"bench{uuid.uuid4().hex[:8]}."
    suffix = uuid.uuid4().hex[:6]
    models = {v: f"bench-router-{suffix}-{v}" for v in staged}
    delayed = f"bench-router-{suffix}-int8-delay500"
    one_instance = f"bench-router-{suffix}-int8-one-instance"
    two_instances = f"bench-router-{suffix}-int8-two-instances"
    workdir = Path(tempfile.mkdtemp(prefix="graduate-bench-router-"))
    key = create_key(workdir / "keys.json", "bench")
    await ensure_topics(common.kafka, namespace)
    results: dict = {}
    call_ids: dict[str, list[str]] = {}
    throughput: dict = {}
    queue_delay: dict = {}
    profile: dict = {}
    sim = None
    try:
        for variant, model in models.items():
            router_model.install(staged[variant], common.model_repository, model)
            load_model(common.triton_http_url, model)
        router_model.install(staged["int8"], common.model_repository, delayed, queue_delay_us=500)
        load_model(common.triton_http_url, delayed)
        # the config before: one instance, onnxruntime's default threads (every core)
        router_model.install(staged["int8"], common.model_repository, one_instance, instances=1, threads="0")
        load_model(common.triton_http_url, one_instance)
        # the config before that: two instances, the cores split between them, a batch in one call
        router_model.install(staged["int8"], common.model_repository, two_instances, instances=2, threads="auto",
                             parallel="1")
        load_model(common.triton_http_url, two_instances)
        # Frontier path first (no routing decision yet = frontier mode): capture on and off, interleaved.
        if args.frontier_n > 0:
            results |= await bench_frontier(workdir, namespace, key, common, banking77_texts(args.frontier_n),
                                            args.concurrency, args.frontier_blocks)
        # Small path per variant, then Triton throughput against in-process batches.
        await decide(common, namespace, models["fp32"], "", key)
        sim, sim_url = simulator(workdir, "sim-small", SIM_LATENCY)  # only for fallbacks (none expected)
        rt, url = router(workdir, "router-small", namespace, sim_url, True, common)
        hop, hop_url = http_hop(workdir, "asgi")
        try:
            for variant, model in models.items() if args.small_n > 0 else ():
                await decide(common, namespace, model, url, key)
                small = await bench_small(url, hop_url, key, common.triton_grpc_url, model, args.small_n)
                call_ids[variant] = small.pop("call_ids")
                for k, v in small.items():
                    results[f"{k}_{variant}"] = v
            legs = await router_triton_legs(common, namespace, sum(map(len, call_ids.values()))) if call_ids else {}
            for variant, ids in call_ids.items():
                results[f"router_triton_call_{variant}"] = percentiles([legs[c] for c in ids if c in legs])
        finally:
            hop.terminate()
            hop.wait(10)
            rt.stop()
        compared = {**models, "int8_two_instances": two_instances, "int8_one_instance": one_instance,
                    "int8_delay500": delayed}
        if args.throughput_n > 0:
            throughput = await throughput_rounds(common.triton_grpc_url, compared, staged,
                                                 banking77_texts(args.throughput_n, offset=1000),
                                                 args.throughput_rounds)
        if args.small_n > 0:
            lone = {"int8": models["int8"], "int8_delay500": delayed, "int8_two_instances": two_instances,
                    "int8_one_instance": one_instance}
            queue_delay = await lone_requests(common.triton_grpc_url, lone, args.small_n)
        if args.profile_s > 0:
            profile = await profile_router(workdir, namespace, key, common, sim_url, args.profile_s)
    finally:
        if sim is not None:  # stopped on a failure too: a crashed run left its simulator running
            sim.stop()
        for model in (*models.values(), delayed, one_instance, two_instances):
            unload_and_remove(common.triton_http_url, common.model_repository, model)
        await delete_topics(common.kafka, [topic_name(s, namespace) for s in CATALOG])
        shutil.rmtree(workdir, ignore_errors=True)

    on, off = results.get("frontier_capture_on"), results.get("frontier_capture_off")
    ratios: dict = {}
    for v in models if args.small_n > 0 else ():
        small, direct = results[f"router_small_{v}"], results[f"direct_triton_{v}"]
        ratios[f"router_small_over_direct_triton_p50_ratio_{v}"] = round(small["p50_ms"] / direct["p50_ms"], 3)
        ratios[f"inside_route_over_direct_triton_p50_ratio_{v}"] = round(
            results[f"router_small_inside_route_{v}"]["p50_ms"] / direct["p50_ms"], 3)
        ratios[f"router_triton_call_over_direct_triton_p50_ratio_{v}"] = round(
            results[f"router_triton_call_{v}"]["p50_ms"] / direct["p50_ms"], 3)
        ratios[f"router_small_httpx_over_direct_triton_p50_ratio_{v}"] = round(
            results[f"router_small_httpx_{v}"]["p50_ms"] / direct["p50_ms"], 3)
        ratios[f"router_small_over_asgi_hop_plus_triton_p50_ratio_{v}"] = round(
            small["p50_ms"] / (results[f"asgi_hop_floor_{v}"]["p50_ms"] + direct["p50_ms"]), 3)
        for client in ("", "_httpx"):  # the best any Python hop does, with that client
            ratios[f"asgi_hop{client}_plus_triton_over_direct_triton_p50_ratio_{v}"] = round(
                (results[f"asgi_hop_floor{client}_{v}"]["p50_ms"] + direct["p50_ms"]) / direct["p50_ms"], 3)
        if on:
            ratios[f"small_over_frontier_p95_ratio_{v}"] = round(small["p95_ms"] / on["p95_ms"], 5)
    for v in models if throughput else ():
        ratios[f"triton_8_clients_over_in_process_batch32_ratio_{v}"] = round(
            throughput[f"triton_8_clients_{v}"]["texts_per_s"] / throughput[f"in_process_batch32_{v}"]["texts_per_s"],
            3)
    for other in ("delay500", "two_instances", "one_instance") if queue_delay else ():
        for pause in ("", "_after_pause"):
            ratios[f"lone_request{pause}_over_{other}_p50_ratio_int8"] = round(
                queue_delay[f"lone_request{pause}_int8"]["p50_ms"]
                / queue_delay[f"lone_request{pause}_int8_{other}"]["p50_ms"], 3)
    for other in ("delay500", "two_instances", "one_instance") if throughput else ():
        ratios[f"triton_8_clients_over_{other}_ratio_int8"] = round(
            throughput["triton_8_clients_int8"]["texts_per_s"]
            / throughput[f"triton_8_clients_int8_{other}"]["texts_per_s"], 3)
        ratios[f"triton_8_clients_{other}_over_in_process_batch32_ratio_int8"] = round(
            throughput[f"triton_8_clients_int8_{other}"]["texts_per_s"]
            / throughput["in_process_batch32_int8"]["texts_per_s"], 3)
    if on:
        ratios["capture_on_over_off_p50_ratio"] = round(on["p50_ms"] / off["p50_ms"], 4)
        ratios["capture_on_over_off_p95_ratio"] = round(on["p95_ms"] / off["p95_ms"], 4)
        added_on, added_off = results["frontier_added_capture_on"], results["frontier_added_capture_off"]
        ratios["capture_on_minus_off_added_p50_ms"] = round(added_on["p50_ms"] - added_off["p50_ms"], 3)
    goals = {"router_small_over_direct_triton_p50_ratio_fp32": ("<=", 1.3),
             "router_small_over_direct_triton_p50_ratio_int8": ("<=", 1.3),
             "small_over_frontier_p95_ratio_fp32": ("<=", round(1 / 60, 5)),
             "small_over_frontier_p95_ratio_int8": ("<=", round(1 / 60, 5)),
             "capture_on_over_off_p50_ratio": ("<=", 1.01),
             "triton_8_clients_over_in_process_batch32_ratio_int8": (">=", 0.8)}
    headline = [{"name": name, "value": ratios[name], "goal": f"{op} {goal}",
                 "met": ratios[name] <= goal if op == "<=" else ratios[name] >= goal}
                for name, (op, goal) in goals.items() if name in ratios]
    report = {
        "benchmark": "router latency with a real fine-tuned MiniLM (fp32, int8): small path, frontier path, "
                     "direct Triton, capture on/off, Triton throughput",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end)",
        "notes": (f"Frontier = graduate frontier-sim, a SIMULATED model ({SIM_LATENCY} ms, its default), not a real "
                  f"LLM. Small model = all-MiniLM-L6-v2 fine-tuned by the product's trainer on a Banking77 slice "
                  f"({trained['labels']} intents x {trained['per_label_train']} texts, max_length "
                  f"{trained['max_length']}), served by the real Triton (Python backend, CPU, the trainer's "
                  f"config.pbtxt) as fp32 and dynamic int8; inputs are Banking77 test texts. Small path and direct "
                  f"Triton: one request at a time, {args.small_n} each, interleaved blocks, the HTTP calls with aiohttp "
                  f"(router_small, asgi_hop_floor; the headline) and with httpx (*_httpx); frontier path (httpx): "
                  f"{args.frontier_n} requests per arm at concurrency {args.concurrency}, capture on and off through "
                  f"two routers up at once in {args.frontier_blocks} interleaved blocks (the order alternating), one "
                  f"simulator with seed {SIM_SEED} and --latency-per-input (both arms wait the same upstream latency "
                  f"per text); frontier_added_*: the caller's latency minus the simulated latency of that text; "
                  f"throughput: {args.throughput_n} texts per run, {args.throughput_rounds} interleaved rounds (median "
                  f"and every run), the load generator one asyncio process with grpc.aio (8 channels); "
                  f"*_two_instances: the trainer's config before (2 instances, onnxruntime threads = cores // 2 "
                  f"each, a batch in one call); *_one_instance: the one before that (1 instance, onnxruntime's "
                  f"default threads); lone_request_after_pause_*: one at a time with {PAUSE_S * 1000:g} ms between "
                  f"an answer and the next request. "
                  f"Shared 2-core machine."),
        "config": {"small_n": args.small_n, "frontier_n": args.frontier_n, "frontier_blocks": args.frontier_blocks,
                   "concurrency": args.concurrency,
                   "throughput_n": args.throughput_n, "throughput_rounds": args.throughput_rounds, "warmup": WARMUP, "model": trained},
        "results": results,
        "throughput": throughput,
        "triton_lone_request": queue_delay,
        "ratios": ratios,
        "headline": headline,
    }
    if profile:
        report["profile"] = profile.get("shares", profile)
        report["profile_samples"] = {k: v for k, v in profile.items() if k != "shares"}
    out = args.out or (RESULTS if whole else common.var_dir / "bench" / "router-partial.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"results": results, "throughput": throughput, "ratios": ratios, "profile": profile}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
