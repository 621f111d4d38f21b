"""The curator's batch path in-process, stage by stage (no broker): where its CPU goes per call.

Feeds real encoded CapturedCalls (bench_processors' feed: Banking77 inputs, each asked about three
times) as aiokafka ConsumerRecords through the curator worker's own code (services/curator/app.py
imported as the worker imports it; its shard files in a temporary folder; a producer whose
`send_batch` answers at once, so `send_many` builds real aiokafka record batches but nothing goes
on the wire). The records of the 12 partitions come in batches as aiokafka's `getmany(2000)` hands
them out during a replay: fetches of up to 1 MiB per partition, drained 2,000 records at a time.

Each mode runs in a fresh process (cold caches, the worker's GC settings) and reports CPU µs per
call (process time):
- `raw`: `Codec.decode` of every record into the contract (validated): bench_processors' raw
  read+decode without the read (aiokafka's read of the bytes is ~1.2 µs a record there);
- `whole`: per partition batch, what `BatchProcessor.handle` does: `split_decoded`, the app's
  `curate` (admission, curation, tally, dataset writing), `send_many`;
- `stages`: the same steps called one by one, each timed: decode, admission + curation
  (`Admission.curate`: call_id, task, re-parse, redact, normalise, hash, split), tally, the dataset
  writing's grouping, SQLite select, entries read back, fold, encode + Emit, SQLite insert, then
  `send_many`'s batching.
Writes bench/results/curator_stages.json.

    .venv/bin/python bench/bench_curator_stages.py [--n 100000] [--rounds 3] [--profile] [--label L]
        [--baseline an-earlier-report.json]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PARTITIONS = 12
GETMANY = 2000  # GRADUATE_CURATOR_BATCH_SIZE
FETCH_BYTES = 1 << 20  # aiokafka's max_partition_fetch_bytes
STAGES = ("decode", "admission + curation", "tally", "dataset: group by key", "dataset: SQLite select",
          "dataset: read entries", "dataset: fold", "dataset: encode + Emit", "dataset: SQLite insert",
          "send_many batching")


def feed(n: int) -> list[dict]:
    """`n` captured calls encoded, keyed by call_id and partitioned as Kafka's default partitioner
    does, in the batches a replaying `getmany(2000)` returns: {partition: [ConsumerRecord]} each."""
    from aiokafka.partitioner import murmur2
    from aiokafka.structs import ConsumerRecord
    from bench_processors import captured_calls
    from services.common.catalog import CALLS_CAPTURED
    from services.common.codec import Codec

    codec, topic = Codec(), f"benchstages.{CALLS_CAPTURED.name}"
    parts: list[list] = [[] for _ in range(PARTITIONS)]
    for call in captured_calls(n, prefix="st"):
        key, value = call.call_id.encode(), codec.encode(call)
        p = (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        parts[p].append(ConsumerRecord(topic, p, len(parts[p]), int(call.ts.timestamp() * 1000), 0, key, value,
                                       None, len(key), len(value), ()))
    fetches = []  # round robin over the partitions, up to FETCH_BYTES each
    cursor = [0] * PARTITIONS
    while any(cursor[p] < len(parts[p]) for p in range(PARTITIONS)):
        for p in range(PARTITIONS):
            start = end = cursor[p]
            size = 0
            while end < len(parts[p]) and size < FETCH_BYTES:
                size += len(parts[p][end].value) + 70
                end += 1
            if end > start:
                fetches.append(parts[p][start:end])
            cursor[p] = end
    batches, batch, room = [], {}, GETMANY
    for fetch in fetches:
        while fetch:
            take, fetch = fetch[:room], fetch[room:]
            batch.setdefault(take[0].partition, []).extend(take)
            room -= len(take)
            if room == 0:
                batches.append(batch)
                batch, room = {}, GETMANY
    if batch:
        batches.append(batch)
    return batches


class InstantProducer:
    """aiokafka's real record batches (an unstarted AIOKafkaProducer's `create_batch`), sent nowhere."""

    def __init__(self, batch_bytes: int) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=batch_bytes)
        self.batches = self.records = 0

    def create_batch(self):
        return self.producer.create_batch()

    async def send_batch(self, builder, topic, *, partition):
        self.batches += 1
        self.records += builder.record_count()
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send(self, *args, **kwargs):
        return await self.send_batch(self.create_batch(), None, partition=None)


def run(mode: str, n: int, profile: bool = False) -> dict:
    """One mode in this (fresh) process; CPU µs per call, and per stage for `stages`."""
    os.environ.setdefault("GRADUATE_VAR_DIR", tempfile.mkdtemp(prefix="bench-stages-var-"))
    batches = feed(n)
    from services.common.batch import MAX_BATCH_BYTES, split_decoded
    from services.common.contracts import CapturedCall
    from services.common.streams import Emit, Meta
    import services.curator.app as worker
    from services.curator.admission import Refused
    from services.curator.logic import tally_calls
    from services.curator.shards import ShardStore, dataset_emits, fold_entries, group_by_key, read_entries

    folder = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    worker.shards = store = ShardStore(folder)
    for p in range(PARTITIONS):
        store.reset(p)
    proc = worker.captured
    loop = asyncio.new_event_loop()

    async def instant() -> InstantProducer:  # aiokafka makes its clients inside a running loop
        return InstantProducer(MAX_BATCH_BYTES)
    proc.producer = loop.run_until_complete(instant())
    codec, forgotten, fraction = worker.codec, worker.forgotten.keys, worker.curator.holdout_fraction
    tallies: dict[int, dict] = defaultdict(dict)
    spent: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    clock = time.process_time

    def source(records):
        last = records[-1]
        return Meta(last.topic, last.partition, last.offset, last.key, last.timestamp / 1000.0)

    def whole(batch: dict) -> None:  # BatchProcessor.handle's steps, the app's own step function
        outbox = []
        for tp, records in batch.items():
            items, failures = split_decoded(codec, CapturedCall, records)
            emits = worker.curate(tallies[tp], items)
            meta = source(records)
            outbox += [(e, meta) for e in emits]
            assert not failures
        loop.run_until_complete(proc.send_many(outbox))

    def staged(batch: dict) -> None:  # the same, each step timed
        outbox = []
        for p, records in batch.items():
            t0 = clock()
            items, failures = split_decoded(codec, CapturedCall, records)
            t1 = clock()
            curated = []
            for item in items:
                try:
                    curated.append((worker.admission.curate(item.value, fraction), item.meta.offset))
                except Refused as exc:
                    outbox.append((worker.refusal(worker.app, item, exc), None))
            t2 = clock()
            tally_calls(tallies[p], [c for c, _ in curated])
            t3 = clock()
            by_key = group_by_key(curated, forgotten)
            t4 = clock()
            values = store.get_many(p, list(by_key))
            t5 = clock()
            entries = read_entries(codec, values)
            t6 = clock()
            changed = fold_entries(entries, by_key, p)
            t7 = clock()
            emits: list[Emit] = dataset_emits(codec, changed, p)
            t8 = clock()
            store.put_many(p, [(e.key, e.value) for e in emits])
            t9 = clock()
            meta = source(records)
            outbox += [(e, meta) for e in emits]
            for name, took in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7,
                                           t9 - t8)):
                spent[name] += took
            assert not failures
        t0 = clock()
        loop.run_until_complete(proc.send_many(outbox))
        spent["send_many batching"] += clock() - t0

    def raw(batch: dict) -> None:
        for records in batch.values():
            for r in records:
                codec.decode(r.value, CapturedCall)

    step = {"whole": whole, "stages": staged, "raw": raw}[mode]
    gc.collect()
    gc.freeze()  # as BatchProcessor.run does
    gc.set_threshold(50_000, 20, 100)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = clock()
    for batch in batches:
        step(batch)
    cpu = clock() - started
    if profiler is not None:
        profiler.disable()
        import pstats

        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    out = {"mode": mode, "n": n, "batches": len(batches), "us_per_call": round(cpu / n * 1e6, 2)}
    if mode == "stages":
        out["stages_us_per_call"] = {k: round(v / n * 1e6, 2) for k, v in spent.items()}
        out["other_us_per_call"] = round((cpu - sum(spent.values())) / n * 1e6, 2)
    if mode != "raw":
        out["dataset_records"] = proc.producer.records
        out["entries"] = sum(store.count(p) for p in range(PARTITIONS))
    store.keep_only(())  # closes every shard file
    shutil.rmtree(folder)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per mode (the median is reported)")
    parser.add_argument("--modes", default="raw,whole,stages")
    parser.add_argument("--profile", action="store_true", help="cProfile the `whole` mode (to stderr), write nothing")
    parser.add_argument("--label", default="", help="what the code measured is (kept in the JSON)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "curator_stages.json")
    parser.add_argument("--baseline", type=Path, help="an earlier report of this bench (another commit's code), "
                                                      "kept in the new one under `baseline`")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        print(json.dumps(run("whole", args.n, profile=True)))
        return
    if args.one:  # one measurement in a fresh process
        print(json.dumps(run(args.one, args.n)))
        return
    runs: dict[str, list[dict]] = defaultdict(list)
    for _ in range(args.rounds):
        for mode in args.modes.split(","):
            done = subprocess.run([sys.executable, __file__, "--one", mode, "--n", str(args.n)], capture_output=True,
                                  text=True)
            if done.returncode:
                sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[mode][-1]), flush=True)
    median = {mode: statistics.median(r["us_per_call"] for r in rs) for mode, rs in runs.items()}
    report = {
        "benchmark": "the curator's batch path in-process (no broker), CPU µs per captured call, stage by stage",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "label": args.label,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared_machine": True,
                 "load": os.getloadavg()[0]},
        "n": args.n, "partitions": PARTITIONS, "getmany_records": GETMANY, "rounds": args.rounds,
        "us_per_call_median": median,
        "stages_us_per_call_median": {s: statistics.median(r["stages_us_per_call"][s] for r in runs["stages"])
                                      for s in STAGES} if runs.get("stages") else {},
        "headline": [{"name": f"curator in-process CPU µs per call ({mode}, median of {args.rounds})", "value": v}
                     for mode, v in median.items()],
        "runs": runs,
        "notes": "process time of this process per call, each mode in a fresh process with the worker's GC "
                 "settings (gc.freeze, thresholds 50000/20/100); raw = Codec.decode with validation, no Kafka read; "
                 "whole = split_decoded + the app's curate + send_many per getmany batch; stages = the same steps "
                 "timed one by one (their sum is whole plus the timers).",
    }
    if args.baseline:
        base = json.loads(args.baseline.read_text())
        report["baseline"] = {k: base.get(k) for k in ("label", "when", "host", "n", "us_per_call_median",
                                                        "stages_us_per_call_median")}
        report["headline"] += [{"name": f"baseline ({base.get('label')}): in-process CPU µs per call ({mode})",
                                "value": v} for mode, v in base.get("us_per_call_median", {}).items()
                               if mode != "stages"]
    if "raw" in median and "whole" in median:
        report["headline"].append({"name": "raw decode / whole (in-process ratio, no Kafka read on either side)",
                                   "value": round(median["raw"] / median["whole"], 3)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("us_per_call_median", "stages_us_per_call_median")}, indent=2))


if __name__ == "__main__":
    main()
