"""The faust plumbing every stream processor uses (profiler, curator, shadow, judge, controller).

Why it exists: each processor should be "decode, call one plain function, send" — this module
owns the rest (app settings that faust needs to be safe, raw-bytes topics with our Avro codec,
dead letters, metrics, lag), so every processor behaves the same under poison and restarts.

Processors with per-partition state (the profiler, the curator) read in batches with
`services.common.batch.BatchProcessor` instead of a faust agent (faust's per-event cost, measured
in docs/DESIGN.md); the app, its web pages, probes and timers are still made here.

Usage of the agents (services/<name>/app.py holds the app alone; see services/shadow/app.py)::

    from services.common import catalog
    from services.common.contracts import CapturedCall, ShadowResult
    from services.common.settings import load_settings
    from services.common.streams import (Emit, Item, Meta, WorkerSettings, each_batch, each_event, make_app,
                                         source_topic)

    settings = load_settings(WorkerSettings)
    app = make_app("shadow", settings)                      # faust.App "graduate-shadow" (+ namespace)
    captured = source_topic(app, catalog.CALLS_CAPTURED, settings.topic_namespace)

    @each_event(app, captured, CapturedCall)                  # one agent, concurrency=1
    def shadow_one(call: CapturedCall, meta: Meta) -> list[Emit]:  # sync or async; None = nothing
        return [Emit(catalog.SHADOW_RESULTS, call.call_id, ShadowResult(...))]

    @each_batch(app, captured, CapturedCall, size=32, within=0.2)  # batches of <= 32, waiting <= 0.2 s
    async def shadow_many(items: list[Item[CapturedCall]]) -> list[Emit]:
        ...  # items[i].value, items[i].meta (topic, partition, offset, key, timestamp)

Contract of the wrappers:
- the value is decoded with `Codec` into the given contract; a `CodecError` or ANY exception
  of the handler sends a `DeadLetter` (reason, source topic, partition, offset; the reason and
  processor also as headers) to `catalog.DEADLETTER` and the worker goes on with the next event.
  In a batch, undecodable items are dead-lettered alone; when the batch handler raises, every
  item of that batch is dead-lettered with the reason (retry inside the handler if it should not).
  When sending a batch's results fails (a record over the producer's max.request.size, say), each
  event of the batch is handled and sent again alone (`handle_alone`), so only the events whose
  own results cannot be sent are dead-lettered, each with its own reason.
- what the handler returns (an iterable of `Emit`, or None) is encoded and sent; only then is
  the event (or the whole batch) acknowledged, and faust flushes the producer before it commits
  offsets, so a result (or dead letter) is written before its source is committed. An event
  whose handler is cancelled (SIGTERM, rebalance) is never acknowledged: it is read again.
  faust's own `async for`, `take()` and `take_events()` ack in a `finally` that also runs on
  that cancellation, committing an event whose effect was never sent; hence the `noack()`
  stream and `noack_take()` below, and `stream_wait_empty=False` (with it a stop waits for
  every unacked event, so a handler waiting for something that never comes hangs SIGTERM).
  Processing is at-least-once: make effects idempotent by call_id. Do not keep read-modify-write
  state in an agent guarded by "last applied offset": during a rebalance faust can hand an agent
  an offset past unprocessed ones and seek back later (faust-streaming#216); state goes in a
  BatchProcessor, which owns its consumer and writes state and offset in one record. Nor in a
  faust table: its recovery skipped source events after a SIGKILL in our kill tests.
- probes (services/common/probes.py): GET /readyz (200 once an assignment is held and every
  state the app registered with `health(app).require(...)` is restored; batch processors register
  theirs) and GET /livez (503 when records wait and nothing was handled for
  GRADUATE_WORKER_STALL_AFTER_S); both answer JSON with the reasons.
- metrics (prometheus_client, GET /metrics on the worker's web port):
  graduate_processor_processed_total{processor}, graduate_processor_failed_total{processor},
  graduate_processor_deadletter_total{processor}, graduate_processor_lag{processor,topic},
  graduate_processor_processing_seconds{processor} (per event; per batch for batch handlers).

Also here: `internal_topic(app, suffix, config=...)` (an app-owned raw topic),
`replay_topic(kafka, codec, spec, namespace, Model)` (re-exported from services/common/reader.py,
the one topic reader: a catalog topic read up to its end or given offsets: snapshots, reports),
`plumbing(app)` (processor name, settings, codec) and `WorkerSettings` (GRADUATE_WORKER_*).

Workers: `graduate worker NAME [--web-port P] [--datadir D] [--instance-id I]` (services/workers.py)
imports services/NAME/app.py, creates the app's topics if missing (`ensure_app_topics`) and
runs its `app` with faust.Worker; SIGTERM stops it cleanly. Several workers on
one host need their own web port and datadir. Tests run workers as subprocesses
(`.venv/bin/graduate worker NAME --web-port P --datadir D` with env GRADUATE_TOPIC_NAMESPACE and a
short GRADUATE_WORKER_SESSION_TIMEOUT_S; see tests/integration/test_workers.py). Create topics (`graduate topics ensure`) before
any worker starts: faust never consumes a source topic that was missing at its start.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Generic, Iterable, Optional, TypeVar, Union

import faust
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import Field

from services.common import catalog
from services.common.catalog import TopicSpec, topic_name
from services.common.codec import Codec, CodecError
from services.common.contracts import Contract, DeadLetter
from services.common.kafka import dead_letter, dead_letter_payload_limit
from services.common.probes import Health
from services.common.quick import quick_init
from services.common.settings import CommonSettings, KafkaSettings

log = logging.getLogger(__name__)
T = TypeVar("T", bound=Contract)

PROCESSED = Counter("graduate_processor_processed", "events handled without error", ["processor"])
FAILED = Counter("graduate_processor_failed", "events that could not be decoded or processed", ["processor"])
DEADLETTERED = Counter("graduate_processor_deadletter", "dead letters sent", ["processor"])
LAG = Gauge("graduate_processor_lag", "messages behind the end of the assigned partitions",
            ["processor", "topic"])
PROCESSING_SECONDS = Histogram("graduate_processor_processing_seconds",
                               "handler time per event (per batch for batch handlers)", ["processor"],
                               buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class WorkerSettings(CommonSettings):
    """What a faust worker needs besides Kafka (env GRADUATE_WORKER_*)."""

    worker_web_port: int = Field(6066, description="faust web server port (/metrics, views)")
    worker_web_host: str = "127.0.0.1"
    worker_datadir: Optional[Path] = Field(None, description="default: <var_dir>/faust/<app id>-<web port>")
    worker_instance_id: Optional[str] = Field(None, description="static membership id; default <app>-<host>-<port>")
    worker_session_timeout_s: float = Field(30.0, description="how long a silent static member keeps its partitions")
    worker_heartbeat_interval_s: float = 3.0
    worker_log_level: str = "info"
    worker_lag_interval_s: float = 5.0
    worker_commit_interval_s: float = 2.8
    worker_stall_after_s: float = Field(300.0, description="/livez fails when records wait and nothing was "
                                        "handled for this long")


@quick_init  # made per record: services/common/quick.py
@dataclass(frozen=True)
class Meta:
    """Where an event came from."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes] = None
    timestamp: Optional[float] = None
    headers: tuple = ()


