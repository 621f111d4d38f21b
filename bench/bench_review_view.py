"""The review page's state, in-process (no Kafka): memory and queue time as calls repeat inputs.

The page used to fold every captured call into its view (a CuratedCall per holdout call); it now
reads the curator's dataset records (one per distinct input and captured partition, holdout only).
Side by side in one run, for a fixed number of distinct inputs asked about `repeats` times each
(12 captured partitions, calls spread over them by call id as the router's capture does): the
previous view (main's services/review/view.py before this change, loaded from git) fed the calls,
and the current view fed what a replay of the compacted dataset topic holds (the last record per
partition and input, built by the curator's own fold). Measures the view's heap (tracemalloc) and
the time of one queue computation. Writes bench/results/review_view.json.

    .venv/bin/python bench/bench_review_view.py [--inputs 20000] [--repeats 3 15]
"""
from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common import catalog  # noqa: E402
from services.common.contracts import CapturedCall  # noqa: E402
from services.curator.dataset import fold_calls, to_record  # noqa: E402
from services.curator.logic import curate_call  # noqa: E402
from services.review.view import ReviewView  # noqa: E402

PARTITIONS = 12
FRACTION = 0.15
TASK = "banking77-intent"
PREVIOUS = "7fa95db"  # main before the page read the dataset topic


def calls(inputs: int, repeats: int) -> list[CapturedCall]:
    with open(ROOT / "data" / "banking77" / "train.csv", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    rng = random.Random(16)
    start = datetime(2026, 11, 20, tzinfo=timezone.utc)
    order = [k for k in range(inputs) for _ in range(repeats)]
    rng.shuffle(order)
    out = []
    for i, k in enumerate(order):
        text, label = rows[k % len(rows)]
        text = text if k < len(rows) else f"{text} (case {k // len(rows)})"
        out.append(CapturedCall(call_id=f"b{i:08d}", task=TASK, ts=start + timedelta(seconds=i), input=text,
                                output_raw=label, output=label, latency_ms=500.0))
    return out


def previous_view_class():
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{PREVIOUS}:services/review/view.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "previous_view.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_view", path)
    module = sys.modules["previous_view"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReviewView


def measure(feed) -> dict:
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    view, fed = feed()
    fed_s = time.perf_counter() - t0
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t0 = time.perf_counter()
    queue = view.queue(TASK, limit=50, low_confidence=0.6)
    queue_s = time.perf_counter() - t0
    return {"records_fed": fed, "heap_mib": round(heap / 2**20, 2), "feed_s": round(fed_s, 3),
            "queue_ms": round(queue_s * 1000, 1), "queue": [i.call_id for i in queue][:5],
            "holdout_examples": len(view.dataset(TASK).examples)}


def run(inputs: int, repeats: int, previous_cls) -> dict:
    captured = calls(inputs, repeats)

    def previous():
        view = previous_cls(FRACTION)
        for c in captured:
            view.apply(catalog.CALLS_CAPTURED, c)
        return view, len(captured)

    shard_of = {c.call_id: zlib.crc32(c.call_id.encode()) % PARTITIONS for c in captured}
    entries = fold_calls((shard_of[c.call_id], i, curate_call(c, FRACTION)) for i, c in enumerate(captured))
    records = [(shard, to_record(e)) for (shard, _), e in entries.items()]

    def current():
        view = ReviewView(FRACTION)
        for shard, r in records:
            view.apply(catalog.DATASET, r, key=f"{r.task}/{r.normalised_hash}", partition=shard)
        return view, len(records)

    before, after = measure(previous), measure(current)
    return {"inputs": inputs, "repeats": repeats, "calls": len(captured), "previous": before, "current": after,
            "same_holdout_examples": before["holdout_examples"] == after["holdout_examples"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20000)
    parser.add_argument("--repeats", type=int, nargs="+", default=[3, 15])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "review_view.json")
    args = parser.parse_args()
    previous_cls = previous_view_class()
    runs = [run(args.inputs, r, previous_cls) for r in args.repeats]
    result = {"bench": "review_view", "python": platform.python_version(), "machine": platform.machine(),
              "holdout_fraction": FRACTION, "partitions": PARTITIONS, "previous_commit": PREVIOUS, "runs": runs,
              "note": "in-process, no Kafka; heap by tracemalloc of the view alone; the machine was shared"}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
