"""Streamed time to first chunk through the router vs straight to the upstream, side by side.

    nice -n 5 .venv/bin/python bench/bench_stream.py [--n 40]

Needs Kafka (`make up`) and the LiteLLM proxy (`make upstream`). The upstream is the LiteLLM proxy,
a third-party OpenAI-compatible server, with a mocked streamed answer (tests/upstream/gated_handler.py):
the first chunk at once, the rest 0.3 s later, so a router that buffered the answer would show it.
The router runs as a real process (`graduate serve router`, capture on, the task in frontier mode).
Requests alternate direct / through the router, one at a time; time to first chunk is from sending
the request to the first content chunk. Writes bench/results/stream.json (goal: router p50 within
20 ms of direct p50).
"""
from __future__ import annotations

import argparse
import asyncio
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

from services.common.catalog import CATALOG, topic_name  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics  # noqa: E402
from services.common.settings import CommonSettings  # noqa: E402
from services.router.keys import create_key  # noqa: E402

GRADUATE = str(Path(sys.executable).with_name("graduate"))
LITELLM = ROOT / ".venv-upstream" / "bin" / "litellm"
MASTER_KEY = "sk-graduate-upstream-test"  # tests/upstream/litellm_config.yaml
TASK = "banking77-intent"
PAUSE_S = 0.3
GOAL_MS = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], health: str, log: Path, cwd: Path = ROOT,
          timeout: float = 120.0) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited; see {log}")
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"{health} not ready after {timeout} s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def first_chunk_ms(client: httpx.AsyncClient, url: str, key: str, text: str) -> tuple[float, float]:
    """(ms to the first content chunk, ms to the end of the stream)."""
    body = {"model": "gated", "stream": True, "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {key}", "X-Graduate-Task": TASK}
    started = time.perf_counter()
    first = None
    async with client.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {") and '"content"' in line:
                first = (time.perf_counter() - started) * 1000
    return first, (time.perf_counter() - started) * 1000


def summary(samples: list[float]) -> dict:
    s = sorted(samples)
    q = lambda p: round(s[min(len(s) - 1, int(round(p * (len(s) - 1))))], 3)  # noqa: E731
    return {"n": len(s), "p50_ms": q(0.5), "p95_ms": q(0.95), "mean_ms": round(statistics.fmean(s), 3)}


async def measure(direct: str, router: str, router_key: str, n: int) -> dict:
    ttfc = {"direct": [], "router": []}
    total = {"direct": [], "router": []}
    async with httpx.AsyncClient(timeout=30) as client:
        pair = [("direct", direct, MASTER_KEY), ("router", router, router_key)]
        for i in range(n + 4):  # the first 4 pairs warm up connections and code paths
            for path, url, key in pair if i % 2 else pair[::-1]:  # alternate which goes first
                first, whole = await first_chunk_ms(client, url, key, f"my card has not arrived, case {i}")
                if i >= 4:
                    ttfc[path].append(first)
                    total[path].append(whole)
    return {f"{path}_first_chunk": summary(ttfc[path]) for path in ttfc} | {
        f"{path}_whole_answer": summary(total[path]) for path in total}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    if not LITELLM.exists():
        sys.exit(f"{LITELLM} is missing: run `make upstream`")
    common = CommonSettings()
    namespace = f"benchstream{uuid.uuid4().hex[:8]}."
    workdir = Path(tempfile.mkdtemp(prefix="graduate-bench-stream-"))
    key = create_key(workdir / "keys.json", "bench")
    await ensure_topics(common.kafka, namespace)
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        upstream_env = {"GRADUATE_TEST_PAUSE_S": str(PAUSE_S), "LITELLM_TELEMETRY": "False",
                        "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        procs.append(start([str(LITELLM), "--config", "litellm_config.yaml", "--host", "127.0.0.1", "--port",
                            str(port), "--num_workers", "1"], upstream_env,
                           f"http://127.0.0.1:{port}/health/liveliness", workdir / "litellm.log",
                           cwd=ROOT / "tests" / "upstream"))
        direct = f"http://127.0.0.1:{port}/v1"
        rport = free_port()
        env = {"GRADUATE_TOPIC_NAMESPACE": namespace, "GRADUATE_VAR_DIR": str(workdir / "router"),
               "GRADUATE_KAFKA_BOOTSTRAP": common.kafka.bootstrap,
               "GRADUATE_ROUTER_API_KEYS_FILE": str(workdir / "keys.json"),
               "GRADUATE_FRONTIER_BASE_URL": direct, "GRADUATE_FRONTIER_API_KEY": MASTER_KEY,
               "GRADUATE_ROUTER_SMALL_SAMPLE_RATE": "0", "GRADUATE_ROUTER_METRICS_PORT": str(free_port())}
        procs.append(start([GRADUATE, "serve", "router", "--port", str(rport), "--log-level", "warning"], env,
                           f"http://127.0.0.1:{rport}/readyz", workdir / "router.log"))
        results = await measure(direct, f"http://127.0.0.1:{rport}/v1", key, args.n)
    finally:
        for proc in reversed(procs):
            stop(proc)
        await delete_topics(common.kafka, [topic_name(s, namespace) for s in CATALOG])
        shutil.rmtree(workdir, ignore_errors=True)
    router_p50, direct_p50 = results["router_first_chunk"]["p50_ms"], results["direct_first_chunk"]["p50_ms"]
    gap = round(router_p50 - direct_p50, 3)
    report = {
        "benchmark": "streamed time to first chunk: through the router vs straight to the upstream",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end)",
        "notes": (f"Upstream = the LiteLLM proxy (PyPI) with a mocked stream: first chunk at once, the rest "
                  f"{PAUSE_S} s later (not a real LLM). Router = `graduate serve router`, capture on, frontier mode. "
                  f"{args.n} requests per path, alternating, one at a time, after 4 warm-up pairs. Shared 2-core "
                  "machine."),
        "goal": f"router first-chunk p50 within {GOAL_MS:g} ms of direct",
        "results": results,
        "headline": [{"name": "first chunk p50, router - direct (ms)", "value": gap, "goal": f"<= {GOAL_MS:g}"},
                     {"name": "first chunk p50 router / direct (ms)", "value": f"{router_p50} / {direct_p50}"}],
    }
    out = ROOT / "bench" / "results" / "stream.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["headline"]))


if __name__ == "__main__":
    asyncio.run(main())