@quick_init
@dataclass(frozen=True)
class Item(Generic[T]):
    value: T
    meta: Meta


@quick_init  # made per record by the curator (a dataset record per input touched)
@dataclass(frozen=True)
class Emit:
    """A result to send: `value` encoded with the codec to `spec` under the app's namespace
    (or to a faust topic object of the app's own, e.g. an internal re-keying topic)."""

    spec: Any
    key: Union[str, bytes, None]
    value: Union[Contract, bytes]  # bytes: already encoded (Codec.encode_fields), sent as they are
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: Optional[int] = None  # where the key's partition is chosen, not hashed (batch processors only)

    def key_bytes(self) -> Optional[bytes]:
        return self.key.encode() if isinstance(self.key, str) else self.key


@dataclass
class Plumbing:
    """What make_app attaches to the app (`plumbing(app)`): name, settings, codec, topics."""

    processor: str
    settings: WorkerSettings
    codec: Codec
    sources: set[str] = field(default_factory=set)
    topics: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, TopicSpec] = field(default_factory=dict)
    internal: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)  # name -> (partitions, config)
    processors: list = field(default_factory=list)  # services.common.batch.BatchProcessor
    health: Health = field(default_factory=lambda: Health(stall_after_s=300.0))

    def topic(self, app: faust.App, spec: TopicSpec) -> Any:
        name = topic_name(spec, self.settings.topic_namespace)
        self.specs[spec.name] = spec
        if name not in self.topics:
            self.topics[name] = app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                                          value_serializer="raw", partitions=spec.partitions, internal=False)
        return self.topics[name]


