"""Kafka stopped for a while: the router keeps serving, capture spools, and after Kafka returns
every call_id is in the topic exactly once.

The shared broker is never touched: this module starts a second broker of its own
(deploy/local/kafka/kafka.sh with its own var dir and ports) and always stops it.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from services.capture.client import CaptureSettings
from services.common.catalog import CALLS_CAPTURED, CATALOG, ROUTER_OUTCOMES, topic_name
from services.common.contracts import RouterOutcome
from services.common.kafka import ensure_topics
from services.common.settings import REPO_ROOT, KafkaSettings
from tests.integration.test_router import (
    TASK,
    RouterServer,
    free_port,
    http,
    predict,
    router_settings,
    simulator,  # noqa: F401 (fixture)
)
from tests.support import decode_all, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka" / "kafka.sh"
DURING_OUTAGE = 20


class OwnBroker:
    """A second single-node Kafka for this module only: start/stop it at will."""

    def __init__(self, var_dir: Path) -> None:
        self.port, self.controller_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k != "GRADUATE_KAFKA_BOOTSTRAP"}
        self.env = {**env, "GRADUATE_VAR_DIR": str(var_dir), "GRADUATE_KAFKA_PORT": str(self.port),
                    "GRADUATE_KAFKA_CONTROLLER_PORT": str(self.controller_port)}
        self.settings = KafkaSettings(bootstrap=f"127.0.0.1:{self.port}")

    def run(self, command: str) -> None:
        done = subprocess.run(["bash", str(KAFKA_SH), command], env=self.env, capture_output=True, text=True,
                              timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def own_broker():
    with tempfile.TemporaryDirectory(prefix="graduate-kafka-outage-") as var_dir:
        broker = OwnBroker(Path(var_dir))
        try:
            broker.run("start")
            yield broker
        finally:
            broker.run("stop")


async def metric(client: httpx.AsyncClient, url: str, name: str) -> float:
    text = (await client.get(url)).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.25)


async def test_kafka_outage_spools_then_every_call_lands_exactly_once(own_broker, simulator, tmp_path, namespace,  # noqa: F811
                                                                      triton_urls, codec):
    from services.router.keys import create_key

    kafka = own_broker.settings
    await ensure_topics(kafka, namespace, specs=CATALOG)
    key = create_key(tmp_path / "keys.json", "svc")
    settings = router_settings(tmp_path, kafka, namespace, simulator, triton_urls["grpc"],
                               capture=CaptureSettings(unhealthy_after_s=1.0, reconnect_backoff_s=0.5,
                                                       stop_timeout_s=20))
    router = RouterServer(settings).start()
    try:
        async with http(router, key) as h:
            before = [(await predict(h, f"my card did not arrive #{i}")).json()["call_id"] for i in range(3)]

            own_broker.run("stop")
            during = []
            for i in range(DURING_OUTAGE):
                r = await predict(h, f"exchange rate question #{i}")
                assert r.status_code == 200 and r.json()["served_by"] == "frontier", r.text
                during.append(r.json()["call_id"])
                await asyncio.sleep(0.1)
            await until(lambda: _positive(h, router.metrics_url, "graduate_router_spool_records"), 15,
                        "records in the spool")
            assert await metric(h, router.metrics_url, "graduate_router_spool_bytes") > 0

            own_broker.run("start")
            after = [(await predict(h, f"top up failed #{i}")).json()["call_id"] for i in range(3)]
            await until(lambda: _drained(h, router.metrics_url), 90, "the spool and queue to drain after Kafka returned")
    finally:
        router.stop()

    call_ids = before + during + after
    records = await read_topic(kafka, topic_name(CALLS_CAPTURED, namespace), min_count=len(call_ids), timeout=30)
    keys = [r.key.decode() for r in records]
    assert sorted(keys) == sorted(call_ids), f"{len(keys)} records for {len(call_ids)} calls"
    outcomes = await read_topic(kafka, topic_name(ROUTER_OUTCOMES, namespace), min_count=len(call_ids), timeout=30)
    assert {r.key.decode() for r in outcomes} == {TASK}  # outcomes are keyed by task (the controller's partitions)
    assert sorted(o.call_id for o in decode_all(codec, outcomes, RouterOutcome)) == sorted(call_ids)


async def _positive(h: httpx.AsyncClient, url: str, name: str) -> bool:
    return await metric(h, url, name) > 0


async def _drained(h: httpx.AsyncClient, url: str) -> bool:
    return (await metric(h, url, "graduate_router_spool_records") == 0
            and await metric(h, url, "graduate_router_capture_queue_depth") == 0)


async def test_capture_client_stopped_during_an_outage_hands_over_to_the_next_run(own_broker, namespace, tmp_path):
    from services.capture import CaptureClient

    kafka = own_broker.settings
    await ensure_topics(kafka, namespace, specs=(CALLS_CAPTURED,))
    settings = CaptureSettings(spool_dir=tmp_path / "spool", unhealthy_after_s=0.5, reconnect_backoff_s=0.3,
                               stop_timeout_s=1.0)

    def fields(i: int) -> dict:
        return dict(call_id=f"stop-{i:03d}", task=TASK, input=f"text {i}", output_raw="card_arrival", latency_ms=1.0)

    first = CaptureClient(kafka, name="outage", namespace=namespace, settings=settings)
    await first.astart()
    for i in range(5):
        first.record_call(**fields(i))
    await until(lambda: _delivered(first, 5), 30, "the first records to be acknowledged")
    own_broker.run("stop")
    for i in range(5, 25):
        first.record_call(**fields(i))
        await asyncio.sleep(0.05)
    started = time.monotonic()
    await first.astop()  # Kafka is down: bounded wait, then everything unacknowledged is spooled
    assert time.monotonic() - started < 15
    assert first.stats().spool_records == 20

    own_broker.run("start")
    second = CaptureClient(kafka, name="outage", namespace=namespace, settings=settings)
    await second.astart()
    await until(lambda: _spool_empty(second), 60, "the spool to be replayed")
    await second.astop()
    records = await read_topic(kafka, topic_name(CALLS_CAPTURED, namespace), min_count=25, timeout=30)
    assert sorted(r.key.decode() for r in records) == [f"stop-{i:03d}" for i in range(25)]


async def _delivered(client, n: int) -> bool:
    return client.stats().delivered >= n


async def _spool_empty(client) -> bool:
    return client.stats().spool_records == 0
