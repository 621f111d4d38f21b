"""Where the router's own Triton call loses time: the small path through routers that differ in one
runtime setting each, against direct Triton, side by side in one run.

    .venv/bin/python bench/bench_router_variants.py [--n 300] [--rounds 6] [--variant fp32]

Needs Kafka and Triton (`make up`) and the bench model (bench/router_model.py, cached). All routers run
at once on one namespace (the task in small mode, threshold 0); each round sends a block of texts one
at a time through every router (aiohttp, as bench_router.py's headline) and straight to Triton (the
router's own client class), in a rotating order. Per router: the caller's p50 and the latency the
router reports from inside the route (`latency_ms`), each over direct Triton's p50.
Writes bench/results/router_variants.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
import bench_router as br  # noqa: E402
import router_model  # noqa: E402

from services.common.catalog import CATALOG, ROUTER_OUTCOMES, topic_name  # noqa: E402
from services.common.codec import Codec  # noqa: E402
from services.common.contracts import RouterOutcome  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics  # noqa: E402
from services.common.settings import CommonSettings  # noqa: E402
from services.common.triton import SmallModelClient  # noqa: E402
from services.router.keys import create_key  # noqa: E402
from tests.support import decode_all, read_topic  # noqa: E402
from tests.support_triton import load_model, unload_and_remove  # noqa: E402

async def lean_calls(url: str, key: str, texts: list[str]) -> list[tuple[float, float, str]]:
    """As bench_router.load_lean (aiohttp, one request at a time): (caller ms, inside-route ms, call_id) per
    answer served small; anything else raises."""
    out = []
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=1),
                                     headers={"Authorization": f"Bearer {key}"}) as session:
        for text in texts:
            start = time.perf_counter()
            async with session.post(f"/v1/tasks/{br.TASK}/predict", json={"input": text}) as r:
                raw = await r.read()
            elapsed = (time.perf_counter() - start) * 1000
            body = json.loads(raw)
            if r.status != 200 or body["served_by"] != "small":
                raise RuntimeError(f"{url}: {r.status} {body}")
            out.append((elapsed, body["latency_ms"], body["call_id"]))
    return out


async def triton_legs(common: CommonSettings, namespace: str, count: int) -> dict[str, float]:
    """call_id -> the router's own Triton round trip (RouterOutcome.small_latency_ms, timed around the
    same SmallModelClient.classify call as the direct baseline)."""
    records = await read_topic(common.kafka, topic_name(ROUTER_OUTCOMES, namespace), min_count=count, timeout=60)
    return {o.call_id: o.small_latency_ms for o in decode_all(Codec(), records, RouterOutcome)
            if o.small_latency_ms is not None}


RESULTS = ROOT / "bench" / "results" / "router_variants.json"
# name -> (capture on, router environment): each differs from "served" in one setting
VARIANTS: dict[str, tuple[bool, dict[str, str]]] = {
    "served": (True, {}),
    "capture_off": (False, {}),
    "asyncio_loop": (True, {"GRADUATE_ROUTER_LOOP": "asyncio"}),
    "switch_interval_5ms": (True, {"GRADUATE_ROUTER_SWITCH_INTERVAL_S": "0.005"}),
    "no_gc_freeze": (True, {"GRADUATE_ROUTER_GC_FREEZE": "false"}),
}


async def run(args: argparse.Namespace) -> dict:
    common = CommonSettings()
    staged = router_model.cached_models(common.var_dir, common.model_repository, common.triton_http_url)
    namespace = f"benchv{uuid.uuid4().hex[:8]}."
    model = f"bench-variants-{uuid.uuid4().hex[:6]}-{args.variant}"
    workdir = Path(tempfile.mkdtemp(prefix="graduate-bench-variants-"))
    key = create_key(workdir / "keys.json", "bench")
    names = [v for v in args.only.split(",") if v] if args.only else list(VARIANTS)
    await ensure_topics(common.kafka, namespace)
    routers: dict[str, tuple[br.Process, str]] = {}
    sim = None
    try:
        router_model.install(staged[args.variant], common.model_repository, model)
        load_model(common.triton_http_url, model)
        await br.decide(common, namespace, model, "", key)
        sim, sim_url = br.simulator(workdir, "sim", br.SIM_LATENCY)
        for name in names:
            capture, env = VARIANTS[name]
            routers[name] = br.router(workdir, f"router-{name}", namespace, sim_url, capture, common,
                                      extra_env=env)
        for name, (_, url) in routers.items():
            await br.decide(common, namespace, model, url, key)
            await br.load_lean(url, key, br.banking77_texts(br.WARMUP), expect="small")
        client = SmallModelClient(common.triton_grpc_url, timeout_s=5)
        await br.direct_triton(client, model, br.banking77_texts(br.WARMUP))
        texts = br.banking77_texts(args.n, offset=br.WARMUP)
        per = max(1, args.n // args.rounds)
        caller: dict[str, list[float]] = {n: [] for n in names}
        inside: dict[str, list[float]] = {n: [] for n in names}
        call_ids: dict[str, list[str]] = {n: [] for n in names}
        direct: list[float] = []
        order = ["direct", *names]
        try:
            for r in range(args.rounds):
                chunk = texts[r * per:(r + 1) * per]
                for name in order[r % len(order):] + order[:r % len(order)]:
                    if name == "direct":
                        direct += await br.direct_triton(client, model, chunk)
                        continue
                    for c, i, call_id in await lean_calls(routers[name][1], key, chunk):
                        caller[name].append(c)
                        inside[name].append(i)
                        call_ids[name].append(call_id)
        finally:
            await client.close()
        captured = [n for n in names if VARIANTS[n][0]]
        legs = await triton_legs(common, namespace, sum(len(call_ids[n]) for n in captured))
    finally:
        for proc, _ in routers.values():
            proc.stop()
        if sim is not None:
            sim.stop()
        unload_and_remove(common.triton_http_url, common.model_repository, model)
        await delete_topics(common.kafka, [topic_name(s, namespace) for s in CATALOG])
        shutil.rmtree(workdir, ignore_errors=True)
    d50 = br.percentiles(direct)["p50_ms"]
    per_router = {}
    for name in names:
        c, i = br.percentiles(caller[name]), br.percentiles(inside[name])
        per_router[name] = {"caller": c, "inside_route": i,
                            "caller_over_direct_p50": round(c["p50_ms"] / d50, 3),
                            "inside_over_direct_p50": round(i["p50_ms"] / d50, 3)}
        own = [legs[c] for c in call_ids[name] if c in legs]
        if own:  # capture on: the outcomes carry the router's own Triton round trip
            t = br.percentiles(own)
            per_router[name]["router_triton_call"] = t
            per_router[name]["router_triton_call_over_direct_p50"] = round(t["p50_ms"] / d50, 3)
    return {"benchmark": "router small path per runtime variant vs direct Triton (one request at a time)",
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end)",
            "config": {"n": args.n, "rounds": args.rounds, "model": args.variant,
                       "variants": {n: {"capture": VARIANTS[n][0], "env": VARIANTS[n][1]} for n in names}},
            "direct_triton": br.percentiles(direct), "routers": per_router}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="texts per path")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--variant", choices=("fp32", "int8"), default="fp32", help="the model")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"direct_p50": report["direct_triton"]["p50_ms"],
                      **{n: (r["caller"]["p50_ms"], r["caller_over_direct_p50"], r["inside_over_direct_p50"],
                             r.get("router_triton_call_over_direct_p50"))
                         for n, r in report["routers"].items()}}))


if __name__ == "__main__":
    main()
