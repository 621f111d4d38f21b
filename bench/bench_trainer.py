"""Trainer: per-phase wall time of a Banking77 fine-tune, and the served model's inference speed.

    .venv/bin/python bench/bench_trainer.py [--max-examples N] [--epochs N] [--device cpu|cuda]
                                            [--threads N] [--requests 300] [--batches 30]

Needs Triton (and nothing else: no ModelRegistered is published). One run:
1. builds a Banking77 snapshot (simulated frontier labels, 30 % of the holdout reviewed) in a
   temporary var folder and runs the whole trainer pipeline on it (fine-tune, ONNX export, int8,
   calibration, Triton load + verify, model card): wall time per phase, holdout accuracy,
   threshold and coverage;
2. serves fp32 and int8 side by side (two versions of one uuid-named Triton model) and measures,
   on the same holdout texts in interleaved blocks: batch-1 latency p50/p95 (one text per request,
   sequential, tokenization included) and batch-32 throughput, for Triton gRPC and for plain
   onnxruntime in-process (the served model.py's own TextClassifier);
3. unloads and deletes the model, writes bench/results/trainer.json with the size that was run.
Default size: the full Banking77 train set, 3 epochs (goal: <= 10 min on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from rich.console import Console  # noqa: E402

from trainer import triton_repo  # noqa: E402
from trainer.dataset_from_banking77 import build_banking77_snapshot  # noqa: E402
from trainer.settings import TrainerSettings  # noqa: E402

TASK = "banking77-intent"
RESULTS = ROOT / "bench" / "results" / "trainer.json"
WARMUP = 10
BLOCKS = 3  # the engines take turns, BLOCKS times each, so drifting machine load hits all alike


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


class TritonEngine:
    def __init__(self, url: str, name: str, version: int) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.name, self.version = name, str(version)

    def __call__(self, texts: list[str]) -> None:
        inp = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        result = self.client.infer(self.name, [inp], model_version=self.version,
                                   outputs=[grpcclient.InferRequestedOutput(o) for o in ("LABEL", "CONFIDENCE")])
        result.as_numpy("LABEL")

    def close(self) -> None:
        self.client.close()


class InProcessEngine:
    def __init__(self, version_dir: Path, threads: int) -> None:
        from trainer.triton_model import TextClassifier

        self.classifier = TextClassifier(version_dir, threads=threads)

    def __call__(self, texts: list[str]) -> None:
        self.classifier.classify(texts)

    def close(self) -> None:
        pass


def measure(engines: dict[str, object], texts: list[str], requests: int, batches: int) -> dict[str, dict]:
    """Batch-1 latency and batch-32 throughput per engine, interleaved in blocks on the same texts."""
    lat: dict[str, list[float]] = {n: [] for n in engines}
    thr: dict[str, list[tuple[int, float]]] = {n: [] for n in engines}
    for engine in engines.values():
        for i in range(WARMUP):
            engine([texts[i]])
        engine(texts[:32])
    per_block, batches_per_block = max(1, requests // BLOCKS), max(1, batches // BLOCKS)
    for block in range(BLOCKS):
        for name, engine in engines.items():
            for i in range(per_block):
                text = texts[(block * per_block + i) % len(texts)]
                started = time.perf_counter()
                engine([text])
                lat[name].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            for b in range(batches_per_block):
                start = ((block * batches_per_block + b) * 32) % max(1, len(texts) - 32)
                engine(texts[start:start + 32])
            thr[name].append((32 * batches_per_block, time.perf_counter() - started))
    return {name: {"batch1_p50_ms": round(percentile(lat[name], 50), 3),
                   "batch1_p95_ms": round(percentile(lat[name], 95), 3),
                   "batch1_mean_ms": round(statistics.fmean(lat[name]), 3),
                   "batch32_texts_per_s": round(sum(n for n, _ in thr[name]) / sum(s for _, s in thr[name]), 1),
                   "requests": len(lat[name])}
            for name in engines}


def install_variant(settings: TrainerSettings, version_dir: Path, onnx_file: Path, name: str) -> tuple[int, Path]:
    """The same version folder with another ONNX graph, as the next version of `name`."""
    stage = Path(tempfile.mkdtemp(prefix="variant-", dir=settings.var_dir))
    for file in triton_repo.VERSION_FILES:
        shutil.copyfile(version_dir / file, stage / file)
    shutil.copyfile(onnx_file, stage / "model.onnx")
    return triton_repo.install_version(stage, settings.model_repository, name, gpu=settings.device == "cuda")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=None, help="cap on train examples (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the fine-tune")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: GRADUATE_TRAIN_LEARNING_RATE")
    parser.add_argument("--requests", type=int, default=300, help="batch-1 requests per engine")
    parser.add_argument("--batches", type=int, default=30, help="batch-32 requests per engine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from trainer.pipeline import train_task

    common = TrainerSettings()
    var_dir = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    name = f"bench-trainer-{uuid.uuid4().hex[:8]}"
    settings = TrainerSettings(var_dir=var_dir, triton_model=name, epochs=args.epochs, device=args.device,
                               max_examples=args.max_examples, threads=args.threads, publish=False,
                               learning_rate=args.learning_rate or TrainerSettings().learning_rate,
                               quantize=True, model_repository=common.model_repository,
                               triton_http_url=common.triton_http_url, triton_grpc_url=common.triton_grpc_url)
    load_before = os.getloadavg()
    engines: dict[str, object] = {}
    try:
        started = time.perf_counter()
        build_banking77_snapshot(settings.datasets_dir, TASK, ROOT / "data" / "banking77")
        snapshot_s = time.perf_counter() - started
        run = train_task(settings, TASK, "latest", Console(stderr=True))
        report = run.report
        pipeline_s = time.perf_counter() - started - snapshot_s

        onnx_dir = run.run_dir / "onnx"
        served = report["served_onnx"]
        other = "fp32" if served == "int8" else "int8"
        other_file = onnx_dir / ("model.onnx" if other == "fp32" else "model.int8.onnx")
        other_version, other_dir = install_variant(settings, run.version_dir, other_file, name)
        triton_repo.load_model(settings.triton_http_url, name, other_version, settings.triton_timeout_s)
        versions = {served: (run.version, run.version_dir), other: (other_version, other_dir)}

        texts = _holdout_texts(settings)
        threads = 0  # onnxruntime's default, as model.py inside Triton uses
        for variant in ("fp32", "int8"):
            version, folder = versions[variant]
            engines[f"triton_grpc_{variant}"] = TritonEngine(settings.triton_grpc_url, name, version)
            engines[f"onnxruntime_inprocess_{variant}"] = InProcessEngine(folder, threads)
        inference = measure(engines, texts, args.requests, args.batches)
    finally:
        for engine in engines.values():
            engine.close()
        try:
            triton_repo.unload_model(settings.triton_http_url, name)
        except Exception as exc:  # noqa: BLE001 - report and go on cleaning
            print(f"unload failed: {exc}", file=sys.stderr)
        time.sleep(2)
        shutil.rmtree(settings.model_repository / name, ignore_errors=True)

    h, t = report["holdout"], report["threshold"]
    timings = {"snapshot_build_s": round(snapshot_s, 1)} | {k: round(v, 1) for k, v in report["timings"].items()}
    timings["pipeline_total_s"] = round(pipeline_s, 1)
    fine_tune_load = sum(report["timings"].get(k, 0.0) for k in
                         ("finetune_s", "export_s", "quantize_s", "calibrate_evaluate_s", "triton_s"))
    ratios = {
        "triton_fp32_over_inprocess_fp32_p50_ratio": inference["triton_grpc_fp32"]["batch1_p50_ms"]
        / inference["onnxruntime_inprocess_fp32"]["batch1_p50_ms"],
        "triton_int8_over_triton_fp32_p50_ratio": inference["triton_grpc_int8"]["batch1_p50_ms"]
        / inference["triton_grpc_fp32"]["batch1_p50_ms"],
        "triton_int8_over_fp32_batch32_throughput_ratio": inference["triton_grpc_int8"]["batch32_texts_per_s"]
        / inference["triton_grpc_fp32"]["batch32_texts_per_s"],
    }
    result = {
        "benchmark": "trainer: fine-tune + export + load wall time; Triton vs in-process onnxruntime, fp32 vs int8",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "goal": "full Banking77 (10,003 train) fine-tune + export + load <= 10 min on 2 CPU cores",
        "size_run": {"train_examples": report["train_size"], "validation_examples": report["validation_size"],
                     "holdout_examples": h["n"], "epochs": args.epochs, "max_examples": args.max_examples,
                     "learning_rate": settings.learning_rate,
                     "device": report["device"], "threads": args.threads or "torch default",
                     "full_size": args.max_examples is None,
                     "load_average_before": [round(x, 2) for x in load_before],
                     "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "phases_s": timings,
        "holdout": {"small_accuracy": h["small_accuracy"], "frontier_accuracy": h["frontier_accuracy"],
                    "small_accuracy_reviewed_only": h["reviewed_only"]["small_accuracy"],
                    "frontier_accuracy_reviewed_only": h["reviewed_only"]["frontier_accuracy"],
                    "gold_reviewed": h["gold_reviewed"], "gold_frontier": h["gold_frontier"],
                    "agreement": h["agreement"], "macro_f1": h["macro_f1"], "temperature": report["temperature"],
                    "ece_before": report["ece_before"], "ece_after": report["ece_after"],
                    "threshold": t["threshold"], "coverage": t["coverage"], "kept_accuracy": t["kept_accuracy"],
                    "frontier_accuracy_on_basis": t["frontier_accuracy"],
                    "served_accuracy": t["served_accuracy"]},
        "quantization": {k: v for k, v in report["quantization"].items() if k != "summary"},
        "inference": inference,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "headline": [
            {"name": "fine-tune + export + load (s)", "value": round(fine_tune_load, 1),
             "goal": "<= 600 at full size on 2 CPU cores"},
            {"name": "holdout accuracy small / frontier (gold)", "value": f"{h['small_accuracy']:.4f} / "
                                                                        f"{h['frontier_accuracy']:.4f}"},
            {"name": "threshold / coverage", "value": f"{t['threshold']} / {t['coverage']:.3f}"},
        ],
        "notes": ("frontier labels are SIMULATED (services.frontier_sim.oracle); gold = reviewed label for the "
                  "reviewed share of the holdout, else the frontier's answer. Shared 2-core machine: absolute "
                  "figures are noisy; ratios are measured side by side in one run."),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(var_dir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


def _holdout_texts(settings: TrainerSettings) -> list[str]:
    from trainer.snapshot import load_snapshot, resolve_snapshot

    return load_snapshot(resolve_snapshot(settings.datasets_dir, TASK)).holdout.input


if __name__ == "__main__":
    sys.exit(main())
