"""Real faust workers as subprocesses against the real broker: poison, metrics, SIGTERM.

Also the helpers the curator and profiler integration tests share: Banking77-based captured
calls with planted duplicates, conflicts and parse failures, and worker processes.
"""
from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.common.catalog import CALLS_CAPTURED, DEADLETTER, topic_name
from services.common.contracts import CapturedCall, DeadLetter, ReviewedLabel
from services.common.kafka import make_producer
from services.common.settings import REPO_ROOT
from tests.support import decode_all, produce, read_topic

pytestmark = pytest.mark.integration

BANKING = "banking77-intent"
FREEFORM = "draft-reply"
T_END = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
GRADUATE = str(REPO_ROOT / ".venv" / "bin" / "graduate")


@dataclass
class Replay:
    calls: list[CapturedCall]
    duplicates: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    parse_failures: list[str] = field(default_factory=list)


def banking77_calls(n: int, *, prefix: str = "b", seed: int = 77, span_hours: float = 2.0, duplicates: int = 100,
                    conflicts: int = 5, parse_failures: int = 10) -> Replay:
    """`n` captured calls answered with Banking77's labels (a perfect frontier, honestly: the test
    needs known answers), plus planted re-asked inputs, disagreeing re-answers and broken answers."""
    rng = random.Random(seed)
    with open(REPO_ROOT / "data" / "banking77" / "train.csv", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    labels = sorted({c for _, c in rows})
    base = rng.sample(rows, n - duplicates - conflicts)
    start = T_END - timedelta(hours=span_hours)
    total = n

    def make(i: int, text: str, label: str | None, raw: str | None = None) -> CapturedCall:
        return CapturedCall(call_id=f"{prefix}{i:05d}", task=BANKING, ts=start + timedelta(hours=span_hours * i / total),
                            input=text, output_raw=raw if raw is not None else label, output=label,
                            parse_ok=label is not None, latency_ms=rng.lognormvariate(6.4, 0.3),
                            prompt_tokens=420, completion_tokens=6, cost_usd=0.00111, model="frontier-sim")

    out = Replay([])
    broken = set(rng.sample(range(len(base)), parse_failures))
    for i, (text, label) in enumerate(base):
        if i in broken:
            out.calls.append(make(i, text, None, "I am not sure which category fits"))
            out.parse_failures.append(out.calls[-1].call_id)
        else:
            out.calls.append(make(i, text, label))
    i = len(base)
    for _ in range(duplicates):
        src = out.calls[rng.randrange(len(base))]
        if src.output is None:
            src = out.calls[0]
        out.calls.append(make(i, "  " + src.input.upper() + " ", src.output))
        out.duplicates.append(out.calls[-1].call_id)
        i += 1
    for _ in range(conflicts):
        src = out.calls[rng.randrange(len(base))]
        other = next(lab for lab in rng.sample(labels, 3) if lab != src.output)
        out.calls.append(make(i, src.input.lower(), other))
        out.conflicts.append(out.calls[-1].call_id)
        i += 1
    return out


def freeform_calls(n: int, *, span_hours: float = 48.0) -> list[CapturedCall]:
    """A low-volume open-ended task: every answer is different text."""
    rng = random.Random(5)
    start = T_END - timedelta(hours=span_hours)
    return [CapturedCall(call_id=f"f{i:04d}", task=FREEFORM, ts=start + timedelta(hours=span_hours * i / n),
                         input=f"Hello, order {1000 + i} arrived damaged, what now?",
                         output_raw=f"Dear customer, sorry about order {1000 + i}; a replacement ships in {i % 9 + 1} days.",
                         output=f"Dear customer, sorry about order {1000 + i}; a replacement ships in {i % 9 + 1} days.",
                         latency_ms=rng.uniform(1500, 4000), prompt_tokens=300, completion_tokens=120,
                         cost_usd=0.00195, model="frontier-sim") for i in range(n)]


def poison_payloads(codec) -> list[tuple[bytes, bytes, str]]:
    """(key, value, what the reason must mention) for messages no processor can use."""
    good = codec.encode(freeform_calls(1)[0])
    wrong_type = codec.encode(ReviewedLabel(call_id="x", task=BANKING, label="card_arrival", reviewer="r"))
    return [(b"poison-garbage", b"this is not avro", "not Avro single-object encoding"),
            (b"poison-fingerprint", b"\xc3\x01" + b"\x00" * 8 + good[10:], "unknown schema fingerprint"),
            (b"poison-type", wrong_type, "expected graduate.v1.CapturedCall")]


async def produce_raw(kafka, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def feed_slowly(kafka, codec, topic: str, calls: list[CapturedCall], chunk: int = 100,
                      pause: float = 0.1) -> None:
    """Produce in chunks, so a worker can be killed while the stream is still flowing."""
    for i in range(0, len(calls), chunk):
        await produce(kafka, codec, topic, [(c.call_id, c) for c in calls[i:i + chunk]])
        await asyncio.sleep(pause)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Worker:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    def get(self, path: str, timeout: float = 5.0):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            body = r.read().decode()
        return json.loads(body) if path != "/metrics" else body

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def worker_env(namespace: str, kafka, var_dir: Path, **extra: str) -> dict:
    """The environment of a test worker; `extra` adds settings or overrides these."""
    return {**os.environ, "GRADUATE_TOPIC_NAMESPACE": namespace, "GRADUATE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "GRADUATE_VAR_DIR": str(var_dir), "GRADUATE_WORKER_SESSION_TIMEOUT_S": "6",
            "GRADUATE_WORKER_HEARTBEAT_INTERVAL_S": "1", "GRADUATE_WORKER_COMMIT_INTERVAL_S": "1",
            "GRADUATE_WORKER_LAG_INTERVAL_S": "1", "GRADUATE_CURATOR_STATS_INTERVAL_S": "1", **extra}


def start_worker(name: str, namespace: str, kafka, tmp_path: Path, tag: str = "", port: int | None = None,
                 **env: str) -> Worker:
    """`graduate worker NAME`; pass the `port` of a stopped worker to restart it as the same member
    (same web port, datadir and static-membership id; another URL would trip faust's assignor)."""
    port = port or free_port()
    log = tmp_path / f"{name}{tag}-{port}.log"
    with log.open("a") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([GRADUATE, "worker", name, "--web-port", str(port), "--datadir",
                                 str(tmp_path / f"data-{name}{tag}-{port}"), "--instance-id",
                                 f"{namespace}{name}{tag}-{port}"],
                                env=worker_env(namespace, kafka, tmp_path, **env), cwd=REPO_ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    return Worker(name, port, proc, log)


def stop_worker(worker: Worker, timeout: float = 60.0) -> int:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            return worker.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
            raise AssertionError(f"{worker.name} did not stop on SIGTERM within {timeout}s:\n{worker.tail()}")
    return worker.proc.returncode


async def wait_for(probe, timeout: float, what: str, worker: Worker | None = None, interval: float = 1.0):
    """Poll `probe()` (sync) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"{worker.name} exited with {worker.proc.returncode}:\n{worker.tail()}")
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})"
                         + (f"\n{worker.tail()}" if worker else ""))


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()) or not want:
                return float(value)
    return None


async def test_poison_goes_to_the_dead_letter_topic_and_the_worker_keeps_going(
        topics, namespace, kafka_settings, codec, tmp_path):
    captured = topic_name(CALLS_CAPTURED, namespace)
    calls = banking77_calls(60, duplicates=0, conflicts=0, parse_failures=0).calls
    poison = poison_payloads(codec)
    await produce(kafka_settings, codec, captured, [(c.call_id, c) for c in calls[:30]])
    await produce_raw(kafka_settings, captured, [(k, v) for k, v, _ in poison])
    await produce(kafka_settings, codec, captured, [(c.call_id, c) for c in calls[30:]])

    worker = start_worker("profiler", namespace, kafka_settings, tmp_path)
    try:
        def processed():
            m = worker.get("/metrics")
            done = metric(m, "graduate_processor_processed_total", processor="profiler")
            return m if done == 60 and metric(m, "graduate_processor_deadletter_total", processor="profiler") == 3 else None

        text = await wait_for(processed, 120, "60 processed and 3 dead letters", worker)
        letters = decode_all(codec, await read_topic(kafka_settings, topic_name(DEADLETTER, namespace), min_count=3),
                             DeadLetter)
        by_key = {letter.key: letter for letter in letters}
        assert len(letters) == 3
        for key, value, reason in poison:
            letter = by_key[key]
            assert reason in letter.reason and letter.payload == value
            assert letter.source_topic == captured and letter.processor == "profiler" and letter.offset >= 0
        records = await read_topic(kafka_settings, topic_name(DEADLETTER, namespace))
        assert all(dict(r.headers)["reason"].decode() in by_key[r.key].reason for r in records)
        for name in ("graduate_processor_processed_total", "graduate_processor_failed_total",
                     "graduate_processor_deadletter_total", "graduate_processor_lag",
                     "graduate_processor_processing_seconds_bucket"):
            assert name in text, name
        assert metric(text, "graduate_processor_failed_total", processor="profiler") == 3

        def caught_up():
            return metric(worker.get("/metrics"), "graduate_processor_lag", processor="profiler", topic=captured) == 0

        await wait_for(caught_up, 30, "lag 0", worker)
        ranked = worker.get("/profiler/candidates/")
        assert [c["measures"]["calls"] for c in ranked] == [60]
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()
    assert "Traceback" not in worker.log.read_text()


@pytest.fixture
async def app_topics(kafka_settings, namespace):
    """Deletes the topics the test's faust apps own (internal, changelog) afterwards."""
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka import delete_topics

    yield
    admin = AIOKafkaAdminClient(**kafka_settings.client_config())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(namespace + "graduate-")]
    finally:
        await admin.close()
    await delete_topics(kafka_settings, ours)


def start_holdup(namespace: str, kafka, tmp_path: Path, mode: str, port: int, hold: str = "") -> Worker:
    """tests/integration/holdup_app.py as a worker subprocess. The same port on a restart keeps its
    identity: a static member rejoining with another URL trips faust's assignor."""
    log = tmp_path / f"holdup-{mode}-{port}.log"
    env = worker_env(namespace, kafka, tmp_path, GRADUATE_TEST_MODE=mode, GRADUATE_TEST_HOLD=hold,
                     GRADUATE_WORKER_WEB_PORT=str(port), GRADUATE_WORKER_DATADIR=str(tmp_path / "holdup-data"),
                     GRADUATE_WORKER_INSTANCE_ID=f"{namespace}holdup")
    with log.open("a") as out:
        proc = subprocess.Popen([str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "tests.integration.holdup_app"],
                                env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Worker("holdup", port, proc, log)


async def produce_to_partition(kafka, codec, topic: str, calls: list[CapturedCall], partition: int = 0) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for c in calls:
            await producer.send_and_wait(topic, codec.encode(c), key=c.call_id.encode(), partition=partition)
    finally:
        await producer.stop()


async def wait_for_echoes(kafka, topic: str, want: set[str], what: str, worker: Worker, timeout: float = 120):
    """Poll the echo topic until every call_id of `want` has an echo there; returns what is there."""
    deadline = time.monotonic() + timeout
    await wait_for(lambda: worker.get("/metrics"), timeout, "the worker to serve (its topics exist then)", worker)
    while True:
        got = {r.key.decode() for r in await read_topic(kafka, topic, timeout=1)}
        if want <= got:
            return got
        if worker.proc.poll() is not None:
            raise AssertionError(f"{worker.name} exited with {worker.proc.returncode}:\n{worker.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; echoed: {sorted(got)}\n{worker.tail()}")
        await asyncio.sleep(1)


@pytest.mark.parametrize("mode", ["event", "batch"])
async def test_sigterm_mid_handler_commits_nothing_unfinished(topics, app_topics, namespace, kafka_settings, codec,
                                                              tmp_path, mode):
    """A handler stuck on an event (awaiting what never comes) is cancelled by SIGTERM: the worker
    stops cleanly, and that event (with the rest of its batch) is read again after the restart."""
    captured = topic_name(CALLS_CAPTURED, namespace)
    echo = f"{namespace}graduate-holdup-echo"
    calls = {c.call_id: c for c in freeform_calls(9)}
    before, held, after, last = {"f0000", "f0001", "f0002"}, "f0003", {"f0004", "f0005", "f0006", "f0007"}, "f0008"
    # one partition, in this order: before, held, after (then last, after the restart)

    port = free_port()
    worker = start_holdup(namespace, kafka_settings, tmp_path, mode, port, hold=held)
    try:
        await produce_to_partition(kafka_settings, codec, captured, [calls[i] for i in sorted(before)])
        await wait_for_echoes(kafka_settings, echo, before, "the first calls' echoes", worker)
        await produce_to_partition(kafka_settings, codec, captured, [calls[i] for i in [held, *sorted(after)]])
        await wait_for(lambda: f"holding {held}" in worker.log.read_text(), 60, "the handler to hold", worker)
        await asyncio.sleep(3)  # commit intervals pass while the handler holds
        got = {r.key.decode() for r in await read_topic(kafka_settings, echo, timeout=1)}
        assert got == before  # the agent is stuck on `held`: nothing after it is handled either
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()

    worker = start_holdup(namespace, kafka_settings, tmp_path, mode, port)
    try:
        await produce_to_partition(kafka_settings, codec, captured, [calls[last]])
        got = await wait_for_echoes(kafka_settings, echo, {last}, "the last call's echo", worker)
        assert "Traceback" not in worker.log.read_text(), worker.tail()
        missing = ({held} | after) - got
        assert not missing, f"committed unprocessed (cancelled mid-handler or queued behind it): {sorted(missing)}"
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()