def app_id(name: str, namespace: str = "") -> str:
    """The faust app id, which is also the consumer group and the prefix of faust's own topics."""
    return f"{namespace}graduate-{name}"


def broker_url(kafka: KafkaSettings) -> str:
    return "kafka://" + ";".join(hp.strip() for hp in kafka.bootstrap.split(","))


def broker_credentials(kafka: KafkaSettings) -> Optional[faust.types.auth.CredentialsT]:
    """faust credentials for the KafkaSettings' SASL/SSL (None for PLAINTEXT)."""
    cfg = kafka.client_config()  # validates SASL settings
    ssl_context = cfg.get("ssl_context")
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=cfg["sasl_plain_username"], password=cfg["sasl_plain_password"],
                                     mechanism=cfg["sasl_mechanism"], ssl_context=ssl_context)
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def plumbing(app: faust.App) -> Plumbing:
    return app._graduate  # type: ignore[attr-defined]


def health(app: faust.App) -> Health:
    """The app's probe state: `health(app).require("routing", follower.ready.is_set)`."""
    return plumbing(app).health


def make_app(name: str, settings: WorkerSettings, *, partitions: int = catalog.CALLS_CAPTURED.partitions,
             codec: Codec | None = None) -> faust.App:
    """A faust app set up the way faust is safe to run (see shared/notes/faust.md)."""
    ident = app_id(name, settings.topic_namespace)
    datadir = settings.worker_datadir or settings.var_dir / "faust" / f"{ident}-{settings.worker_web_port}"
    instance = settings.worker_instance_id or f"{ident}-{socket.gethostname()}-{settings.worker_web_port}"
    session = settings.worker_session_timeout_s
    app = faust.App(
        ident,
        broker=broker_url(settings.kafka),
        broker_credentials=broker_credentials(settings.kafka),
        broker_client_id=f"{settings.kafka.client_id}-{name}",
        store="memory://",
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=instance,
        broker_session_timeout=session,
        broker_request_timeout=max(90.0, session + 10.0),
        broker_heartbeat_interval=settings.worker_heartbeat_interval_s,
        broker_max_poll_records=500,
        producer_max_request_size=settings.kafka.limits.request_bytes,
        broker_commit_interval=settings.worker_commit_interval_s,
        stream_wait_empty=False,  # the agents ack only what they finished; waiting could hang a stop
        web_enabled=True,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        datadir=str(datadir),
    )
    app._graduate = Plumbing(name, settings, codec or Codec(settings.schema_registry_url),  # type: ignore[attr-defined]
                             health=Health(stall_after_s=settings.worker_stall_after_s))

    @app.page("/metrics")
    async def metrics(web, request):  # noqa: ARG001
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/readyz")
    async def readyz(web, request):  # noqa: ARG001
        reasons = health(app).readiness()
        return web.json({"ready": not reasons, "reasons": reasons, "partitions": len(assigned_partitions(app))},
                        status=503 if reasons else 200)

    @app.page("/livez")
    async def livez(web, request):  # noqa: ARG001
        stalled = health(app).liveness(sum(consumer_lag(app).values()))
        return web.json({"live": stalled is None, "reason": stalled}, status=503 if stalled else 200)

    @app.on_partitions_revoked.connect
    async def assignment_lost(sender, revoked, **kwargs) -> None:  # noqa: ARG001
        health(app).assignment_held = False

    @app.on_partitions_assigned.connect
    async def assignment_held(sender, assigned, **kwargs) -> None:  # noqa: ARG001
        health(app).assignment_held = True

    @app.timer(settings.worker_lag_interval_s)
    async def measure_lag() -> None:
        lag = consumer_lag(app)
        for topic, behind in lag.items():
            LAG.labels(name, topic).set(behind)
        if not any(lag.values()):
            health(app).progressed()  # caught up: nothing to handle is progress too

    return app


