"""Processor throughput vs a raw aiokafka consumer on the same topic, same broker, same run; and
the memory of the processors' state after 100 k and 1 M calls.

    nice -n 5 .venv/bin/python bench/bench_processors.py [--n 100000] [--memory 100000,1000000]
        [--kill-at 1000000] [--agents shadow,judge,controller] [--agents-n 20000]
        [--kill-only | --agents-only | --recompose]   (one part only, merged into --out)

Produces N Banking77-based captured calls (inputs repeat about three times; distinct inputs grow
with N) into a fresh namespace, then measures:
- raw: an AIOKafkaConsumer reading every partition to the end (bytes only), and the same reading
  plus Avro decoding into the contract (what every processor must do at least), before and after;
- each processor as a real `graduate worker` subprocess: source messages per second from its
  first processed record to its last (start-up excluded), read from its /metrics page, and its
  RSS at the end;
- `faust-noop`: a faust agent (`each_batch`) with a handler that does nothing: the floor of a
  faust agent, which the batch processors replaced;
- memory: the state of each processor (its per-partition fold over 12 partitions, the same
  functions the workers run) after M calls fed directly, without Kafka (1 M calls through the
  broker would take too long on this machine), with tracemalloc; also the size of its state
  records (what a checkpoint writes);
- kill/restore: the curator and the profiler process 1 M calls fed through the broker, are
  SIGKILLed and restarted as themselves: seconds to /readyz and to counts equal to those before
  the kill, and the workers' RSS 3 s after the last call, against a separate run of 100 k calls
  measured the same way (`--rss-at`);
- agents: the shadow (task in shadow mode on a keyword model in Triton, when Triton is up), the
  judge and the controller (faust agents, real handlers) vs raw read+decode of their input topics.
Writes bench/results/processors.json. The machine is shared, so absolute numbers are noisy; the
ratios are measured side by side.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import platform
import random
import signal
import sys
import time
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from services.common.catalog import CALLS_CAPTURED, topic_name  # noqa: E402
from services.common.codec import Codec  # noqa: E402
from services.common.catalog import ROUTER_OUTCOMES, SHADOW_RESULTS  # noqa: E402
from services.common.contracts import CapturedCall, RouterOutcome, ShadowResult  # noqa: E402
from services.common.kafka import delete_topics, ensure_topics  # noqa: E402
from services.common.settings import KafkaSettings  # noqa: E402
from tests.integration.test_workers import metric, start_worker, stop_worker, wait_for  # noqa: E402
from tests.support import produce  # noqa: E402

# source messages a processor's handlers see per captured call
EVENTS_PER_CALL = {"curator": 1, "profiler": 1, "faust-noop": 1,
                   "shadow": 1, "judge": 2, "controller": 2}  # judge: re-key + judge; controller: outcome + capture


def captured_calls(n: int, *, seed: int = 16, prefix: str = "bench") -> Iterator[CapturedCall]:
    """`n` captured calls answered with Banking77's labels; each input is asked about three times
    (distinct inputs grow with n: Banking77's texts with a numbered suffix past the first 10 k),
    1 % of the answers do not parse, over 24 hours."""
    rng = random.Random(seed)
    with open(ROOT / "data" / "banking77" / "train.csv", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    start = datetime(2026, 11, 20, tzinfo=timezone.utc)
    for i in range(n):
        k = rng.randrange(max(1, n // 3))
        text, label = rows[k % len(rows)]
        text = text if k < len(rows) else f"{text} (case {k // len(rows)})"
        ok = rng.random() >= 0.01
        yield CapturedCall(call_id=f"{prefix}{i:07d}", task="banking77-intent", ts=start + timedelta(seconds=86400 * i / n),
                           input=text, output_raw=label if ok else "not sure", output=label if ok else None,
                           parse_ok=ok, latency_ms=rng.lognormvariate(6.4, 0.3), prompt_tokens=420,
                           completion_tokens=6, cost_usd=0.00111, model="frontier-sim")


def shadow_results(n: int, *, prefix: str) -> Iterator[ShadowResult]:
    """The small model's answers to `captured_calls(n)`: one in ten disagrees with the frontier."""
    rng = random.Random(17)
    for c in captured_calls(n, prefix=prefix):
        out = c.output or "not sure"
        yield ShadowResult(call_id=c.call_id, task=c.task, model_version="bench-1", ts=c.ts, input=c.input,
                           output=out if rng.random() >= 0.1 else "card_arrival", confidence=rng.random(),
                           latency_ms=12.0, frontier_output=c.output)


def router_outcomes(n: int, *, prefix: str) -> Iterator[RouterOutcome]:
    """The router's outcome for each of `captured_calls(n)` (task in frontier mode, served by it)."""
    for c in captured_calls(n, prefix=prefix):
        yield RouterOutcome(call_id=c.call_id, task=c.task, mode="frontier", served_by="frontier", ts=c.ts,
                            output=c.output, latency_ms=c.latency_ms, frontier_latency_ms=c.latency_ms)


def state_memory(processor: str, n: int) -> dict:
    """tracemalloc's count of the processor's state after folding `n` calls over 12 partitions
    (by call_id, as the producers key them), with the worker's own fold functions."""
    import gc
    import tracemalloc

    from services.common.streams import Item, Meta

    if processor == "profiler":
        from services.profiler.logic import fold_call_summaries, profiles_json, summarise_call

        def fold(state, calls):
            fold_call_summaries(state, [(c.task, summarise_call(c)) for c in calls])
        dump = profiles_json
    else:
        from services.curator.logic import curate_call, tallies_json, tally_calls

        def fold(state, calls):
            tally_calls(state, [curate_call(c) for c in calls])
        dump = tallies_json
    del Item, Meta
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    states: list[dict] = [{} for _ in range(CALLS_CAPTURED.partitions)]
    pending: list[list] = [[] for _ in states]
    started = time.perf_counter()
    for call in captured_calls(n, prefix=f"m{processor[0]}"):
        p = zlib.crc32(call.call_id.encode()) % len(states)
        pending[p].append(call)
        if len(pending[p]) >= 200:
            fold(states[p], pending[p])
            pending[p] = []
    for p, calls in enumerate(pending):
        fold(states[p], calls)
    del pending, calls
    elapsed = time.perf_counter() - started
    gc.collect()
    current = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    record_bytes = [len(json.dumps(dump(s), separators=(",", ":"))) for s in states]
    return {"calls": n, "state_bytes": current, "bytes_per_call": round(current / n, 2),
            "state_record_bytes_max": max(record_bytes), "state_record_bytes_total": sum(record_bytes),
            "fold_seconds_with_tracemalloc": round(elapsed, 1)}


def serve_noop() -> None:
    """A faust worker with the plumbing and a handler that does nothing: the floor of the stack."""
    import faust

    from services.common import catalog
    from services.common.settings import load_settings
    from services.common.streams import WorkerSettings, each_batch, make_app, source_topic

    settings = load_settings(WorkerSettings)
    app = make_app("faust-noop", settings)
    captured = source_topic(app, catalog.CALLS_CAPTURED, settings.topic_namespace)

    @each_batch(app, captured, CapturedCall, size=500, within=0.2)
    def nothing(items) -> None:
        return None

    faust.Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()


def start_noop(namespace: str, kafka: KafkaSettings, workdir: Path):
    import subprocess

    from tests.integration.test_workers import Worker, free_port, worker_env

    port = free_port()
    log = workdir / f"faust-noop-{port}.log"
    env = worker_env(namespace, kafka, workdir, GRADUATE_WORKER_WEB_PORT=str(port),
                     GRADUATE_WORKER_DATADIR=str(workdir / f"noop-{port}"))
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--serve-noop"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    return Worker("faust-noop", port, proc, log)


async def raw_consume(kafka: KafkaSettings, topic: str, n: int, codec: Codec | None, model=CapturedCall) -> dict:
    consumer = AIOKafkaConsumer(**kafka.client_config(), enable_auto_commit=False, max_poll_records=500)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # metadata of a topic created just now
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, started, cpu = 0, time.perf_counter(), time.process_time()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000)
            for msgs in batch.values():
                for m in msgs:
                    if codec is not None:
                        codec.decode(m.value, model)
                    seen += 1
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return {"messages": seen, "seconds": round(elapsed, 3), "msgs_per_s": round(seen / elapsed, 1),
                "cpu_seconds": round(cpu, 3), "msgs_per_cpu_s": round(seen / cpu, 1)}
    finally:
        await consumer.stop()


