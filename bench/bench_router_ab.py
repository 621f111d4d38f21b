"""The router's small path before and after a change, side by side in one run: two routers, one
running the code of an earlier commit (`--base`), one this working tree, against the same Triton
model, with direct Triton calls interleaved.

    .venv/bin/python bench/bench_router_ab.py [--base db539f8] [--n 600] [--out bench/results/router_ab.json]

Needs Kafka and Triton (`make up`) and the bench model (bench/router_model.py, int8). The base is
`git archive`d to a temporary folder and put first on that router's PYTHONPATH (same venv, same
dependencies). One request at a time, interleaved blocks; per router: latency percentiles, p50 over
direct Triton, and the router process's CPU per request (utime + stime from /proc, not a sampler).
Writes bench/results/router_ab.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_router as B  # noqa: E402
from services.common.catalog import CATALOG, topic_name  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics  # noqa: E402
from services.common.settings import CommonSettings  # noqa: E402
from services.router.keys import create_key  # noqa: E402
from tests.support_triton import load_model, unload_and_remove  # noqa: E402

BASE = "db539f8"  # main before the small-path work of issue 20 (raw Triton stub, plain-ASGI hot endpoints)
RESULTS = ROOT / "bench" / "results" / "router_ab.json"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def router(workdir: Path, name: str, namespace: str, sim_url: str, common: CommonSettings,
           pythonpath: str | None) -> tuple[B.Process, str]:
    port = B.free_port()
    env = {"GRADUATE_TOPIC_NAMESPACE": namespace, "GRADUATE_VAR_DIR": str(workdir / name),
           "GRADUATE_KAFKA_BOOTSTRAP": common.kafka.bootstrap, "GRADUATE_TRITON_GRPC_URL": common.triton_grpc_url,
           "GRADUATE_ROUTER_API_KEYS_FILE": str(workdir / "keys.json"), "GRADUATE_FRONTIER_BASE_URL": sim_url,
           "GRADUATE_ROUTER_CAPTURE_NAME": name, "GRADUATE_ROUTER_SMALL_SAMPLE_RATE": "0",
           "GRADUATE_ROUTER_METRICS_PORT": str(B.free_port()), **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    p = B.Process(["serve", "router", "--port", str(port), "--log-level", "warning"], env,
                  f"http://127.0.0.1:{port}/readyz", workdir / f"{name}.log")
    return p.wait(), f"http://127.0.0.1:{port}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=BASE, help="the commit whose router is compared with this tree's")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    common = CommonSettings()
    staged = B.router_model.cached_models(common.var_dir, common.model_repository, common.triton_http_url)
    namespace, model = f"benchab{uuid.uuid4().hex[:8]}.", f"bench-ab-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="graduate-bench-ab-"))
    base_tree = workdir / "base"
    base_tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive, check=True)
    key = create_key(workdir / "keys.json", "bench")
    await ensure_topics(common.kafka, namespace)
    procs: list[B.Process] = []
    closing: list[B.SmallModelClient] = []
    try:
        B.router_model.install(staged["int8"], common.model_repository, model)
        load_model(common.triton_http_url, model)
        sim, sim_url = B.simulator(workdir, "sim", B.SIM_LATENCY)  # only for fallbacks (none expected)
        procs.append(sim)
        await B.decide(common, namespace, model, "", key)
        routers: dict[str, tuple[int, str]] = {}
        for name, path in ((f"base_{args.base}", str(base_tree)), ("this_tree", None)):
            p, url = router(workdir, name, namespace, sim_url, common, path)
            procs.append(p)
            await B.decide(common, namespace, model, url, key)
            await B.load_lean(url, key, B.banking77_texts(B.WARMUP), expect="small")
            routers[name] = (p.proc.pid, url)
        direct = B.SmallModelClient(common.triton_grpc_url, timeout_s=5)
        closing.append(direct)
        await B.direct_triton(direct, model, B.banking77_texts(B.WARMUP))
        texts = B.banking77_texts(args.n, offset=B.WARMUP)
        latency: dict[str, list[float]] = {k: [] for k in [*routers, "direct_triton"]}
        cpu = {k: 0.0 for k in routers}
        errors = {k: 0 for k in routers}
        per = max(1, args.n // args.blocks)
        for b in range(args.blocks):
            chunk = texts[b * per:(b + 1) * per]
            for name, (pid, url) in routers.items():
                before = cpu_s(pid)
                got, errs = await B.load_lean(url, key, chunk, expect="small")
                cpu[name] += cpu_s(pid) - before
                latency[name] += got
                errors[name] += errs
            latency["direct_triton"] += await B.direct_triton(direct, model, chunk)
    finally:
        for p in procs:
            p.stop()
        for c in closing:
            await c.close()
        unload_and_remove(common.triton_http_url, common.model_repository, model)
        await delete_topics(common.kafka, [topic_name(s, namespace) for s in CATALOG])
        shutil.rmtree(workdir, ignore_errors=True)
    direct = B.percentiles(latency["direct_triton"])
    results = {"direct_triton": direct}
    ratios = {}
    for name in routers:
        results[name] = {**B.percentiles(latency[name], errors[name]),
                         "router_cpu_ms_per_request": round(cpu[name] * 1000 / max(1, len(latency[name])), 3)}
        ratios[f"{name}_over_direct_triton_p50_ratio"] = round(results[name]["p50_ms"] / direct["p50_ms"], 3)
    base, ours = results[f"base_{args.base}"], results["this_tree"]
    ratios["this_tree_over_base_p50_ratio"] = round(ours["p50_ms"] / base["p50_ms"], 3)
    ratios["this_tree_over_base_router_cpu_ratio"] = round(
        ours["router_cpu_ms_per_request"] / base["router_cpu_ms_per_request"], 3)
    report = {
        "benchmark": f"router small path (int8), commit {args.base} vs this tree, side by side",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": f"{os.uname().nodename} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end)",
        "notes": f"{args.n} Banking77 test texts per router, one at a time, {args.blocks} interleaved blocks with "
                 "direct Triton gRPC calls (this tree's client, one warm channel); the HTTP calls with aiohttp; router CPU from /proc (10 ms ticks). Shared 2-core "
                 "machine.",
        "results": results,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