def consumer_lag(app: faust.App) -> dict[str, int]:
    """Records between this worker's committed offsets and the end, per source topic (the partitions
    it owns): the group's lag as the broker sees it. Records already fetched into faust's buffers
    but not handled count, so a stuck handler shows as lag (and fails /livez)."""
    plumb = plumbing(app)
    if plumb.processors:
        return {p.topic: p.lag() for p in plumb.processors}
    consumer = app.consumer
    lag = {t: 0 for t in plumb.sources}
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet
        return lag
    for tp in assigned:
        if tp.topic not in lag:
            continue
        end = consumer.highwater(tp)
        if end is None:
            continue
        committed = consumer._committed_offset.get(tp)
        lag[tp.topic] += max(0, end - (committed or 0))
    return lag


def assigned_partitions(app: faust.App) -> set:
    """Every partition of a source topic this worker owns now (empty before the first assignment)."""
    plumb = plumbing(app)
    if plumb.processors:
        return {(p.topic, n) for p in plumb.processors for n in p.states}
    sources = plumb.sources
    try:
        return {tp for tp in app.consumer.assignment() if tp.topic in sources}
    except Exception:  # not started yet
        return set()


def active_partitions(app: faust.App, topic: str) -> set[int]:
    """Partitions of `topic` this worker owns now. A table's local view holds more (standby copies,
    partitions revoked earlier): filter by these when showing per-worker state."""
    try:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}
    except Exception:  # not started yet
        return set()


def source_topic(app: faust.App, spec: TopicSpec, namespace: str) -> Any:
    """A catalog topic as a faust topic of raw bytes (our codec decodes); counted for lag."""
    plumb = plumbing(app)
    if namespace != plumb.settings.topic_namespace:
        raise ValueError(f"namespace {namespace!r} differs from the app's {plumb.settings.topic_namespace!r}")
    topic = plumb.topic(app, spec)
    plumb.sources.add(topic_name(spec, namespace))
    return topic


def internal_topic(app: faust.App, suffix: str, *, partitions: int = catalog.CALLS_CAPTURED.partitions,
                   config: dict[str, str] | None = None) -> Any:
    """A raw-bytes topic of the app's own (e.g. re-keying by input), named `<app id>-<suffix>`;
    `config` are its topic configs (e.g. `{"cleanup.policy": "compact"}` for a state topic).

    `ensure_app_topics` creates it before the worker starts (faust's own declare comes after the
    consumer subscribed, and the topic would then be ignored until a metadata refresh)."""
    plumb = plumbing(app)
    name = f"{app.conf.id}-{suffix}"
    plumb.internal[name] = (partitions, dict(config or {}))
    if name not in plumb.topics:
        plumb.topics[name] = app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                                       value_serializer="raw", partitions=partitions, internal=True,
                                       config=dict(config or {}))
    return plumb.topics[name]


