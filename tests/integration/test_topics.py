"""The catalog against the real broker: ensure creates, is idempotent, reports drift; every schema travels."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.common.catalog import CATALOG, LABELS_REVIEWED, ROUTING_DECISIONS, topic_name
from services.common.kafka import ReplicationError, delete_topics, describe_topics, ensure_topics
from tests.support import produce, read_topic
from tests.unit.test_contracts import EXAMPLES

pytestmark = pytest.mark.integration


async def test_ensure_creates_with_catalog_configs_and_is_idempotent(kafka_settings, namespace):
    try:
        first = await ensure_topics(kafka_settings, namespace)
        assert all(s.created and not s.drift for s in first)
        admin = AIOKafkaAdminClient(**kafka_settings.client_config())
        await admin.start()
        try:
            states = await describe_topics(admin, CATALOG, namespace)
        finally:
            await admin.close()
        for s in states:
            assert s.partitions == s.spec.partitions, s.name
            assert s.config["cleanup.policy"] == s.spec.cleanup_policy, s.name
            assert s.config["max.message.bytes"] == str(kafka_settings.max_message_bytes), s.name
            if s.spec.retention_ms:
                assert s.config["retention.ms"] == str(s.spec.retention_ms), s.name
        second = await ensure_topics(kafka_settings, namespace)
        assert not any(s.created for s in second) and not any(s.drift for s in second)
    finally:
        await delete_topics(kafka_settings, [topic_name(s, namespace) for s in CATALOG])


async def test_drift_reported_for_a_routing_topic_that_is_not_compacted(kafka_settings, namespace):
    name = topic_name(ROUTING_DECISIONS, namespace)
    admin = AIOKafkaAdminClient(**kafka_settings.client_config())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "delete"})])
    finally:
        await admin.close()
    try:
        states = await ensure_topics(kafka_settings, namespace, specs=(ROUTING_DECISIONS,))
        assert states[0].drift == ["cleanup.policy=delete, catalog says compact"]
        env = {"GRADUATE_TOPIC_NAMESPACE": namespace, "GRADUATE_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
               "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([sys.executable, "-m", "services.cli", "topics", "ensure"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "drift" in proc.stdout
    finally:
        await delete_topics(kafka_settings, [topic_name(s, namespace) for s in CATALOG])


async def test_every_schema_travels_through_the_broker(kafka_settings, codec, topics):
    topic = topics[LABELS_REVIEWED.name]  # any topic carries bytes; the codec carries the type
    await produce(kafka_settings, codec, topic, [(f"k{i}", rec) for i, rec in enumerate(EXAMPLES)])
    records = await read_topic(kafka_settings, topic, min_count=len(EXAMPLES))
    assert len(records) == len(EXAMPLES)
    got = {r.key.decode(): r.value for r in records}
    for i, rec in enumerate(EXAMPLES):
        assert codec.decode(got[f"k{i}"], type(rec)) == rec


async def test_a_replication_factor_above_the_brokers_is_refused_before_anything_is_created(kafka_settings, namespace):
    three = kafka_settings.model_copy(update={"replication_factor": 3, "min_insync_replicas": 2})
    with pytest.raises(ReplicationError, match="REPLICATION_FACTOR=3 but the cluster .* has 1 broker"):
        await ensure_topics(three, namespace)
    admin = AIOKafkaAdminClient(**kafka_settings.client_config())
    await admin.start()
    try:
        assert not any(s.exists for s in await describe_topics(admin, CATALOG, namespace))
    finally:
        await admin.close()
    env = {"GRADUATE_TOPIC_NAMESPACE": namespace, "GRADUATE_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
           "GRADUATE_KAFKA_REPLICATION_FACTOR": "3", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "services.cli", "topics", "ensure"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "has 1 broker" in proc.stderr, proc.stdout + proc.stderr


async def test_a_worker_refuses_to_start_on_a_cluster_smaller_than_its_replication_factor(kafka_settings, namespace,
                                                                                       tmp_path):
    from tests.integration.test_workers import start_worker, stop_worker

    worker = start_worker("profiler", namespace, kafka_settings, tmp_path, GRADUATE_KAFKA_REPLICATION_FACTOR="3",
                          GRADUATE_KAFKA_MIN_INSYNC_REPLICAS="2")
    try:
        rc = worker.proc.wait(120)
    finally:
        stop_worker(worker)
    assert rc != 0
    assert "graduate worker profiler: GRADUATE_KAFKA_REPLICATION_FACTOR=3 but the cluster" in worker.tail()


async def test_a_worker_refuses_to_start_when_its_state_topic_has_fewer_partitions_than_the_source(
        kafka_settings, namespace, tmp_path):
    from services.common.batch import state_topic
    from services.common.catalog import CALLS_CAPTURED
    from tests.integration.test_workers import start_worker, stop_worker

    state = state_topic("curator", namespace, CALLS_CAPTURED)
    admin = AIOKafkaAdminClient(**kafka_settings.client_config())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(state, 4, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    try:
        worker = start_worker("curator", namespace, kafka_settings, tmp_path)
        try:
            rc = worker.proc.wait(120)
        finally:
            stop_worker(worker)
        assert rc != 0
        assert f"{state} has 4 partitions, {topic_name(CALLS_CAPTURED, namespace)} has 12" in worker.tail()
    finally:
        await delete_topics(kafka_settings, [state] + [topic_name(s, namespace) for s in CATALOG])


async def test_delete_topics_by_namespace_takes_that_namespace_only(kafka_settings, namespace):
    other = namespace.rstrip(".") + "x."  # shares the prefix up to the dot, so the dot must matter
    names = [f"{namespace}a", f"{namespace}b-state", f"{other}a"]
    admin = AIOKafkaAdminClient(**kafka_settings.client_config())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
        for _ in range(50):  # creation reaches the broker's metadata a moment later too: CI once listed
            if set(names) <= set(await admin.list_topics()):  # none of them, deleted nothing, and the
                break  # assertion below read that as the other namespace's topic deleted
            await asyncio.sleep(0.2)
        assert set(names) <= set(await admin.list_topics())
        await delete_topics(kafka_settings, namespace=namespace)
        for _ in range(50):  # deletion reaches the metadata a moment later
            left = set(await admin.list_topics())
            if f"{namespace}a" not in left and f"{namespace}b-state" not in left:
                break
            await asyncio.sleep(0.2)
        assert f"{namespace}a" not in left and f"{namespace}b-state" not in left
        assert f"{other}a" in left
    finally:
        await admin.close()
        await delete_topics(kafka_settings, [f"{other}a"])
    with pytest.raises(ValueError, match="non-empty namespace"):
        await delete_topics(kafka_settings, namespace="")
