"""The controller worker as a real process on the real Kafka: gate -> shadow -> small -> drift -> retrain.

`graduate worker controller` runs as a subprocess in this test's own namespace; the test plays
the trainer (ModelRegistered), the judge (ShadowStats) and the router (RouterOutcome), reads what
the controller decides from the routing topics, and drives the CLI as a person would.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from datetime import timedelta

import pytest

from services.common import catalog
from services.common.catalog import topic_name
from services.common.contracts import RetrainRequest, RouterOutcome, RoutingDecision, utcnow
from services.common.settings import REPO_ROOT
from tests.support import decode_all, produce, read_topic
from tests.unit.test_gate import registered, shadow_stats

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = "intent"
GRADUATE = str(REPO_ROOT / ".venv" / "bin" / "graduate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(namespace, kafka_settings, tmp_path) -> dict[str, str]:
    return {**os.environ, "GRADUATE_TOPIC_NAMESPACE": namespace, "GRADUATE_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
            "GRADUATE_VAR_DIR": str(tmp_path), "GRADUATE_WORKER_COMMIT_INTERVAL_S": "1.0",
            "GRADUATE_CONTROLLER_MIN_WINDOW": "40", "GRADUATE_CONTROLLER_WINDOW_SIZE": "80", "USER": "ana",
            # the configured tasks' graduation notes would interleave with this test's audit trail
            "GRADUATE_CONTROLLER_LOOK_INTERVAL_S": "3600"}


class ControllerWorker:
    """`graduate worker controller` as a subprocess; restartable, stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], folder) -> None:
        self.env, self.folder, self.proc = env, folder, None
        self.log = folder / "controller.log"
        self.port = free_port()  # kept across restarts: the same static group member comes back

    def start(self) -> "ControllerWorker":
        with self.log.open("a") as out:
            self.proc = subprocess.Popen([GRADUATE, "worker", "controller", "--web-port", str(self.port),
                                          "--datadir", str(self.folder / "controller"), "--log-level", "info"],
                                         cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("the controller did not stop on SIGTERM:\n" + self.tail())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def controller_worker(env, tmp_path, topics):
    worker = ControllerWorker(env, tmp_path)
    yield worker
    worker.stop()


def graduate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GRADUATE, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


async def decisions(kafka_settings, codec, namespace, spec, count: int, timeout: float = 90.0) -> list[RoutingDecision]:
    records = await read_topic(kafka_settings, topic_name(spec, namespace), min_count=count, timeout=timeout)
    return decode_all(codec, records, RoutingDecision)


def outcomes(start: int, count: int, fallback_every: int | None) -> list[tuple[str, RouterOutcome]]:
    """Small-mode outcomes; every `fallback_every`-th falls back for low confidence (None: all do)."""
    now = utcnow() + timedelta(seconds=2)  # after the cutover decision
    out = []
    for i in range(start, start + count):
        low = fallback_every is None or i % fallback_every == 0
        o = RouterOutcome(call_id=f"call-{i}", task=TASK, mode="small", served_by="fallback" if low else "small",
                          model_version="v1", confidence=0.3 if low else 0.92, threshold=0.62,
                          fallback_reason="low_confidence" if low else None, latency_ms=9.0,
                          ts=now + timedelta(milliseconds=i))
        out.append((o.call_id, o))
    return out


async def test_gate_shadow_small_drift_retrain_and_the_audit_trail(kafka_settings, codec, namespace, env,
                                                                   controller_worker):
    worker = controller_worker.start()
    models_topic = topic_name(catalog.MODELS, namespace)

    # offline gate: a better model -> shadow, with its evidence
    await produce(kafka_settings, codec, models_topic, [(f"{TASK}/v1", registered("v1"))])
    routed = await decisions(kafka_settings, codec, namespace, catalog.ROUTING_DECISIONS, 1)
    assert [(d.mode, d.model_version) for d in routed] == [("shadow", "v1")], worker.tail()
    ev = json.loads(routed[0].evidence)
    assert ev["gate"] == "offline" and ev["statistics"]["p_value"] < 0.05 and ev["statistics"]["n"] == 500
    assert routed[0].threshold == 0.62 and routed[0].triton_model == "intent-v1"

    # shadow gate: the judge's statistics pass -> small
    await produce(kafka_settings, codec, topic_name(catalog.SHADOW_STATS, namespace),
                  [(f"{TASK}/v1", shadow_stats("v1"))])
    routed = await decisions(kafka_settings, codec, namespace, catalog.ROUTING_DECISIONS, 2)
    assert routed[-1].mode == "small" and routed[-1].threshold == 0.62, worker.tail()

    # a worse model is refused: the history says so, the routing topic does not change
    await produce(kafka_settings, codec, models_topic,
                  [(f"{TASK}/v2", registered("v2", small_only=5, frontier_only=60))])
    history = await decisions(kafka_settings, codec, namespace, catalog.ROUTING_HISTORY, 3)
    assert history[-1].mode == "small" and "refused for v2" in history[-1].reason

    # the watch: a normal fallback rate, then a climbing one -> demotion; the retrain waits for data since the drift
    await produce(kafka_settings, codec, topic_name(catalog.ROUTER_OUTCOMES, namespace), outcomes(0, 60, 5))
    await produce(kafka_settings, codec, topic_name(catalog.ROUTER_OUTCOMES, namespace), outcomes(60, 120, None))
    routed = await decisions(kafka_settings, codec, namespace, catalog.ROUTING_DECISIONS, 3)
    assert routed[-1].mode == "shadow" and routed[-1].reason.startswith("drift: fallback rate"), worker.tail()
    assert json.loads(routed[-1].evidence)["verdict"] == "demoted"
    time.sleep(3)  # the rest of the drifted outcomes are read: no request before data since the drift
    requests = decode_all(codec, await read_topic(kafka_settings, topic_name(catalog.RETRAIN_REQUESTS, namespace),
                                                  min_count=0, timeout=2), RetrainRequest)
    assert not requests
    collecting = {r["task"]: r for r in json.loads(graduate(env, "status", "--json").stdout)}[TASK]
    assert collecting["graduation"] == "collecting", collecting
    assert collecting["graduation_reason"].startswith("waiting for data since the drift")

    # a person: an override without a reason is refused; with one it is written, audited
    refused = graduate(env, "route", "set", TASK, "--mode", "frontier")
    assert refused.returncode == 2 and "a reason is required" in refused.stdout
    small_without = graduate(env, "route", "set", TASK, "--mode", "small", "--reason", "try")
    assert small_without.returncode == 2 and "needs both --model and --threshold" in small_without.stdout
    done = graduate(env, "route", "set", TASK, "--mode", "frontier", "--reason", "incident 42")
    assert done.returncode == 0, done.stdout + done.stderr

    # history: every decision in order, the refusal included
    shown = graduate(env, "route", "history", TASK, "--json")
    assert shown.returncode == 0, shown.stderr
    trail = json.loads(shown.stdout)
    assert [(d["mode"], d["evidence"].get("gate"), d["evidence"].get("verdict"), d["decided_by"]) for d in trail] == [
        ("shadow", "offline", "pass", "controller"), ("small", "shadow", "pass", "controller"),
        ("small", "offline", "refused", "controller"), ("shadow", "watch", "demoted", "controller"),
        ("frontier", "override", "override", "ana")]
    status = graduate(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["task"]: r for r in json.loads(status.stdout)}
    row = rows[TASK]
    assert row["mode"] == "frontier" and row["last_decision"]["decided_by"] == "ana"
    configured = rows["banking77-intent"]  # every graduatable task of config/tasks.yaml has a row and a state
    assert configured["graduation"] == "frontier" and configured["reviews_needed"] == 300
    assert row["fallback_n"] == 180
    shown = graduate(env, "route", "show", TASK, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["reason"] == "incident 42"

    # `graduate gate`: evaluates now, decides nothing
    latest = json.loads(graduate(env, "gate", TASK, "--json").stdout)
    assert latest["offline"]["candidate"] == "v2" and latest["offline"]["verdict"] == "refused"
    v1 = json.loads(graduate(env, "gate", TASK, "--version", "v1", "--json").stdout)
    assert v1["offline"]["verdict"] == "pass" and v1["shadow"]["verdict"] == "pass"
    assert len(await decisions(kafka_settings, codec, namespace, catalog.ROUTING_HISTORY, 5)) == 5
    assert worker.alive(), worker.tail()


async def test_a_restarted_controller_gives_no_second_verdict(kafka_settings, codec, namespace, controller_worker):
    worker = controller_worker.start()
    models_topic = topic_name(catalog.MODELS, namespace)
    await produce(kafka_settings, codec, models_topic, [(f"{TASK}/v1", registered("v1"))])
    await decisions(kafka_settings, codec, namespace, catalog.ROUTING_DECISIONS, 1)
    worker.stop()
    worker.start()
    # the registration delivered again (a replay), then the judge's statistics
    await produce(kafka_settings, codec, models_topic, [(f"{TASK}/v1", registered("v1"))])
    await produce(kafka_settings, codec, topic_name(catalog.SHADOW_STATS, namespace),
                  [(f"{TASK}/v1", shadow_stats("v1"))])
    routed = await decisions(kafka_settings, codec, namespace, catalog.ROUTING_DECISIONS, 2)
    assert [d.mode for d in routed] == ["shadow", "small"], worker.tail()
    time.sleep(2)
    history = await decisions(kafka_settings, codec, namespace, catalog.ROUTING_HISTORY, 2)
    assert [d.mode for d in history] == ["shadow", "small"]