async def restore_seconds(name: str, namespace: str, kafka: KafkaSettings, workdir: Path) -> float:
    """How long a new owner takes to read the processor's state back (all 12 partitions of the
    captured calls' state topic): one record per partition, whatever the volume behind it."""
    from services.common.batch import BatchProcessor, Fold
    from services.common.streams import WorkerSettings, make_app

    app = make_app(name, WorkerSettings(kafka=kafka, topic_namespace=namespace, var_dir=workdir))
    proc = BatchProcessor(app, CALLS_CAPTURED, CapturedCall, lambda state, items: None, Fold(dict, dict, dict))
    started = time.perf_counter()
    states = await proc.read_states(set(range(CALLS_CAPTURED.partitions)))
    elapsed = time.perf_counter() - started
    assert len(states) == CALLS_CAPTURED.partitions, states.keys()
    return round(elapsed, 3)


def counted_calls(worker) -> dict[str, int]:
    """Calls per task in the worker's state as its own pages show them (curator: /curator/stats/;
    profiler: the measures of /profiler/candidates/)."""
    if worker.name == "curator":
        return {task: s["calls"] for task, s in worker.get("/curator/stats/").items()}
    return {c["task"]: c["measures"]["calls"] for c in worker.get("/profiler/candidates/")}


def is_ready(worker) -> bool:
    try:
        return bool(worker.get("/readyz").get("ready"))
    except OSError:  # 503 while not ready, or the web server not up yet
        return False


