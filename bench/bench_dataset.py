"""The curator's dataset writing, in-process (no Kafka): cost per call and memory as inputs grow.

Folds `n` captured calls (bench_processors' generator: each input asked about three times, so
distinct inputs grow with n) over 12 partitions exactly as the curator's step does: curate_call,
then `write_dataset` into per-shard SQLite files (services/curator/shards.py), records built for
the sends, Avro-encoded. Measures, side by side in one run: µs per call of curate_call alone and of curate_call
+ write_dataset; the process's RSS growth (each run in a fresh process) and the files' size. Writes
bench/results/dataset.json.

    .venv/bin/python bench/bench_dataset.py [--n 100000 1000000]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_processors import captured_calls  # noqa: E402
from services.common.codec import Codec  # noqa: E402
from services.curator.logic import curate_call  # noqa: E402
from services.curator.shards import ShardStore, write_dataset  # noqa: E402

PARTITIONS = 12
BATCH = 200  # calls per partition per step (a 2000-record getmany over 12 partitions is ~170 each)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CODEC = Codec()


def send(emits: list) -> int:
    """(write_dataset encodes the records itself, as the worker sends them)"""
    assert all(isinstance(e.value, bytes) for e in emits)
    return len(emits)


def run(n: int, write: bool) -> dict:
    gc.collect()
    folder = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    store = ShardStore(folder)
    for p in range(PARTITIONS):
        store.reset(p)
    rss0 = rss_mib()
    pending: list[list] = [[] for _ in range(PARTITIONS)]
    offsets = [0] * PARTITIONS
    records = 0
    cpu0 = time.process_time()
    for call in captured_calls(n, prefix="d"):
        p = zlib.crc32(call.call_id.encode()) % PARTITIONS
        pending[p].append((curate_call(call), offsets[p]))
        offsets[p] += 1
        if len(pending[p]) >= BATCH:
            if write:
                records += send(write_dataset(store, CODEC, set(), p, pending[p]))
            pending[p] = []
    for p, calls in enumerate(pending):
        if write and calls:
            records += send(write_dataset(store, CODEC, set(), p, calls))
    cpu = time.process_time() - cpu0
    gc.collect()
    out = {"n": n, "write_dataset": write, "cpu_s": round(cpu, 2), "us_per_call": round(cpu / n * 1e6, 2),
           "rss_growth_mib": round(rss_mib() - rss0, 1)}
    if write:
        out.update(entries=sum(store.count(p) for p in range(PARTITIONS)), records_sent=records,
                   files_mib=round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 1))
    for p in range(PARTITIONS):
        store.close(p)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dataset.json")
    parser.add_argument("--one", nargs=2, metavar=("N", "WRITE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one measurement in a fresh process, so RSS growth is this run's own
        print(json.dumps(run(int(args.one[0]), args.one[1] == "1")))
        return
    results = []
    for n in args.n:
        for write in (False, True):
            done = subprocess.run([sys.executable, __file__, "--one", str(n), str(int(write))], capture_output=True,
                                  text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    args.out.write_text(json.dumps({
        "benchmark": "curator dataset writing in-process: curate_call alone vs + write_dataset (SQLite shards)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "partitions": PARTITIONS, "batch_per_partition": BATCH, "machine": platform.platform(),
        "cpus": __import__("os").cpu_count(), "headline": headline(results), "results": results}, indent=2) + "\n")


def headline(results: list[dict]) -> list[dict]:
    """Per n: µs a call the dataset writing adds; and RSS growth at the largest n over the smallest."""
    by = {(r["n"], r["write_dataset"]): r for r in results}
    ns = sorted({r["n"] for r in results})
    out = [{"name": f"µs per call added by the dataset writing, {n:,} calls",
            "value": round(by[(n, True)]["us_per_call"] - by[(n, False)]["us_per_call"], 1)} for n in ns]
    if len(ns) > 1:
        out.append({"name": f"curator RSS growth with the dataset shards, {ns[-1]:,} / {ns[0]:,} calls",
                    "value": round(by[(ns[-1], True)]["rss_growth_mib"] / by[(ns[0], True)]["rss_growth_mib"], 3),
                    "goal": "<= 1.2"})
    return out


if __name__ == "__main__":
    main()
