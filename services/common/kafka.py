"""Kafka plumbing shared by services: topic ensure/drift, producers, dead letters."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from services.common.catalog import CATALOG, DEADLETTER, TopicSpec, topic_name
from services.common.codec import Codec
from services.common.contracts import DeadLetter
from services.common.settings import KafkaSettings, size_limits

MAX_DEADLETTER_PAYLOAD = 256 * 1024


@dataclass
class TopicState:
    name: str
    spec: TopicSpec
    exists: bool = False
    partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    created: bool = False
    drift: list[str] = field(default_factory=list)
    replicas: int | None = None  # the fewest replicas of any of its partitions


def find_drift(spec: TopicSpec, partitions: int, config: dict[str, str], max_message_bytes: int | None = None
               ) -> list[str]:
    """What differs between a topic on the broker and its catalog entry (pure; unit-tested); with
    `max_message_bytes`, a topic limit below what our producers may send is drift too."""
    drift = []
    have_max = config.get("max.message.bytes")
    if max_message_bytes is not None and have_max is not None and have_max.isdigit() \
            and int(have_max) <= size_limits(max_message_bytes).request_bytes:
        drift.append(f"max.message.bytes={have_max}, at most what producers send "
                     f"({size_limits(max_message_bytes).request_bytes}); want {max_message_bytes}")
    if partitions != spec.partitions:
        drift.append(f"partitions {partitions}, catalog says {spec.partitions}")
    for key, want in spec.config().items():
        have = config.get(key)
        if have is not None and have != want:
            drift.append(f"{key}={have}, catalog says {want}")
    return drift


def topic_config(spec: TopicSpec, kafka: KafkaSettings) -> dict[str, str]:
    """The configs a topic is created with: the catalog's, the one size limit, min.insync.replicas."""
    return {**spec.config(), **replica_config(kafka), "max.message.bytes": str(kafka.max_message_bytes)}


def replica_config(kafka: KafkaSettings) -> dict[str, str]:
    """min.insync.replicas for a topic graduate creates, when the settings name one."""
    return {} if kafka.min_insync_replicas is None else {"min.insync.replicas": str(kafka.min_insync_replicas)}


class ReplicationError(RuntimeError):
    """The cluster cannot hold the replicas the settings ask for."""


def replication_problem(brokers: int, kafka: KafkaSettings) -> str | None:
    """Why a cluster of `brokers` cannot take topics with the configured replicas (pure), or None."""
    if brokers < kafka.replication_factor:
        return (f"GRADUATE_KAFKA_REPLICATION_FACTOR={kafka.replication_factor} but the cluster at "
                f"{kafka.bootstrap} has {brokers} broker{'s' if brokers != 1 else ''}: topics cannot be created "
                f"with that many replicas (lower the factor or add brokers)")
    return None


async def check_replication(admin: AIOKafkaAdminClient, kafka: KafkaSettings) -> None:
    """Raise ReplicationError when the cluster has fewer brokers than the replication factor."""
    cluster = await admin.describe_cluster()
    problem = replication_problem(len(cluster.get("brokers") or ()), kafka)
    if problem:
        raise ReplicationError(problem)


async def describe_topics(admin: AIOKafkaAdminClient, specs: tuple[TopicSpec, ...], namespace: str,
                          max_message_bytes: int | None = None) -> list[TopicState]:
    names = {topic_name(s, namespace): s for s in specs}
    existing = set(await admin.list_topics())
    states = [TopicState(n, s, exists=n in existing) for n, s in names.items()]
    present = [s for s in states if s.exists]
    if present:
        described = await admin.describe_topics([s.name for s in present])
        parts = {d["topic"]: len(d["partitions"]) for d in described}
        replicas = {d["topic"]: min((len(p["replicas"]) for p in d["partitions"]), default=0) for d in described}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in present])
        configs: dict[str, dict[str, str]] = {}
        for resp in responses:
            for res in resp.resources:
                # (error_code, error_message, resource_type, resource_name, config_entries)
                configs[res[3]] = {e[0]: e[1] for e in res[4]}
        for s in present:
            s.partitions = parts.get(s.name)
            s.config = configs.get(s.name, {})
            s.replicas = replicas.get(s.name)
            s.drift = find_drift(s.spec, s.partitions or 0, s.config, max_message_bytes)
    return states