async def ensure_app_topics(app: faust.App) -> None:
    """Create the app's catalog topics, the dead-letter topic and its internal topics if missing, with
    GRADUATE_KAFKA_REPLICATION_FACTOR replicas and GRADUATE_KAFKA_MIN_INSYNC_REPLICAS; exit when the
    cluster has fewer brokers than that factor, or when a topic accepts smaller records than this
    worker's producer may send, or when a batch processor's source has more partitions than its
    state topic (all checked at start)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka import ReplicationError, ensure_topics

    plumb = plumbing(app)
    plumb.topic(app, catalog.DEADLETTER)
    kafka = plumb.settings.kafka
    try:
        states = await ensure_topics(kafka, plumb.settings.topic_namespace, tuple(plumb.specs.values()))
    except ReplicationError as exc:
        raise SystemExit(f"graduate worker {plumb.processor}: {exc}") from None
    too_small = [f"{s.name}: {d}" for s in states for d in s.drift if d.startswith("max.message.bytes")]
    if too_small:  # this worker could send records its topics refuse: lost sends, not dead letters
        raise SystemExit("size limits disagree with the broker (GRADUATE_KAFKA_MAX_MESSAGE_BYTES="
                         f"{kafka.max_message_bytes}):\n  " + "\n  ".join(too_small))
    if not plumb.internal:
        return
    admin = AIOKafkaAdminClient(**kafka.client_config(), request_timeout_ms=30000)
    await admin.start()
    try:
        await create_internal_topics(admin, plumb)
        if plumb.processors:
            from services.common.batch import state_partition_problems

            names = [n for p in plumb.processors for n in (p.topic, p.state_topic, *p.aligned)]
            counts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)
                      if t.get("error_code") == 0}
            problems = state_partition_problems(counts, plumb.processors)
            if problems:
                raise SystemExit(f"graduate worker {plumb.processor}:\n  " + "\n  ".join(problems))
    finally:
        await admin.close()


async def create_internal_topics(admin: Any, plumb: Plumbing) -> None:
    """Create the app's own topics that are missing, with the configured replicas."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from services.common.kafka import replica_config, wait_for_leaders

    kafka = plumb.settings.kafka
    existing = set(await admin.list_topics())
    new = [NewTopic(n, p, kafka.replication_factor,
                    topic_configs={"max.message.bytes": str(kafka.max_message_bytes), **replica_config(kafka), **cfg})
           for n, (p, cfg) in plumb.internal.items() if n not in existing]
    if new:
        try:
            await admin.create_topics(new, timeout_ms=30000)
        except TopicAlreadyExistsError:
            pass
        await wait_for_leaders(admin, [t.name for t in new])


def meta_of(event: Any) -> Meta:
    m = event.message
    return Meta(m.topic, m.partition, m.offset, m.key, m.timestamp, tuple(m.headers or ()))


Model = Union[type[T], tuple[type[Contract], ...]]


def decode(codec: Codec, model: Model, raw: Any, *, revalidate: bool = True) -> Any:
    """Decode into `model`, or into whichever of a tuple of contracts the message was written as
    (`revalidate`: see Codec.decode)."""
    if not isinstance(model, tuple):
        return codec.decode(raw, model, revalidate=revalidate)
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(raw).__name__}")
    writer, _ = codec.writer_schema(bytes(raw))
    for m in model:
        if codec.schema_for(m).full_name == writer.full_name:
            return codec.decode(raw, m, revalidate=revalidate)
    raise CodecError(f"expected one of {', '.join(codec.schema_for(m).full_name for m in model)}, "
                     f"message is {writer.full_name}")


async def call_handler(handler: Callable[..., Any], *args: Any) -> list[Emit]:
    """Call a sync or async handler; normalise what it returns to a list of Emit."""
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    if result is None:
        return []
    if isinstance(result, Emit):
        return [result]
    emits = list(result)
    for e in emits:
        if not isinstance(e, Emit):
            raise TypeError(f"handler returned {type(e).__name__}, expected Emit")
    return emits


async def send_emits(app: faust.App, emits: Iterable[Emit]) -> None:
    plumb = plumbing(app)
    for e in emits:
        topic = plumb.topic(app, e.spec) if isinstance(e.spec, TopicSpec) else e.spec
        await topic.send(key=e.key_bytes(), value=plumb.codec.encode(e.value),
                                            headers=list(e.headers) or None)


