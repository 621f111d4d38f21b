"""The page's Kafka side: follow the topics it shows into a `ReviewView`, publish reviews.

Why a follower rather than the curator's `review_queue()` per request: that function replays
the captured topic (90 days) on every call; the page instead replays each followed topic once
at start (no consumer group: every replica sees everything) and then applies new records live,
so a queue or task page is a read of memory. `ready` is set once every partition is read to the
end it had at start; pages say "replaying" until then. A topic missing at start is looked for
again every few seconds. Undecodable records are counted and logged, not dead-lettered: this is
a reader, and the processors that own those topics already dead-letter what they cannot read.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.common.catalog import LABELS_REVIEWED, TopicSpec, topic_name
from services.common.codec import Codec, CodecError
from services.common.contracts import ReviewedLabel
from services.common.kafka import make_producer
from services.common.settings import KafkaSettings
from services.review.view import ReviewView

log = logging.getLogger("graduate.review")
MISSING_RECHECK_S = 5.0


class KafkaPublisher:
    """An idempotent producer (acks=all) of ReviewedLabel records keyed by call_id."""

    def __init__(self, kafka: KafkaSettings, namespace: str, codec: Codec) -> None:
        self.topic = topic_name(LABELS_REVIEWED, namespace)
        self.codec = codec
        self.producer = make_producer(kafka, client_id=f"{kafka.client_id}-review")

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, review: ReviewedLabel) -> tuple[int, int]:
        meta = await self.producer.send_and_wait(self.topic, self.codec.encode(review), key=review.call_id.encode())
        return meta.partition, meta.offset


class TopicFollower:
    """Replays, then follows, the view's topics; reconnects after errors, resuming where it was."""

    def __init__(self, kafka: KafkaSettings, namespace: str, codec: Codec, view: ReviewView, *,
                 retry_s: float = 2.0, client_id: str = "graduate-review") -> None:
        self.kafka = kafka
        self.codec = codec
        self.view = view
        self.retry_s = retry_s
        self.client_id = client_id
        self.specs: dict[str, TopicSpec] = {topic_name(s, namespace): s for s in view.followed}
        self.ready = asyncio.Event()
        self.status = "replaying the topics"
        self.missing: set[str] = set(self.specs)
        self.records = 0
        self.undecodable = 0
        self._positions: dict[TopicPartition, int] = {}
        self._ends: Optional[dict[TopicPartition, int]] = None

    async def run(self) -> None:
        """Follow forever (cancel to stop)."""
        while True:
            consumer = AIOKafkaConsumer(**self.kafka.client_config(), group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="earliest", client_id=self.client_id,
                                        max_poll_records=5000)
            try:
                await consumer.start()
                await self._follow(consumer)
            except (KafkaError, OSError) as exc:
                self.status = f"cannot read the topics: {type(exc).__name__}: {exc}"
                log.warning("review follower: %s; retrying in %g s", self.status, self.retry_s)
            except Exception as exc:  # a bug must not stop the follower silently
                self.status = f"follower failed: {type(exc).__name__}: {exc}"
                log.exception("review follower failed; retrying in %g s", self.retry_s)
            finally:
                await consumer.stop()
            await asyncio.sleep(self.retry_s)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        parts = await self._assign(consumer)
        checked = time.monotonic()
        while True:
            if self.missing and time.monotonic() - checked > MISSING_RECHECK_S:
                parts = await self._assign(consumer)
                checked = time.monotonic()
            if not self.ready.is_set() and await self._caught_up(consumer):
                self.status = "following"
                log.info("review follower: replayed %d records of %d topics (%d undecodable)%s", self.records,
                         len(self.specs) - len(self.missing), self.undecodable,
                         f"; missing: {', '.join(sorted(self.missing))}" if self.missing else "")
                self.ready.set()
            if not parts:
                await asyncio.sleep(self.retry_s)
                continue
            batch = await consumer.getmany(*parts, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    self._apply(record)
                    self._positions[tp] = record.offset + 1
            if batch:
                await asyncio.sleep(0)  # let requests in between large replay batches

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        existing = await consumer.topics()
        parts: list[TopicPartition] = []
        for name in sorted(self.specs):
            if name in existing:
                await consumer._client._wait_on_metadata(name)  # a group-less consumer asks for it explicitly
            found = consumer.partitions_for_topic(name)
            if found:
                parts += [TopicPartition(name, p) for p in sorted(found)]
        self.missing = set(self.specs) - {tp.topic for tp in parts}
        if self.missing:
            log.warning("review follower: topics missing (run `graduate topics ensure`): %s",
                        ", ".join(sorted(self.missing)))
        if not parts:
            return parts
        consumer.assign(parts)
        new = [tp for tp in parts if tp not in self._positions]
        for tp in parts:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])
        if new:
            await consumer.seek_to_beginning(*new)
        if not self.ready.is_set():
            ends = await consumer.end_offsets(new) if new else {}
            self._ends = {**(self._ends or {}), **ends}
        return parts

    async def _caught_up(self, consumer: AIOKafkaConsumer) -> bool:
        for tp, end in (self._ends or {}).items():
            if await consumer.position(tp) < end:
                return False
        return True

    def _apply(self, record) -> None:
        spec = self.specs[record.topic]
        self.records += 1
        key = record.key.decode("utf-8", "replace") if record.key else ""
        if record.value is None:
            self.view.apply(spec, None, key=key, partition=record.partition, offset=record.offset)
            return
        try:
            value = self.codec.decode(record.value, spec.value)
        except CodecError as exc:
            self.undecodable += 1
            log.warning("review follower: skipped an undecodable record at %s[%d]@%d: %s", record.topic,
                        record.partition, record.offset, exc)
            return
        self.view.apply(spec, value, key=key, partition=record.partition, offset=record.offset)
