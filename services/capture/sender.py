"""The capture client's sender: the loop inside its thread that moves records from the queue to the
producer, or to the spool while Kafka is unreachable, and replays the spool when Kafka is back.

Delivery rules (why a call_id lands once, see client.py): a record handed to the producer is never
spooled while the producer lives; only definite failures are; at stop, what is still
unacknowledged is spooled for the next run (the documented residual window).
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from services.capture.spool import SpoolPosition, SpoolRecord
from services.common.catalog import DEADLETTER, topic_name
from services.common.contracts import DeadLetter

if TYPE_CHECKING:
    from services.capture.client import CaptureClient

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sent:
    record: SpoolRecord
    fut: asyncio.Future
    sent_at: float
    replay_pos: SpoolPosition | None = None  # set for a record replayed from the spool


class Sender:
    """The loop inside the capture thread: queue → producer, or → spool; spool → producer when healthy."""

    def __init__(self, client: CaptureClient) -> None:
        self.c = client
        self.s = client.settings
        self.producer = None
        self.pending: collections.deque[Sent] = collections.deque()
        self.next_connect = 0.0
        self.next_probe = 0.0
        self.last_send_error = float("-inf")
        self.replaying: list[Sent] = []
        self.replay_open = 0  # replayed records not yet settled
        self.was_healthy = True

    # -- health --------------------------------------------------------------------------------
    def healthy(self, now: float) -> bool:
        if self.producer is None or now - self.last_send_error < self.s.reconnect_backoff_s:
            return False
        return not self.pending or now - self.pending[0].sent_at < self.s.unhealthy_after_s

    def note_health(self, now: float) -> None:
        healthy = self.healthy(now)
        self.c._stats.state = "connected" if healthy else ("connecting" if self.producer is None else "spooling")
        if healthy != self.was_healthy:
            self.was_healthy = healthy
            if healthy:
                log.info("capture %s: Kafka reachable again; replaying %d spooled record(s)",
                         self.c.name, self.c.spool.pending_records)
            else:
                log.warning("capture %s: Kafka unreachable (%s); spooling to %s", self.c.name,
                            "no producer" if self.producer is None else "unacknowledged records",
                            self.c.spool.folder)

    # -- main loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        stopping = self.c._stopping
        try:
            while not stopping.is_set():
                await self.connect()
                batch = await self.take()
                self.reap()
                await self.route(batch)
                await self.replay()
                self.note_health(time.monotonic())
            with self.c._lock:  # no more hand-offs; later records go straight to the spool
                self.c._accepting = False
            await self.route(self.c._take())
            await self.settle()
        finally:
            await self.close_producer()

    async def connect(self) -> None:
        now = time.monotonic()
        if self.producer is not None or now < self.next_connect:
            return
        self.next_connect = now + self.s.reconnect_backoff_s
        producer = self.c._producer_factory(self.c.kafka)
        try:
            await asyncio.wait_for(producer.start(), timeout=max(5.0, self.s.reconnect_backoff_s))
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            log.debug("capture %s: producer cannot start: %s", self.c.name, exc)
            await _quietly_stop(producer)
            return
        self.producer = producer

    async def take(self) -> list:
        """The next batch: what waits in the outbox after at most linger_s (sooner when a batch is full).
        The callers never wake this loop for a single record: it polls, so a request pays no socket write."""
        wake = self.c._wake
        if len(self.c._outbox) < self.s.batch_size:
            try:
                async with asyncio.timeout(self.s.linger_s):
                    await wake.wait()
            except TimeoutError:
                pass
        wake.clear()
        return self.c._take(self.s.batch_size)

    async def route(self, items: list) -> None:
        if not items:
            return
        records = [r for r in (self.c._encode(item) for item in items) if r is not None]
        now = time.monotonic()
        for i, record in enumerate(records):
            direct = (self.healthy(now) and self.c.spool.pending_records == 0
                      and len(self.pending) < self.s.max_in_flight)
            if not direct or not await self.send(record, None):
                self.c._spool(records[i:i + 1], reason="kafka_unreachable")

    async def send(self, record: SpoolRecord, replay_pos: SpoolPosition | None) -> bool:
        """Hand one record to the producer; False when it definitely was not taken."""
        try:
            async with asyncio.timeout(self.s.send_block_s):  # no task per record, unlike wait_for on 3.11
                fut = await self.producer.send(record.topic, record.value, key=record.key,
                                               headers=self.headers_for(record))
        except (KafkaError, TimeoutError) as exc:
            self.last_send_error = time.monotonic()
            log.debug("capture %s: send failed before the producer took the record: %r", self.c.name, exc)
            return False
        self.pending.append(Sent(record, fut, time.monotonic(), replay_pos))
        self.c._stats.in_flight = len(self.pending)
        return True

    def headers_for(self, record: SpoolRecord) -> list[tuple[str, bytes]] | None:
        """A dead letter carries its reason and processor as headers too, as the stream processors'
        do (derived from the payload, so a spooled dead letter gets them on replay)."""
        if record.topic != topic_name(DEADLETTER, self.c.namespace):
            return None
        try:
            letter = self.c.codec.decode(record.value, DeadLetter)
        except Exception:  # not ours to judge here: sent as it is
            return None
        return [("reason", letter.reason[:500].encode()), ("processor", letter.processor.encode())]

    def reap(self) -> None:
        """Settle acknowledged (or failed) records at the head of the in-flight queue, in send order."""
        failed: list[SpoolRecord] = []
        while self.pending and self.pending[0].fut.done():
            sent = self.pending.popleft()
            ok = self.settle_one(sent, failed)
            if sent.replay_pos is not None:
                self.replay_open -= 1
                self.c._stats.replayed += ok
            else:
                self.c._stats.delivered += ok
        self.c._stats.in_flight = len(self.pending)
        # Failed records go (back) on the spool's tail before the cursor moves past them.
        self.c._spool(failed, reason="delivery_failed")
        if self.replaying and self.replay_open == 0:
            self.c.spool.commit(self.replaying[-1].replay_pos)
            self.replaying = []

    def settle_one(self, sent: Sent, failed: list[SpoolRecord]) -> bool:
        """True when Kafka acknowledged the record; a definite failure joins `failed`, a rejection is dropped."""
        error = sent.fut.exception() if not sent.fut.cancelled() else asyncio.CancelledError()
        if error is None:
            return True
        if isinstance(error, asyncio.CancelledError) or getattr(error, "retriable", False):
            failed.append(sent.record)  # expired before it was sent: definitely not written
            self.last_send_error = time.monotonic()
        else:
            self.c._drop(1, f"rejected:{type(error).__name__}")
            log.error("capture %s: Kafka rejected a record for %s (key %r): %r; dropped",
                      self.c.name, sent.record.topic, sent.record.key, error)
        return False

    async def replay(self) -> None:
        """Send the spool's head: a batch when healthy, one probe record at a time when not."""
        if self.producer is None or self.replaying or not self.c.spool.pending_records:
            return
        now = time.monotonic()
        if self.healthy(now):
            limit = self.s.replay_batch
        elif not self.pending and now >= self.next_probe:
            limit = 1
            self.next_probe = now + self.s.reconnect_backoff_s
        else:
            return
        for record, pos in await asyncio.to_thread(self.c.spool.read, limit):
            if not await self.send(record, pos):
                break
            self.replaying.append(self.pending[-1])
            self.replay_open += 1

    async def settle(self) -> None:
        """At stop: wait (bounded) for acknowledgements, then spool what is still unacknowledged."""
        deadline = time.monotonic() + self.s.stop_timeout_s
        while time.monotonic() < deadline:
            self.reap()
            if self.healthy(time.monotonic()) and self.c.spool.pending_records:
                await self.replay()
            elif not self.pending:
                break
            await asyncio.sleep(0.02)
        failed: list[SpoolRecord] = []
        unacknowledged = [s.record for s in self.pending if s.replay_pos is None and not s.fut.done()]
        for sent in self.pending:
            if sent.replay_pos is None and sent.fut.done():
                self.settle_one(sent, failed)
        # Of a replay batch, the settled prefix is committed (its failures re-spooled); the rest
        # stays in the spool for the next run.
        prefix = list(itertools.takewhile(lambda sent: sent.fut.done(), self.replaying))
        unsettled = {id(sent) for sent in self.pending}
        for sent in prefix:
            if id(sent) in unsettled:
                self.settle_one(sent, failed)
        left = len(self.replaying) - len(prefix)
        if unacknowledged or left:
            log.warning("capture %s: stopping with %d unacknowledged record(s) spooled and %d replayed record(s) "
                        "left in the spool; any of them that Kafka did write will appear twice", self.c.name,
                        len(unacknowledged), left)
        self.c._spool(failed + unacknowledged, reason="unacknowledged_at_stop")
        if prefix:
            self.c.spool.commit(prefix[-1].replay_pos)
        for sent in self.pending:  # the producer fails these when it stops; their outcome is settled here
            sent.fut.add_done_callback(_consume_outcome)
        self.pending.clear()
        self.replaying = []
        self.replay_open = 0

    async def close_producer(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            await _quietly_stop(producer)


def _consume_outcome(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


async def _quietly_stop(producer: Any, timeout: float = 5.0) -> None:
    """Stop a producer even when Kafka is gone: aiokafka's stop waits for every pending batch."""
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:  # aiokafka 0.13 internals; pending batches are already spooled
        batches = [b for queue in accumulator._batches.values() for b in queue] + list(accumulator._pending_batches)
        accumulator.fail_all(KafkaError("capture client stopping"))
        for batch in batches:  # nobody awaits these any more: retrieve, so asyncio does not warn
            for fut in (batch.future, getattr(batch, "_drain_waiter", None)):
                if fut is not None and fut.done():
                    _consume_outcome(fut)
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except Exception as exc:
        log.debug("producer stop: %r", exc)
