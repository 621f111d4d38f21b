"""Replication against a real three-broker KRaft cluster (deploy/local/kafka/cluster.sh, the same
Maven jars as the single broker): graduate's topics get replication factor 3 and
min.insync.replicas 2 from the settings, a curator writes its state through it with acks=all, one
broker's loss changes nothing (writes and the state restore go on), and two brokers' loss makes
acks=all writes fail with an error instead of being acknowledged.

The cluster is the test's own (ports picked free, data under tmp_path) and is stopped afterwards;
the test skips, saying why, only when the cluster cannot be started here (no Java, no jars).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from services.common.catalog import CALLS_CAPTURED, CATALOG, topic_name
from services.common.batch import state_topic
from services.common.codec import Codec
from services.common.kafka import ensure_topics, make_producer
from services.common.settings import REPO_ROOT, KafkaSettings
from tests.integration.test_curator_scaling import assert_state_counts_each_call_once
from tests.integration.test_workers import BANKING, banking77_calls, metric, start_worker, stop_worker, wait_for
from tests.support import produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLUSTER = REPO_ROOT / "deploy" / "local" / "kafka" / "cluster.sh"
CALLS = 1200


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    def __init__(self, directory, ports: list[int], controller_port: int) -> None:
        self.directory = directory
        self.env = {"GRADUATE_KAFKA_CLUSTER_DIR": str(directory),
                    "GRADUATE_KAFKA_CLUSTER_PORTS": " ".join(map(str, ports)),
                    "GRADUATE_KAFKA_CLUSTER_CONTROLLER_PORT": str(controller_port)}
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in ports)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(CLUSTER), *args], env=dict(os.environ, **self.env), capture_output=True,
                              text=True, timeout=180)


@pytest.fixture
def cluster(tmp_path):
    ports = free_ports(4)
    c = Cluster(tmp_path / "cluster", ports[:3], ports[3])
    started = c.run("start")
    try:
        if started.returncode != 0:
            pytest.skip(f"a three-broker cluster cannot be started here: {started.stderr.strip()[-600:]}")
        yield c
    finally:
        stopped = c.run("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert c.run("status").stdout.count("not running") == 3, "a broker of the test's cluster is still running"


async def replicas_and_min_insync(kafka: KafkaSettings, names: list[str]) -> dict[str, tuple[set[int], str | None]]:
    """topic -> ({replica count of each partition}, its min.insync.replicas) as the cluster says."""
    admin = AIOKafkaAdminClient(**kafka.client_config())
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    insync = {res[3]: dict((e[0], e[1]) for e in res[4]).get("min.insync.replicas")
              for resp in responses for res in resp.resources}
    return {d["topic"]: ({len(p["replicas"]) for p in d["partitions"]}, insync.get(d["topic"])) for d in described}


async def wait_for_isr(kafka: KafkaSettings, topic: str, partition: int, want: list[int], timeout: float = 60) -> None:
    """Poll until the partition's in-sync replicas are `want` (the controller fenced the others)."""
    admin = AIOKafkaAdminClient(**kafka.client_config())
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                (described,) = await admin.describe_topics([topic])
                isr = next(sorted(p["isr"]) for p in described["partitions"] if p["partition"] == partition)
            except KafkaError as exc:  # asked a broker that just died: ask again
                isr = exc
            if isr == want:
                return
            assert asyncio.get_running_loop().time() < deadline, f"{topic}-{partition} ISR still {isr}, want {want}"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def test_replicas_hold_with_one_broker_down_and_writes_fail_with_two(cluster, namespace, tmp_path):
    kafka = KafkaSettings(bootstrap=cluster.bootstrap, replication_factor=3, min_insync_replicas=2)
    codec = Codec()
    replica_env = {"GRADUATE_KAFKA_REPLICATION_FACTOR": "3", "GRADUATE_KAFKA_MIN_INSYNC_REPLICAS": "2"}
    captured = topic_name(CALLS_CAPTURED, namespace)

    # graduate's own topic creation, then what the cluster actually holds
    await ensure_topics(kafka, namespace)
    catalog = [topic_name(s, namespace) for s in CATALOG]
    assert await replicas_and_min_insync(kafka, catalog) == {n: ({3}, "2") for n in catalog}

    replay = banking77_calls(CALLS, prefix="c")
    first, second = replay.calls[:CALLS // 2], replay.calls[CALLS // 2:]
    worker = start_worker("curator", namespace, kafka, tmp_path, **replica_env)
    port = worker.port

    def counted() -> int:
        return worker.get("/curator/stats/").get(BANKING, {}).get("calls", 0)

    try:
        await wait_for(lambda: worker.get("/curator/stats/") is not None, 120, "the curator serving", worker)
        state = state_topic("curator", namespace, CALLS_CAPTURED)
        assert await replicas_and_min_insync(kafka, [state]) == {state: ({3}, "2")}, "the worker's own state topic"

        await produce(kafka, codec, captured, [(c.call_id, c) for c in first])  # acks=all
        await wait_for(lambda: counted() == len(first), 120, "the first half counted", worker)

        assert cluster.run("kill", "3").returncode == 0
        await produce(kafka, codec, captured, [(c.call_id, c) for c in second])  # 2 of 3 in sync: accepted
        await wait_for(lambda: counted() == CALLS, 120, "every call counted with broker 3 down", worker)
        await assert_state_counts_each_call_once(kafka, namespace, replay.calls)

        # the state restores from the replicas left: a killed curator comes back with every count
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()
        worker = start_worker("curator", namespace, kafka, tmp_path, port=port, **replica_env)
        await wait_for(lambda: counted() == CALLS, 120, "the state restored with broker 3 down", worker)
        processed = metric(worker.get("/metrics"), "graduate_processor_processed_total", processor="curator") or 0.0
        assert processed == 0, f"the restarted curator re-read {processed} calls instead of restoring its state"
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()

    # two brokers down: one replica in sync < min.insync.replicas=2, so the leader refuses acks=all
    # writes (NOT_ENOUGH_REPLICAS, in its log). aiokafka retries that error: an idempotent producer
    # (make_producer's) for ever, without idempotence until request_timeout_ms, then it raises.
    # The metadata can show ISR [1] a moment before the leader's partition applies it (KRaft publishes the
    # metadata cache first): a write in that moment is appended, waits for broker 2's ack and times out
    # (REQUEST_TIMED_OUT, as one CI run saw). So write until the leader refuses one outright; none may be
    # acknowledged meanwhile.
    assert cluster.run("kill", "2").returncode == 0
    await wait_for_isr(kafka, captured, 0, [1])
    refused = f"NotEnoughReplicasException: The size of the current ISR : 1 is insufficient to satisfy the " \
              f"min.isr requirement of 2 for partition {captured}-0"
    log = cluster.directory / "node1" / "logs" / "server.log"
    producer = make_producer(kafka, enable_idempotence=False, request_timeout_ms=5000)
    await producer.start()
    failures: list[KafkaError] = []
    try:
        deadline = asyncio.get_running_loop().time() + 90
        while not failures or refused not in log.read_text():
            assert asyncio.get_running_loop().time() < deadline, f"no write refused as {refused!r}; failures {failures}"
            with pytest.raises(KafkaError) as failed:
                await asyncio.wait_for(producer.send_and_wait(captured, b"never acknowledged", key=b"x", partition=0), 60)
            failures.append(failed.value)
    finally:
        await asyncio.wait_for(producer.stop(), 30)
    print(f"acks=all with two brokers down, {len(failures)} write(s), none acknowledged: {failures!r}")