async def send_dead_letter(app: faust.App, meta: Meta, raw: Any, error: BaseException) -> None:
    """Route what could not be processed to the dead-letter topic; never raises."""
    plumb = plumbing(app)
    payload = bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else repr(raw).encode()
    letter: DeadLetter = dead_letter(meta.topic, meta.partition, meta.offset, plumb.processor, error,
                                     meta.key, payload, dead_letter_payload_limit(plumb.settings.kafka))
    FAILED.labels(plumb.processor).inc()
    log.warning("%s: dead letter for %s[%d]@%d: %s", plumb.processor, meta.topic, meta.partition,
                meta.offset, letter.reason)
    try:
        await plumb.topic(app, catalog.DEADLETTER).send(
            key=meta.key, value=plumb.codec.encode(letter),
            headers=[("reason", letter.reason[:500].encode()), ("processor", plumb.processor.encode())])
        DEADLETTERED.labels(plumb.processor).inc()
    except Exception:  # a failing dead-letter send must not stop the worker
        log.exception("%s: could not send the dead letter for %s[%d]@%d", plumb.processor,
                      meta.topic, meta.partition, meta.offset)


def refusal(app: faust.App, item: Item, error: BaseException) -> Emit:
    """A dead letter for one item of a batch that its handler refuses (invalid, not admitted), as an
    Emit the handler returns with its other results, so the rest of the batch goes on."""
    plumb = plumbing(app)
    meta = item.meta
    letter = dead_letter(meta.topic, meta.partition, meta.offset, plumb.processor, error, meta.key,
                         plumb.codec.encode(item.value), dead_letter_payload_limit(plumb.settings.kafka))
    FAILED.labels(plumb.processor).inc()
    return Emit(catalog.DEADLETTER, meta.key, letter,
                headers=(("reason", letter.reason[:500].encode()), ("processor", plumb.processor.encode())))


@dataclass(frozen=True)
class Outcome:
    """What handling one event gave: results to send, or the error that sends it to the dead letters."""

    emits: list[Emit] = field(default_factory=list)
    error: Optional[BaseException] = None


async def process_one(codec: Codec, model: Model, handler: Callable[..., Any], meta: Meta, raw: Any) -> Outcome:
    """Decode and handle one event; never raises (except cancellation)."""
    try:
        value = decode(codec, model, raw)
        return Outcome(await call_handler(handler, value, meta))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Outcome(error=exc)


async def process_batch(codec: Codec, model: Model, handler: Callable[..., Any],
                        batch: list[tuple[Meta, Any]]) -> tuple[list[Emit], list[tuple[Meta, Any, BaseException]]]:
    """Decode a batch and handle what decoded; returns the results and the (meta, raw, error) to
    dead-letter. When the handler raises, every decoded item fails with that error."""
    items: list[Item[T]] = []
    raws: list[Any] = []
    failures: list[tuple[Meta, Any, BaseException]] = []
    for meta, raw in batch:
        try:
            items.append(Item(decode(codec, model, raw), meta))
            raws.append(raw)
        except Exception as exc:
            failures.append((meta, raw, exc))
    if not items:
        return [], failures
    try:
        return await call_handler(handler, items), failures
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return [], failures + [(item.meta, raw, exc) for item, raw in zip(items, raws)]


async def deliver(app: faust.App, outcome: Outcome, meta: Meta, raw: Any) -> None:
    """Send an outcome's results, or its dead letter; a failing send dead-letters the event too."""
    label = plumbing(app).processor
    if outcome.error is None:
        try:
            await send_emits(app, outcome.emits)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = Outcome(error=exc)
        else:
            PROCESSED.labels(label).inc()
            return
    await send_dead_letter(app, meta, raw, outcome.error)


