"""Which Triton client costs the router least per small-path request, side by side in one run.

    .venv/bin/python bench/bench_triton_client.py [--n 240]

Needs Triton (`make up`) and the bench model (bench/router_model.py, int8). One text per request,
one request at a time, interleaved blocks, for: graduate's SmallModelClient (the KServe v2 stub
that tritonclient ships, on grpc.aio, raw tensors), tritonclient.grpc.aio, tritonclient.grpc
(sync) in a worker thread, and tritonclient.http.aio. Reports latency percentiles and this
process's CPU per request (what the client costs the router's event loop), and checks that all
four give the same answer. Writes bench/results/triton_client.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import tritonclient.grpc as grpc_sync  # noqa: E402
import tritonclient.grpc.aio as grpc_aio  # noqa: E402
import tritonclient.http.aio as http_aio  # noqa: E402

import router_model  # noqa: E402
from bench_router import banking77_texts, percentiles  # noqa: E402
from services.common.settings import CommonSettings  # noqa: E402
from services.common.triton import OUTPUTS, SmallModelClient  # noqa: E402
from tests.support_triton import load_model, unload_and_remove  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "triton_client.json"


def tensor(module, text: str, **kw):
    inp = module.InferInput("TEXT", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_), **kw)
    return inp


def first(result) -> tuple[str, float]:
    return result.as_numpy("LABEL").reshape(-1)[0].decode(), float(result.as_numpy("CONFIDENCE").reshape(-1)[0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    common = CommonSettings()
    staged = router_model.cached_models(common.var_dir, common.model_repository, common.triton_http_url)
    model = f"bench-client-{uuid.uuid4().hex[:6]}"
    router_model.install(staged["int8"], common.model_repository, model)
    load_model(common.triton_http_url, model)
    ours = SmallModelClient(common.triton_grpc_url, 5)
    aio = grpc_aio.InferenceServerClient(common.triton_grpc_url)
    sync = grpc_sync.InferenceServerClient(common.triton_grpc_url)
    http = http_aio.InferenceServerClient(common.triton_http_url)
    try:
        async def graduate(text: str):
            answer = (await ours.classify(model, "1", [text]))[0][0]
            return answer.label, answer.confidence

        async def tritonclient_aio(text: str):
            return first(await aio.infer(model, [tensor(grpc_aio, text)], model_version="1", client_timeout=5,
                                         outputs=[grpc_aio.InferRequestedOutput(o) for o in OUTPUTS]))

        def sync_call(text: str):
            return first(sync.infer(model, [tensor(grpc_sync, text)], model_version="1", client_timeout=5,
                                    outputs=[grpc_sync.InferRequestedOutput(o) for o in OUTPUTS]))

        async def tritonclient_sync_in_thread(text: str):
            return await asyncio.to_thread(sync_call, text)

        async def tritonclient_http_aio(text: str):
            return first(await http.infer(model, [tensor(http_aio, text, binary_data=True)], model_version="1",
                                          outputs=[http_aio.InferRequestedOutput(o, binary_data=True)
                                                   for o in OUTPUTS]))

        clients = {f.__name__: f for f in (graduate, tritonclient_aio, tritonclient_sync_in_thread,
                                           tritonclient_http_aio)}
        warm = banking77_texts(16)
        for f in clients.values():
            for t in warm:
                await f(t)
        answers = {name: [await f(t) for t in warm] for name, f in clients.items()}
        same = all(label == a[0] and abs(conf - a[1]) < 1e-5
                   for other in answers.values() for a, (label, conf) in zip(answers["graduate"], other))
        texts = banking77_texts(args.n, offset=16)
        per = max(1, args.n // args.blocks)
        latency: dict[str, list[float]] = {k: [] for k in clients}
        cpu: dict[str, float] = {k: 0.0 for k in clients}
        for b in range(args.blocks):
            for name, f in clients.items():
                cpu_start = time.process_time()
                for t in texts[b * per:(b + 1) * per]:
                    start = time.perf_counter()
                    await f(t)
                    latency[name].append((time.perf_counter() - start) * 1000)
                cpu[name] += time.process_time() - cpu_start
    finally:
        await ours.close()
        await aio.close()
        await http.close()
        sync.close()
        unload_and_remove(common.triton_http_url, common.model_repository, model)
    results = {name: {**percentiles(latency[name]), "process_cpu_ms_per_request":
                      round(cpu[name] * 1000 / len(latency[name]), 3)} for name in clients}
    base = results["graduate"]
    report = {
        "benchmark": "Triton client cost per small-path request (int8 bench model, one text, one at a time)",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "same_answers": same,
        "results": results,
        "ratios": {f"{name}_over_graduate_cpu": round(r["process_cpu_ms_per_request"]
                                                      / base["process_cpu_ms_per_request"], 3)
                   for name, r in results.items() if name != "graduate"}
        | {f"{name}_over_graduate_p50": round(r["p50_ms"] / base["p50_ms"], 3)
           for name, r in results.items() if name != "graduate"},
        "notes": "Shared 2-core machine; CPU is this process's (client, event loop, thread), not Triton's.",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
