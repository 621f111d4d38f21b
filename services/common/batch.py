"""The batch processor loop: how a worker with per-partition state (the profiler, the curator) reads.

Why not a faust agent: faust's per-event machinery cost 122 µs an event against 12.7 µs for a raw
read and Avro decode (issue 16, py-spy), so a faust agent cannot reach half the raw rate whatever
its handler does. Here a plain aiokafka consumer-group member does, per `getmany` batch:

1. decode each partition's records (undecodable ones are dead-lettered alone);
2. call ONE plain function, `step(state, items) -> emits`, per partition: it folds the items into
   that partition's state (a bounded aggregate) and returns what to send (dead letters of refused
   records, say). It must be all-or-nothing: when it raises, its items are dead-lettered and the
   partition's state goes back to the last one written;
3. send the emits and await them once (those bound for a chosen partition, like the curator's
   dataset records, in one record batch per topic partition: `send_many`);
4. at most every `checkpoint_s` (and when partitions are revoked): write each changed partition's
   state WITH the offset it has reached to a compacted state topic, await, then commit the offsets.

State and position travel in one record, so they can never disagree: after a crash or a
rebalance the owner reads the state record back and resumes at its `next_offset` (not at the
group's committed offset, which is committed afterwards for lag and tooling). Records below it are
skipped, so a replay never counts twice; outputs of the replayed span are sent again
(at-least-once, idempotent by call_id downstream).

The state topic (`<app id>-<source>-state`) has as many partitions as the source and source
partition p's record goes to partition p under key "p": its LAST record is the state, so a
restore reads one record per partition, whatever the volume.

The faust app stays the worker runtime (web pages, probes, timers); an app with a BatchProcessor
runs faust in producer-only mode (no faust consumer, no agents).
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Iterable, Optional, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from services.common import catalog
from services.common.catalog import TopicSpec, topic_name
from services.common.heap import HeapRelease
from services.common.kafka import dead_letter, dead_letter_payload_limit, make_producer
from services.common.reader import TopicReader
from services.common.record_batches import Record, send_batched
from services.common.settings import RECORD_OVERHEAD_BYTES
from services.common.streams import (DEADLETTERED, FAILED, PROCESSED, PROCESSING_SECONDS, Emit, Item, Meta, Model,
                                     app_id, decode, plumbing, source_topic)

log = logging.getLogger(__name__)
S = TypeVar("S")

MAX_BATCH_BYTES = 256 * 1024  # a record batch of a partition's emits (send_many)
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}


@dataclass(frozen=True)
class Fold(Generic[S]):
    """A processor's per-partition state: `new()` a fresh one, `dump` to JSON, `load` from JSON."""

    new: Callable[[], S]
    dump: Callable[[S], Any]
    load: Callable[[Any], S]


@dataclass
class PartitionState(Generic[S]):
    value: S
    next_offset: Optional[int]  # where the partition resumes; None: at the beginning
    saved: Any = None  # the JSON last written (what a failed step goes back to)
    dirty: bool = False


class RecordTooLarge(ValueError):
    """A result larger than the worker's producer may send."""


def state_topic(app_name: str, namespace: str, source: TopicSpec) -> str:
    """The state topic of an app's processor of `source`: `<app id>-<source>-state`."""
    return f"{app_id(app_name, namespace)}-{source.name.removeprefix('graduate.')}-state"


def state_record(next_offset: Optional[int], state_json: Any) -> bytes:
    return json.dumps({"next_offset": next_offset, "state": state_json}, separators=(",", ":")).encode()


def read_state_record(raw: Optional[bytes]) -> tuple[Optional[int], Any]:
    """(next_offset, state JSON) of a state record; (None, None) for none."""
    if raw is None:
        return None, None
    data = json.loads(raw)
    return data.get("next_offset"), data.get("state")


def split_decoded(codec, model: Model, records: Iterable[Any]) -> tuple[list[Item], list[tuple[Meta, Any, Exception]]]:
    """Decode aiokafka records into items; the undecodable come back apart with their error.
    Avro's reader checks the types, so the contract is not validated a second time where that
    would change nothing (`Codec.trusted_decoder`: `Codec.decode(revalidate=False)` bound per model)."""
    items, failures = [], []
    read = codec.trusted_decoder(model) if not isinstance(model, tuple) else \
        (lambda raw: decode(codec, model, raw, revalidate=False))
    for r in records:
        meta = Meta(r.topic, r.partition, r.offset, r.key, r.timestamp / 1000.0, tuple(r.headers or ()))
        try:
            items.append(Item(read(r.value), meta))
        except Exception as exc:  # noqa: BLE001 - a bad record is dead-lettered, never crashes the loop
            failures.append((meta, r.value, exc))
    return items, failures