async def produce_calls(kafka: KafkaSettings, codec: Codec, topic: str, n: int, chunk: int = 50_000) -> float:
    """`captured_calls(n)` into `topic` in chunks (1 M pydantic calls at once would not fit comfortably);
    returns the seconds it took."""
    started, calls = time.perf_counter(), captured_calls(n, prefix="k")
    while batch := list(itertools.islice(calls, chunk)):
        await produce(kafka, codec, topic, [(c.call_id, c) for c in batch])
    return round(time.perf_counter() - started, 1)


async def kill_restore(name: str, namespace: str, kafka: KafkaSettings, n: int, workdir: Path) -> dict:
    """The processor as a real worker processes all `n` calls of the topic, is SIGKILLed, and is
    restarted as itself (same port, datadir and member id): seconds from the restart to its /readyz
    answering 200 and to its counts being exactly those before the kill, and its RSS at both points."""
    worker = start_worker(name, namespace, kafka, workdir, tag="-kill")
    port, deadline = worker.port, time.monotonic() + 1800

    async def until(probe, what: str) -> None:
        while not probe():
            if worker.proc.poll() is not None:
                raise RuntimeError(f"{name} exited while waiting for {what}:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {what}:\n{worker.tail()}")
            await asyncio.sleep(0.2)

    try:
        started = time.perf_counter()
        await until(lambda: processed(worker, name) >= n, f"{n} calls processed")
        processing = time.perf_counter() - started
        await asyncio.sleep(3)  # one more checkpoint interval (1 s here) passes: the kill hits a quiet worker
        # memory first: the stats or candidates page allocates too (quiet_rss reads no page)
        rss_before, memory, before = rss_mib(worker.proc.pid), memory_mib(worker.proc.pid), counted_calls(worker)
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()
        restarted = time.perf_counter()
        worker = start_worker(name, namespace, kafka, workdir, tag="-kill", port=port)
        await until(lambda: is_ready(worker), "ready after the restart")
        ready = time.perf_counter() - restarted
        last: list = [None]

        def same_counts() -> bool:
            try:
                last[0] = counted_calls(worker)
            except OSError:
                return False
            return last[0] == before

        try:
            deadline = min(deadline, time.monotonic() + 300)
            await until(same_counts, f"the counts before the kill {before} (last: {last})")
        except TimeoutError as exc:
            return {"calls": n, "error": str(exc).splitlines()[0], "counts_before_kill": before,
                    "counts_after_restart": last[0], "restart_to_ready_seconds": round(ready, 3)}
        exact = time.perf_counter() - restarted
        return {"calls": n, "processing_seconds": round(processing, 1), "rss_mib_before_kill": rss_before,
                "memory_mib_before_kill": memory,
                "restart_to_ready_seconds": round(ready, 3), "restart_to_exact_counts_seconds": round(exact, 3),
                "counts_before_kill": before, "counts_after_restart": last[0],
                "counts_exact": last[0] == before, "counted_total": sum(before.values()),
                "rss_mib_after_restore": rss_mib(worker.proc.pid)}
    finally:
        stop_worker(worker)