async def handle_alone(app: faust.App, model: Model, handler: Callable[..., Any],
                       batch: list[tuple[Meta, Any]]) -> list[tuple[Meta, Any, BaseException]]:
    """Handle and send each event of a batch as a batch of its own; returns those that failed, each
    with its own error. After a failed batch send, so one record the producer or the broker refuses
    (too large, say) costs only itself. Results of the batch that were sent before the failure are
    sent again: effects are idempotent by call_id (at-least-once)."""
    codec = plumbing(app).codec
    failures: list[tuple[Meta, Any, BaseException]] = []
    for meta, raw in batch:
        emits, failed = await process_batch(codec, model, handler, [(meta, raw)])
        if not failed:
            try:
                await send_emits(app, emits)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed = [(meta, raw, exc)]
        failures += failed
    return failures


Handler = Callable[[T, Meta], Union[Iterable[Emit], Emit, None, Awaitable[Any]]]
BatchHandler = Callable[[list[Item[T]]], Union[Iterable[Emit], Emit, None, Awaitable[Any]]]


def each_event(app: faust.App, topic: Any, model: Model, *, name: str | None = None) -> Callable[[Handler], Handler]:
    """Decorate `handler(value, meta) -> Emit | list[Emit] | None` into a faust agent (concurrency 1).

    `model` is a contract, or a tuple of contracts when the topic carries several kinds.
    The event is acked once its results (or its dead letter) were sent, never when cancelled."""

    def decorate(handler: Handler) -> Handler:
        plumb = plumbing(app)
        label = plumb.processor

        async def agent(stream):
            manual = stream.noack()
            async for event in manual.events():
                meta = meta_of(event)
                started = time.perf_counter()
                outcome = await process_one(plumb.codec, model, handler, meta, event.value)
                await deliver(app, outcome, meta, event.value)
                PROCESSING_SECONDS.labels(label).observe(time.perf_counter() - started)
                plumb.health.progressed()
                await manual.ack(event)  # deliberately not in a finally: a cancelled event stays unacked

        app.agent(topic, name=name or f"{label}.{handler.__name__}", concurrency=1)(agent)
        return handler

    return decorate


def each_batch(app: faust.App, topic: Any, model: Model, *, size: int, within: float,
               name: str | None = None) -> Callable[[BatchHandler], BatchHandler]:
    """Decorate `handler(items: list[Item]) -> Emits` into an agent fed micro-batches of at most
    `size` events, waiting at most `within` seconds for a batch to fill (`noack_take`).

    The batch is acked once its results and dead letters were sent, never when cancelled."""

    def decorate(handler: BatchHandler) -> BatchHandler:
        plumb = plumbing(app)
        label = plumb.processor

        async def agent(stream):
            async for events in stream.noack_take(size, within=within):  # events, despite its name
                started = time.perf_counter()
                batch = [(meta_of(e), e.value) for e in events]
                emits, failures = await process_batch(plumb.codec, model, handler, batch)
                if emits:
                    try:
                        await send_emits(app, emits)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # which item's result failed is not known: each alone
                        log.warning("%s: a send of a batch of %d failed (%s); handling each event alone",
                                    label, len(batch), exc)
                        failed = {(m.topic, m.partition, m.offset) for m, _, _ in failures}
                        failures += await handle_alone(app, model, handler, [
                            (m, raw) for m, raw in batch if (m.topic, m.partition, m.offset) not in failed])
                for meta, raw, exc in failures:
                    await send_dead_letter(app, meta, raw, exc)
                PROCESSED.labels(label).inc(len(batch) - len(failures))
                PROCESSING_SECONDS.labels(label).observe(time.perf_counter() - started)
                plumb.health.progressed()
                for event in events:  # only now, and not in a finally: a cancelled batch stays unacked
                    await stream.ack(event)

        app.agent(topic, name=name or f"{label}.{handler.__name__}", concurrency=1)(agent)
        return handler

    return decorate


# The direct read of a catalog topic (snapshots, candidates, review queue) lives in
# services/common/reader.py; re-exported here for the callers that import it from the plumbing.
from services.common.reader import Replay, replay_topic  # noqa: E402,F401