class BatchProcessor(Generic[S]):
    """One source topic of an app, consumed in batches into per-partition state (see the module doc).

    `processor.partitions()` is the state of the partitions this worker owns now ({partition: state}).
    """

    def __init__(self, app: Any, source: TopicSpec, model: Model, step: Callable[[S, list[Item]], Any],
                 fold: Fold[S], *, max_records: int = 2000, checkpoint_s: float | None = None,
                 on_restore: Callable[[set[int]], Awaitable[None]] | None = None,
                 aligned: tuple[str, ...] = ()) -> None:
        plumb = plumbing(app)
        self.app, self.plumb, self.model, self.step, self.fold = app, plumb, model, step, fold
        settings = plumb.settings
        source_topic(app, source, settings.topic_namespace)  # created at start, counted for lag
        self.topic = topic_name(source, settings.topic_namespace)
        self.short = source.name.removeprefix("graduate.")
        self.state_topic = state_topic(plumb.processor, settings.topic_namespace, source)
        plumb.internal[self.state_topic] = (source.partitions, dict(STATE_TOPIC_CONFIG))
        self.max_records = max_records
        self.on_restore = on_restore  # after the states are read back: rebuild what derives from them
        self.aligned = aligned  # topics written at partition p for source partition p (checked at start)
        self.checkpoint_s = settings.worker_commit_interval_s if checkpoint_s is None else checkpoint_s
        self.states: dict[int, PartitionState[S]] = {}
        self.ready = asyncio.Event()
        self.lock = asyncio.Lock()
        self.consumer: Optional[AIOKafkaConsumer] = None
        self.producer = None
        self.checkpointed_at = 0.0
        self.in_flight = False  # a batch folded into the states whose sends are not all awaited yet
        self._record_limit: Optional[int] = None
        plumb.health.require(f"state {self.short}", self.ready.is_set)
        plumb.processors.append(self)
        app.producer_only = True  # faust runs the web server and the timers; this loop consumes
        app.task(self.run)

    # -- what the app's pages read -----------------------------------------------------------------
    def partitions(self) -> dict[int, S]:
        return {p: st.value for p, st in sorted(self.states.items())}

    def lag(self) -> int:
        if self.consumer is None:
            return 0
        behind = 0
        for p, st in list(self.states.items()):
            end = self.consumer.highwater(TopicPartition(self.topic, p))
            if end is not None:
                behind += max(0, end - (st.next_offset or 0))
        return behind

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self) -> None:
        settings = self.plumb.settings
        kafka = settings.kafka
        session_ms = int(settings.worker_session_timeout_s * 1000)
        instance = settings.worker_instance_id or f"{self.app.conf.id}-{settings.worker_web_port}"
        # Record batches up to 256 KiB (aiokafka's default is 16 KiB: more batches per partition, each
        # `send_batch` waiting until the one before it is drained; bench/results/send.json)
        self.producer = make_producer(kafka, client_id=f"{kafka.client_id}-{self.plumb.processor}",
                                      max_batch_size=min(MAX_BATCH_BYTES, kafka.limits.request_bytes))
        self.consumer = AIOKafkaConsumer(
            **kafka.client_config(), group_id=self.app.conf.id, group_instance_id=f"{instance}-{self.short}",
            client_id=f"{kafka.client_id}-{self.plumb.processor}", enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=self.max_records, session_timeout_ms=session_ms,
            heartbeat_interval_ms=int(settings.worker_heartbeat_interval_s * 1000),
            request_timeout_ms=max(40000, session_ms + 10000), rebalance_timeout_ms=max(60000, session_ms))
        await self.producer.start()
        await self.consumer.start()
        # The worker's start-up objects (faust, pydantic, the schemas) would otherwise be scanned by
        # every full collection while batches allocate; frozen, they are not.
        # Batches allocate in bursts of thousands of short-lived objects: collect the young generation
        # every 50 k allocations rather than every 700 (the default), and the old ones rarely.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        release_heap = HeapRelease()
        try:
            self.consumer.subscribe([self.topic], listener=_Rebalance(self))
            delay = 0.5
            while True:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=self.max_records)
                try:
                    async with self.lock:
                        await self.handle(batch)
                        if time.monotonic() - self.checkpointed_at >= self.checkpoint_s:
                            await self.checkpoint()
                        release_heap(idle=not batch)  # services/common/heap.py
                    delay = 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a send failed (Kafka away): resume from the written state
                    log.warning("%s: batch failed (%s); resuming from the written state in %.1f s",
                                self.plumb.processor, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 15.0)
                    async with self.lock:
                        await self.restore(set(self.states))
                        self.in_flight = False
        finally:
            await self.stop()

    async def stop(self) -> None:
        try:
            if self.states and not self.in_flight:
                async with self.lock:
                    await asyncio.wait_for(self.checkpoint(), 10)
        except Exception as exc:  # noqa: BLE001 - the next owner replays from the last written state
            log.warning("%s: no final checkpoint (%s)", self.plumb.processor, exc)
        for client in (self.consumer, self.producer):
            try:
                await client.stop()
            except Exception:  # noqa: BLE001
                pass

    async def handle(self, batch: dict) -> None:
        started = time.perf_counter()
        outbox: list[tuple[Emit, Optional[Meta]]] = []
        handled = failed = 0
        self.in_flight = True
        for tp, records in batch.items():
            st = self.states.get(tp.partition)
            if st is None:
                continue  # fetched before a revoke
            fresh = [r for r in records if st.next_offset is None or r.offset >= st.next_offset]
            if not fresh:
                continue
            items, failures = split_decoded(self.plumb.codec, self.model, fresh)
            emits: list[Emit] = []
            if items:
                try:
                    emits = list(self.step(st.value, items) or ())
                except Exception as exc:  # noqa: BLE001 - all of this partition's batch is dead-lettered
                    st.value = self.fold.new() if st.saved is None else self.fold.load(st.saved)
                    failures += [(i.meta, self.plumb.codec.encode(i.value), exc) for i in items]
            st.next_offset = fresh[-1].offset + 1
            st.dirty = True
            handled += len(fresh) - len(failures)
            failed += len(failures)
            last = fresh[-1]
            source = Meta(last.topic, last.partition, last.offset, last.key, last.timestamp / 1000.0)
            outbox += [(e, source) for e in emits]
            outbox += [(self.letter(meta, raw, exc), None) for meta, raw, exc in failures]
        if outbox:
            await asyncio.gather(*await self.send_many(outbox))
        self.in_flight = False
        label = self.plumb.processor
        if handled:
            PROCESSED.labels(label).inc(handled)
        if failed:
            DEADLETTERED.labels(label).inc(failed)
        if handled or failed:
            PROCESSING_SECONDS.labels(label).observe(time.perf_counter() - started)
        if handled or failed or not self.lag():
            self.plumb.health.progressed()

    async def send_many(self, outbox: list[tuple[Emit, Optional[Meta]]]) -> list[asyncio.Future]:
        """Send a batch's emits (each with its source, see `send`); returns the futures to await.
        Those bound for a chosen partition go in one record batch per topic partition, in order
        (services/common/record_batches.py); the rest (dead letters, partitioned by key) and any
        record over the producer's limit (dead-lettered alone) are sent one by one."""
        futures: list[asyncio.Future] = []
        batched: list[Record] = []
        limit = self.record_limit()
        for e, source in outbox:
            if e.partition is None or not isinstance(e.value, bytes):
                futures.append(await self.send(e, source))
                continue
            key, headers = e.key_bytes(), list(e.headers)
            if source is not None and self.size_of(e.value, key, headers) > limit:
                futures.append(await self.send(e, source))  # dead-lettered alone
                continue
            batched.append((self.topic_of(e), e.partition, key, e.value, headers))
        return futures + await send_batched(self.producer, batched)

    def topic_of(self, e: Emit) -> str:
        return topic_name(e.spec, self.plumb.settings.topic_namespace) if isinstance(e.spec, TopicSpec) else e.spec

    def record_limit(self) -> int:
        """The largest record this worker's producer may send (the settings are frozen: computed once)."""
        if self._record_limit is None:
            self._record_limit = self.plumb.settings.kafka.limits.request_bytes - RECORD_OVERHEAD_BYTES
        return self._record_limit

    @staticmethod
    def size_of(value: bytes, key: Optional[bytes], headers: Iterable[tuple[str, bytes]]) -> int:
        return len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers)

    async def send(self, e: Emit, source: Optional[Meta] = None) -> asyncio.Future:
        """Send one emit. One larger than the producer may send would fail the whole batch, again at
        every retry: it is dead-lettered instead (with `source`, the batch's last record), alone."""
        topic = self.topic_of(e)
        value = e.value if isinstance(e.value, bytes) else self.plumb.codec.encode(e.value)
        size = self.size_of(value, e.key_bytes(), e.headers)
        limit = self.record_limit()
        if source is not None and size > limit:
            DEADLETTERED.labels(self.plumb.processor).inc()
            return await self.send(self.letter(source, value, RecordTooLarge(
                f"{topic} record (key {e.key_bytes()!r}) is {size} bytes, over the {limit} a producer of this "
                f"worker may send (GRADUATE_KAFKA_MAX_MESSAGE_BYTES): not sent, dead-lettered")))
        return await self.producer.send(topic, key=e.key_bytes(), value=value, headers=list(e.headers) or None,
                                        partition=e.partition)

    def letter(self, meta: Meta, raw: Any, error: BaseException) -> Emit:
        payload = bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else repr(raw).encode()
        letter = dead_letter(meta.topic, meta.partition, meta.offset, self.plumb.processor, error, meta.key, payload,
                             dead_letter_payload_limit(self.plumb.settings.kafka))
        FAILED.labels(self.plumb.processor).inc()
        log.warning("%s: dead letter for %s[%d]@%d: %s", self.plumb.processor, meta.topic, meta.partition,
                    meta.offset, letter.reason)
        return Emit(catalog.DEADLETTER, meta.key, letter,
                    headers=(("reason", letter.reason[:500].encode()), ("processor", self.plumb.processor.encode())))

    async def checkpoint(self) -> None:
        """Write every changed partition's state with its offset, await them, then commit."""
        dirty = {p: st for p, st in self.states.items() if st.dirty}
        self.checkpointed_at = time.monotonic()
        if not dirty:
            return
        futures = []
        for p, st in dirty.items():
            st.saved = self.fold.dump(st.value)
            futures.append(await self.producer.send(self.state_topic, key=str(p).encode(),
                                                    value=state_record(st.next_offset, st.saved), partition=p))
        await asyncio.gather(*futures)
        for st in dirty.values():
            st.dirty = False
        offsets = {TopicPartition(self.topic, p): st.next_offset for p, st in dirty.items() if st.next_offset}
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - the state record is the position; the commit serves lag
            log.info("%s: commit of %d partitions failed (%s)", self.plumb.processor, len(offsets), exc)

    async def restore(self, partitions: set[int]) -> None:
        """Read the last state record of each partition and seek the source there."""
        delay = 0.5
        while True:
            try:
                saved = await self.read_states(partitions)
                if self.on_restore is not None:
                    await self.on_restore(partitions)
                break
            except Exception as exc:  # noqa: BLE001 - Kafka away: keep trying, nothing is handled meanwhile
                log.warning("%s: cannot read %s (%s); retrying in %.1f s", self.plumb.processor, self.state_topic,
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
        for p in partitions:
            next_offset, state_json = saved.get(p, (None, None))
            value = self.fold.new() if state_json is None else self.fold.load(state_json)
            self.states[p] = PartitionState(value, next_offset, state_json)
            tp = TopicPartition(self.topic, p)
            if next_offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, next_offset)
        log.info("%s: restored %d partitions of %s", self.plumb.processor, len(partitions), self.topic)

    async def read_states(self, partitions: set[int]) -> dict[int, tuple[Optional[int], Any]]:
        """The last record of each state partition: one fetch each, whatever the volume."""
        if not partitions:
            return {}
        out: dict[int, tuple[Optional[int], Any]] = {}
        async with TopicReader(self.plumb.settings.kafka, self.state_topic, partitions=partitions, last=1,
                               missing_ok=False) as reader:
            async for records in reader:
                out[records[-1].partition] = read_state_record(records[-1].value)
        return out


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, processor: BatchProcessor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked) -> None:
        proc = self.processor
        async with proc.lock:  # the batch in flight finishes first; what it reached is written
            try:
                await proc.checkpoint()
            except Exception as exc:  # noqa: BLE001 - the next owner replays from the last written state
                log.warning("%s: no checkpoint at revoke (%s)", proc.plumb.processor, exc)
            for tp in revoked:
                proc.states.pop(tp.partition, None)
        proc.ready.clear()
        proc.plumb.health.assignment_held = False

    async def on_partitions_assigned(self, assigned) -> None:
        proc = self.processor
        async with proc.lock:
            await proc.restore({tp.partition for tp in assigned if tp.topic == proc.topic})
        proc.ready.set()
        proc.plumb.health.assignment_held = True


def state_partition_problems(partitions: dict[str, int], processors: Iterable[BatchProcessor]) -> list[str]:
    """Processors whose source has more partitions than their state topic or a topic they write per
    source partition (`aligned`) (pure): a record per source partition would have nowhere to go.
    `partitions`: topic -> partition count."""
    return [f"{t} has {partitions.get(t, 0)} partitions, {p.topic} has {partitions[p.topic]}: add partitions "
            f"to {t} first"
            for p in processors for t in (p.state_topic, *p.aligned)
            if partitions.get(p.topic, 0) > partitions.get(t, 0)]