async def quiet_rss(name: str, namespace: str, kafka: KafkaSettings, n: int, workdir: Path) -> dict:
    """The processor as a real worker processes all `n` calls of the topic; its memory 3 s later
    (kill_restore's protocol without the kill: the reference RSS for the larger run)."""
    worker = start_worker(name, namespace, kafka, workdir, tag="-rss")
    try:
        await wait_for(lambda: processed(worker, name) >= n, 900, f"{name}: {n} calls processed", worker, interval=0.2)
        await asyncio.sleep(3)
        return {"calls": n, "rss_mib": rss_mib(worker.proc.pid), "memory_mib": memory_mib(worker.proc.pid)}
    finally:
        stop_worker(worker)


def processed(worker, name: str) -> float:
    """The worker's processed-calls counter (0 while its page does not answer)."""
    try:
        return metric(worker.get("/metrics"), "graduate_processor_processed_total", processor=name) or 0
    except OSError:
        return 0


async def run_processor(name: str, namespace: str, kafka: KafkaSettings, n: int, workdir: Path) -> dict:
    worker = (start_noop(namespace, kafka, workdir) if name == "faust-noop"
              else start_worker(name, namespace, kafka, workdir, tag="-bench"))
    target = n * EVENTS_PER_CALL[name]
    first = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                done = metric(worker.get("/metrics"), "graduate_processor_processed_total", processor=name) or 0
            except OSError:
                done = 0
            now = time.perf_counter()
            if done and first is None:
                first = (now, done, cpu_seconds(worker.proc.pid))
            if done >= target:
                elapsed, cpu = now - first[0], cpu_seconds(worker.proc.pid) - first[2]
                counted = (target - first[1]) / EVENTS_PER_CALL[name]
                return {"messages": n, "seconds": round(elapsed, 3), "msgs_per_s": round(counted / elapsed, 1),
                        "cpu_seconds": round(cpu, 3), "msgs_per_cpu_s": round(counted / cpu, 1),
                        "handler_events": target, "rss_mib_at_end": rss_mib(worker.proc.pid)}
            if worker.proc.poll() is not None:
                raise RuntimeError(f"{name} worker exited:\n{worker.tail()}")
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{name} did not finish:\n{worker.tail()}")
    finally:
        stop_worker(worker)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat): a rate per CPU second does not
    depend on what else the shared machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def memory_mib(pid: int) -> dict:
    """RSS split into anonymous (heap) and file-backed pages, and the peak RSS (VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[f].split()[0]) / 1024, 1)
            for k, f in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"), ("peak", "VmHWM"))}


def shadow_mode_on_triton(kafka: KafkaSettings, codec: Codec, namespace: str) -> dict:
    """Put the bench's task in shadow mode on a keyword model (tests/support_triton.py: a Python-backend
    model answering at once) loaded into the running Triton, so the shadow's handler runs its whole
    path (routing, the gRPC call, results) without the cost of a real model; returns what it did,
    or why the shadow runs without a task in shadow mode (no Triton reachable)."""
    from tests.support_triton import load_model, write_keyword_model

    repository = Path(os.environ.get("GRADUATE_MODEL_REPOSITORY", ROOT / "var" / "model-repository"))
    http_url = os.environ.get("GRADUATE_TRITON_HTTP_URL", "127.0.0.1:8000")
    try:
        name = write_keyword_model(repository, {"card": "card_arrival", "transfer": "transfer_timing"}, "balance",
                                   name=f"kw-{namespace.rstrip('.')}")
        load_model(http_url, name)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        return {"shadow_mode": False, "why": f"no keyword model on Triton at {http_url}: {exc}"[:300]}
    from services.common.catalog import ROUTING_DECISIONS
    from services.common.contracts import RoutingDecision

    decision = RoutingDecision(task="banking77-intent", mode="shadow", model_version="1", triton_model=name,
                               threshold=0.5, reason="bench", decided_by="bench")
    return {"shadow_mode": True, "triton_model": name, "triton_http": http_url, "decision": decision,
            "repository": str(repository), "topic": topic_name(ROUTING_DECISIONS, namespace)}


# what each faust agent worker reads, per captured call
AGENT_INPUTS = {"shadow": [(CALLS_CAPTURED, CapturedCall)], "judge": [(SHADOW_RESULTS, ShadowResult)],
                "controller": [(ROUTER_OUTCOMES, RouterOutcome), (CALLS_CAPTURED, CapturedCall)]}


async def agent_rates(kafka: KafkaSettings, n: int, agents: list[str]) -> dict:
    """The shadow, judge and controller workers (faust agents, their real handlers) over the records
    `n` captured calls make on their input topics, and raw read+decode of those topics, in a
    namespace of their own. Per call: the shadow reads its capture, the judge its shadow result
    (and re-keys it by task: two handler events), the controller its router outcome and its capture."""
    namespace = f"benchagents{uuid.uuid4().hex[:8]}."
    workdir = Path("/tmp") / f"graduate-{namespace.rstrip('.')}"
    workdir.mkdir(parents=True, exist_ok=True)
    codec = Codec()
    await ensure_topics(kafka, namespace)
    shadow_setup: dict = {}
    try:
        if "shadow" in agents:
            shadow_setup = shadow_mode_on_triton(kafka, codec, namespace)
            if shadow_setup.get("shadow_mode"):
                decision = shadow_setup.pop("decision")
                await produce(kafka, codec, shadow_setup.pop("topic"), [(decision.task, decision)])
        make = {CALLS_CAPTURED.name: captured_calls, SHADOW_RESULTS.name: shadow_results,
                ROUTER_OUTCOMES.name: router_outcomes}
        raw: dict = {}
        inputs = {spec.name: (spec, model) for specs in AGENT_INPUTS.values() for spec, model in specs}
        for spec, model in inputs.values():
            topic = topic_name(spec, namespace)
            await produce(kafka, codec, topic, [(r.call_id, r) for r in make[spec.name](n, prefix="a")])
            await raw_consume(kafka, topic, n, None)  # warm up
            raw[spec.name] = await raw_consume(kafka, topic, n, codec, model)
        report: dict = {"n": n, "shadow_setup": shadow_setup, "raw_read_decode": raw, "results": {}, "ratios_vs_raw_read_decode": {},
                        "ratios_per_cpu_second_vs_raw_read_decode": {}}
        for name in agents:
            result = await run_processor(name, namespace, kafka, n, workdir)
            inputs = [spec.name for spec, _ in AGENT_INPUTS[name]]
            # raw read+decode of one call's records on every input topic (times add up)
            per_call = 1 / sum(1 / raw[t]["msgs_per_s"] for t in inputs)
            per_call_cpu = 1 / sum(1 / raw[t]["msgs_per_cpu_s"] for t in inputs)
            result.update(inputs=inputs, raw_read_decode_calls_per_s=round(per_call, 1),
                          raw_read_decode_calls_per_cpu_s=round(per_call_cpu, 1))
            report["results"][name] = result
            report["ratios_vs_raw_read_decode"][name] = round(result["msgs_per_s"] / per_call, 3)
            report["ratios_per_cpu_second_vs_raw_read_decode"][name] = round(result["msgs_per_cpu_s"] / per_call_cpu, 3)
        report["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return report
    finally:
        await delete_topics(kafka, namespace=namespace)
        if shadow_setup.get("shadow_mode"):
            from tests.support_triton import unload_and_remove
            unload_and_remove(shadow_setup["triton_http"], Path(shadow_setup["repository"]), shadow_setup["triton_model"])


async def kill_restore_all(kafka: KafkaSettings, n: int, rss_at: int = 0) -> dict:
    """`kill_restore` for the curator and the profiler over `n` calls fed through the broker, in a
    namespace of its own; before it, with `rss_at`, `quiet_rss` over that many calls in another
    namespace (the reference of the RSS ratio: separate runs, the same protocol)."""
    report: dict = {}
    if rss_at:
        report["rss_reference"] = {"calls": rss_at, **await in_namespace(kafka, "benchrss", rss_at, quiet_rss)}
    report.update(await in_namespace(kafka, "benchkill", n, kill_restore))
    report["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return report


async def in_namespace(kafka: KafkaSettings, prefix: str, n: int, measure) -> dict:
    """`n` calls produced into a fresh namespace, then `measure(name, ...)` of the curator and the profiler."""
    namespace = f"{prefix}{uuid.uuid4().hex[:8]}."
    workdir = Path("/tmp") / f"graduate-{namespace.rstrip('.')}"
    workdir.mkdir(parents=True, exist_ok=True)
    await ensure_topics(kafka, namespace)
    try:
        report: dict = {"produce_seconds": await produce_calls(kafka, Codec(), topic_name(CALLS_CAPTURED, namespace), n)}
        for name in ("curator", "profiler"):
            report[name] = await measure(name, namespace, kafka, n, workdir)
        return report
    finally:
        await delete_topics(kafka, namespace=namespace)


NOTES = ("processor rate = captured calls per second between its first and last processed record "
         "(worker start-up and group join excluded), read from the worker's processed counter; per CPU "
         "second: the same count over the worker's user+system CPU time (/proc), and the raw reader's "
         "process time: the ratio that does not depend on the other agents' load; the "
         "curator and the profiler are batch processors (services/common/batch.py: getmany, decode, "
         "one fold per partition, its sends (the curator's dataset records: one record batch per partition) "
         "and dead letters awaited per batch, state + offset written per checkpoint interval, then commit); faust-noop is a faust agent doing nothing. "
         "state_memory is measured by feeding the fold functions directly, without Kafka, with "
         "tracemalloc (which itself slows the fold): the state's own size, not the worker process (gc.freeze and "
         "the GC thresholds of BatchProcessor.run do not apply there); the workers' RSS is in results (after "
         "n calls) and kill_restore (after its calls through the broker). restore_seconds: a new owner reading "
         "the state of all 12 partitions back after the run. kill_restore: the curator and the profiler (real "
         "`graduate worker` processes) process kill_restore.*.calls captured calls fed through the broker, are "
         "SIGKILLed 3 s after the last one, and restarted as themselves (same port, datadir, member id): "
         "seconds from the restart to /readyz answering 200 and to their /stats (curator) or candidates "
         "(profiler) counts equalling those before the kill; their RSS 3 s after the last call against "
         "kill_restore.rss_reference, the same workers over a separate run of fewer calls (--rss-at, 100 k) "
         "measured the same way (memory_mib: anonymous and file-backed pages, peak = VmHWM). agents: the shadow, judge and controller faust "
         "workers with their real handlers over agents.n calls' records, against raw read+decode of their input "
         "topics in the same run (per call, the times of each input topic added): the shadow with the task in "
         "shadow mode on a keyword model in Triton (its own CPU; the model's inference is Triton's), the judge "
         "on shadow results (re-key by task + judge: 2 handler events per result), the controller on one router "
         "outcome and one capture per call.")


def headline(report: dict) -> list[dict]:
    """The figures issue 16 asks for, from whatever the report holds."""
    lines = []
    mem, growth = report.get("state_memory", {}), report.get("state_memory_growth", {})
    sizes = sorted((int(m) for m in mem.get("profiler", {})))
    for p, g in growth.items():
        lines.append({"name": f"state memory after {sizes[-1]:,} / after {sizes[0]:,} calls: {p}", "value": g,
                      "goal": "<= 1.2"})
    kill, results = report.get("kill_restore", {}), report.get("results", {})
    for p in ("curator", "profiler"):
        k = kill.get(p)
        if not k:
            continue
        lines.append({"name": f"restore after a SIGKILL at {k['calls']:,} calls: {p}, seconds to /readyz",
                      "value": k.get("restart_to_ready_seconds"), "counts_exact": k.get("counts_exact")})
        ref = kill.get("rss_reference", {})
        if ref.get(p, {}).get("rss_mib") and k.get("rss_mib_before_kill"):  # same protocol, separate runs
            lines.append({"name": f"worker RSS after {k['calls']:,} calls / after {ref['calls']:,} calls "
                                  f"(separate runs, 3 s after the last call): {p}",
                          "value": round(k["rss_mib_before_kill"] / ref[p]["rss_mib"], 3),
                          "mib": [ref[p]["rss_mib"], k["rss_mib_before_kill"]], "goal": "<= 1.2"})
        elif results.get(p, {}).get("rss_mib_at_end") and k.get("rss_mib_before_kill"):
            lines.append({"name": f"worker RSS after {k['calls']:,} calls / after {report['n']:,} calls "
                                  f"(separate runs): {p}",
                          "value": round(k["rss_mib_before_kill"] / results[p]["rss_mib_at_end"], 3),
                          "mib": [results[p]["rss_mib_at_end"], k["rss_mib_before_kill"]], "goal": "<= 1.2"})
    for p, r in report.get("agents", {}).get("ratios_per_cpu_second_vs_raw_read_decode", {}).items():
        lines.append({"name": f"{p} (faust agent, real handler) calls per CPU second",
                      "value": report["agents"]["results"][p]["msgs_per_cpu_s"], "ratio_vs_raw_read_decode": r})
    return lines


async def main(n: int, processors: list[str], memory: list[int], out: Path, kill_at: int = 0,
               agents: list[str] = (), agents_n: int = 20_000, rss_at: int = 100_000) -> dict:
    kafka = KafkaSettings(bootstrap=os.environ.get("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    namespace = f"bench{uuid.uuid4().hex[:8]}."
    codec = Codec()
    workdir = Path("/tmp") / f"graduate-{namespace.rstrip('.')}"
    workdir.mkdir(parents=True, exist_ok=True)
    await ensure_topics(kafka, namespace)
    try:
        topic = topic_name(CALLS_CAPTURED, namespace)
        calls = list(captured_calls(n))
        await produce(kafka, codec, topic, [(c.call_id, c) for c in calls])
        del calls
        await raw_consume(kafka, topic, n, None)  # warm the broker's page cache and the connection
        results: dict = {"raw_read": await raw_consume(kafka, topic, n, None),
                         "raw_read_decode": await raw_consume(kafka, topic, n, codec)}
        for name in processors:
            results[name] = await run_processor(name, namespace, kafka, n, workdir)
            if name != "faust-noop":
                results[name]["restore_seconds"] = await restore_seconds(name, namespace, kafka, workdir)
        # raw again after the processors, so drift on the shared machine shows
        results["raw_read_decode_after"] = await raw_consume(kafka, topic, n, codec)
        raw = (results["raw_read_decode"]["msgs_per_s"] + results["raw_read_decode_after"]["msgs_per_s"]) / 2
        raw_cpu = (results["raw_read_decode"]["msgs_per_cpu_s"] + results["raw_read_decode_after"]["msgs_per_cpu_s"]) / 2
        if memory:
            mem = {p: {str(m): state_memory(p, m) for m in memory} for p in ("profiler", "curator")}
            mem["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        else:  # rates only (--memory ""): the state's memory is kept from the last run that measured it
            mem = json.loads(out.read_text()).get("state_memory", {}) if out.exists() else {}
        kill = (await kill_restore_all(kafka, kill_at, rss_at) if kill_at
                else json.loads(out.read_text()).get("kill_restore", {}) if out.exists() else {})
        agent = (await agent_rates(kafka, agents_n, agents) if agents
                 else json.loads(out.read_text()).get("agents", {}) if out.exists() else {})
        # processors not measured in this run keep their last measured figures, marked with when
        old = json.loads(out.read_text()) if out.exists() else {}
        kept = [p for p in old.get("results", {}) if p not in processors and p in EVENTS_PER_CALL]
        for p in kept:
            results[p] = {**old["results"][p], "measured": old["results"][p].get("measured", old.get("when"))}
        sizes = sorted((int(m) for m in mem.get("profiler", {})), key=int)
        growth = {p: round(mem[p][str(sizes[-1])]["state_bytes"] / mem[p][str(sizes[0])]["state_bytes"], 3)
                  for p in ("profiler", "curator")} if len(sizes) > 1 else {}
        report = {
            "benchmark": "processors vs raw aiokafka consumer, same topic, same broker, same run",
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared_machine": True},
            "n": n, "partitions": CALLS_CAPTURED.partitions, "results": results,
            "ratios_vs_raw_read_decode": {**{p: old["ratios_vs_raw_read_decode"][p] for p in kept},
                                          **{p: round(results[p]["msgs_per_s"] / raw, 3) for p in processors}},
            "ratios_vs_raw_read": {**{p: old["ratios_vs_raw_read"][p] for p in kept},
                                   **{p: round(results[p]["msgs_per_s"] / results["raw_read"]["msgs_per_s"], 3)
                                      for p in processors}},
            "ratios_per_cpu_second_vs_raw_read_decode": {
                **{p: old["ratios_per_cpu_second_vs_raw_read_decode"][p] for p in kept},
                **{p: round(results[p]["msgs_per_cpu_s"] / raw_cpu, 3) for p in processors}},
            "goal": "ratio >= 0.5",
            "headline": [],
            "state_memory": mem,
            "state_bytes": {f"{p} after {m} calls": mem[p][m]["state_bytes"] for p in ("profiler", "curator")
                            for m in sorted(mem.get(p, {}), key=int)},
            "state_memory_growth": growth,
            "kill_restore": kill,
            "agents": agent,
            "notes": NOTES,
        }
        report["headline"] = headline(report)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        return report
    finally:
        await delete_topics(kafka, namespace=namespace)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--memory", default="100000,1000000",
                        help='calls for the state-memory runs ("": keep the last measured, rates only)')
    parser.add_argument("--kill-at", type=int, default=1_000_000,
                        help="calls the curator and the profiler process through the broker before they are SIGKILLed "
                             "and restarted (restore time, exact counts); 0: keep the last measured")
    parser.add_argument("--rss-at", type=int, default=100_000,
                        help="calls of the separate run whose RSS (3 s after its last call) is the reference of "
                             "the kill run's RSS ratio; 0: the rate run's RSS at its end")
    parser.add_argument("--kill-only", action="store_true",
                        help="measure only the kill/restore and write it into the existing --out file")
    parser.add_argument("--agents", default="shadow,judge,controller",
                        help='faust agent workers measured with their real handlers ("": keep the last measured)')
    parser.add_argument("--agents-n", type=int, default=20_000, help="captured calls behind the agents' inputs")
    parser.add_argument("--agents-only", action="store_true",
                        help="measure only the agents and write them into the existing --out file")
    parser.add_argument("--recompose", action="store_true",
                        help="measure nothing: rewrite the --out file's headline and notes")
    parser.add_argument("--processors", default="faust-noop,curator,profiler",
                        help="processors measured; the others keep their last figures in --out (with when)")
    parser.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "processors.json")
    args = parser.parse_args()
    if args.serve_noop:
        serve_noop()
        sys.exit(0)
    if args.recompose or args.agents_only or args.kill_only:  # one part measured (or none), merged into --out
        report = json.loads(args.out.read_text())
        kafka = KafkaSettings(bootstrap=os.environ.get("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
        if args.agents_only:
            report["agents"] = asyncio.run(agent_rates(kafka, args.agents_n, [a for a in args.agents.split(",") if a]))
            print(json.dumps(report["agents"], indent=2))
        elif args.kill_only:
            report["kill_restore"] = asyncio.run(kill_restore_all(kafka, args.kill_at, args.rss_at))
            print(json.dumps(report["kill_restore"], indent=2))
        report["headline"], report["notes"] = headline(report), NOTES
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        sys.exit(0)
    report = asyncio.run(main(args.n, args.processors.split(","), [int(m) for m in args.memory.split(",") if m],
                              args.out, args.kill_at,
                              [a for a in args.agents.split(",") if a], args.agents_n, args.rss_at))
    print(json.dumps({k: report[k] for k in ("results", "ratios_vs_raw_read_decode", "state_memory",
                                             "state_memory_growth", "kill_restore", "agents")}, indent=2))