async def wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Block until every partition of `names` has a leader, so the first produce does not bounce."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            described = await admin.describe_topics(names)
            if len(described) == len(names) and all(
                    d["error_code"] == 0 and d["partitions"] and all(p["leader"] >= 0 for p in d["partitions"])
                    for d in described):
                return
        except Exception:
            pass  # metadata not there yet
        if loop.time() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_s} s: {names}")
        await asyncio.sleep(0.1)


async def ensure_topics(kafka: KafkaSettings, namespace: str = "", specs: tuple[TopicSpec, ...] = CATALOG,
                        replication: int | None = None) -> list[TopicState]:
    """Create missing topics with the catalog's configs and the configured replicas; report drift on
    existing ones (fewer replicas than the factor included). Raises ReplicationError when a topic is
    missing and the cluster has fewer live brokers than the factor: when every topic exists, a start
    goes on with a broker down (that is what the replicas are for)."""
    admin = AIOKafkaAdminClient(**kafka.client_config(), request_timeout_ms=30000)
    await admin.start()
    try:
        states = await describe_topics(admin, specs, namespace, kafka.max_message_bytes)
        for s in states:
            if s.replicas is not None and s.replicas < kafka.replication_factor:
                s.drift.append(f"{s.replicas} replicas, GRADUATE_KAFKA_REPLICATION_FACTOR={kafka.replication_factor}")
        missing = [s for s in states if not s.exists]
        if missing:
            await check_replication(admin, kafka)
            new = [NewTopic(s.name, s.spec.partitions, replication or max(kafka.replication_factor, s.spec.replication),
                            topic_configs=topic_config(s.spec, kafka)) for s in missing]
            try:
                await admin.create_topics(new, timeout_ms=30000)
            except TopicAlreadyExistsError:
                pass  # a concurrent ensure won the race; the re-describe below tells the truth
            await wait_for_leaders(admin, [s.name for s in missing])
            created = {s.name for s in missing}
            states = await describe_topics(admin, specs, namespace, kafka.max_message_bytes)
            for s in states:
                s.created = s.name in created
        return states
    finally:
        await admin.close()


async def delete_topics(kafka: KafkaSettings, names: list[str] | None = None, *, namespace: str = "") -> None:
    """Delete `names` that exist; with `namespace` instead, every topic of that namespace (the catalog's
    and the workers' own state topics) — a test's or a bench's clean-up."""
    if names is None and not namespace:
        raise ValueError("delete_topics needs names or a non-empty namespace")
    admin = AIOKafkaAdminClient(**kafka.client_config())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = names if names is not None else [t for t in existing if t.startswith(namespace)]
        doomed = [n for n in wanted if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def make_producer(kafka: KafkaSettings, **overrides) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all), sending records up to
    the size every topic accepts (`KafkaSettings.limits`)."""
    cfg = dict(kafka.client_config(), enable_idempotence=True, acks="all", linger_ms=5,
               request_timeout_ms=15000, client_id=kafka.client_id, max_request_size=kafka.limits.request_bytes)
    cfg.update(overrides)
    return AIOKafkaProducer(**cfg)


def dead_letter(source_topic: str, partition: int, offset: int, processor: str, error: BaseException,
                key: bytes | None, payload: bytes | None, max_payload: int = MAX_DEADLETTER_PAYLOAD) -> DeadLetter:
    """Wrap a message that could not be processed, with the reason (pure). The payload is cut to
    `max_payload` bytes, so the letter of a record too large to forward can itself be sent."""
    payload = payload or b""
    return DeadLetter(source_topic=source_topic, partition=partition, offset=offset, processor=processor,
                      reason=str(error)[:2000] or type(error).__name__, error_type=type(error).__name__,
                      key=key, payload=payload[:max_payload], payload_truncated=len(payload) > max_payload)


def dead_letter_payload_limit(kafka: KafkaSettings) -> int:
    """The most payload bytes a dead letter carries: well inside what a producer may send."""
    return min(MAX_DEADLETTER_PAYLOAD, kafka.limits.request_bytes // 2)


async def send_dead_letter(producer: AIOKafkaProducer, codec: Codec, namespace: str, letter: DeadLetter) -> None:
    await producer.send_and_wait(
        topic_name(DEADLETTER, namespace), codec.encode(letter), key=letter.key,
        headers=[("reason", letter.reason[:500].encode()), ("processor", letter.processor.encode())])
