"""Replay topics from their start, then follow them: the read side of every in-memory view.

The router (routing decisions), the shadow and the judge (decisions + models) and the review
page (everything it shows) each keep a view of whole topics in memory. They read without a
consumer group, every partition from the beginning, so every replica sees everything;
`ready` is set once each partition was read to the end it had when first assigned, so a reader
never acts on a view still replaying. After a Kafka error the follower reconnects and resumes
where it was (positions are kept); a topic missing at start is looked for again every few
seconds. With `require_all`, `ready` waits for every topic to exist (the router must not serve
on a routing topic it could not read); without, the readable topics are enough and the missing
ones are listed in `missing`.

Subclasses implement `apply(record)` (sync or async; an aiokafka ConsumerRecord, value None for a
tombstone) and may override `after_batch()`.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)


class TopicFollower:
    """Replays, then follows, `topics`; `ready` once replayed; `status` says what it is doing."""

    name = "follower"

    def __init__(self, kafka: KafkaSettings, topics: Iterable[str], *, require_all: bool = True,
                 retry_s: float = 2.0, missing_recheck_s: float = 5.0, client_id: str = "graduate",
                 max_poll_records: int = 500) -> None:
        self.kafka = kafka
        self.topics = sorted(set(topics))
        self.require_all = require_all
        self.retry_s = retry_s
        self.missing_recheck_s = missing_recheck_s
        self.client_id = client_id
        self.max_poll_records = max_poll_records
        self.ready = asyncio.Event()
        self.status = "replaying " + ", ".join(self.topics)
        self.missing: set[str] = set(self.topics)
        self.records = 0
        self._positions: dict[TopicPartition, int] = {}
        self._ends: dict[TopicPartition, int] = {}

    # -- to implement ------------------------------------------------------------------------------
    def apply(self, record: Any) -> Any:
        raise NotImplementedError

    def after_batch(self) -> None:
        """Called after each non-empty batch was applied."""

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow forever (cancel to stop)."""
        while True:
            consumer = AIOKafkaConsumer(**self.kafka.client_config(), group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="earliest", client_id=self.client_id,
                                        max_poll_records=self.max_poll_records)
            try:
                await consumer.start()
                await self._follow(consumer)
            except (KafkaError, OSError) as exc:
                self.status = f"cannot read {', '.join(self.topics)}: {type(exc).__name__}: {exc}"
                log.warning("%s: %s; retrying in %g s", self.name, self.status, self.retry_s)
            except Exception as exc:  # a bug must not stop the follower silently
                self.status = f"{self.name} failed: {type(exc).__name__}: {exc}"
                log.exception("%s failed; retrying in %g s", self.name, self.retry_s)
            finally:
                await consumer.stop()
            await asyncio.sleep(self.retry_s)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        parts = await self._assign(consumer)
        checked = time.monotonic()
        while True:
            if self.missing and time.monotonic() - checked > self.missing_recheck_s:
                parts = await self._assign(consumer)
                checked = time.monotonic()
            if not self.ready.is_set() and await self._caught_up(consumer):
                self.status = "following"
                log.info("%s: replayed %d records of %s%s", self.name, self.records, ", ".join(self.topics),
                         f"; missing: {', '.join(sorted(self.missing))}" if self.missing else "")
                self.ready.set()
            if not parts:
                await asyncio.sleep(min(self.retry_s, self.missing_recheck_s))
                continue
            batch = await consumer.getmany(*parts, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    self.records += 1
                    result = self.apply(record)
                    if inspect.isawaitable(result):
                        await result
                    self._positions[tp] = record.offset + 1
            if batch:
                self.after_batch()
                await asyncio.sleep(0)  # let requests in between large replay batches

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        existing = await consumer.topics()
        parts: list[TopicPartition] = []
        for name in self.topics:
            if name in existing:
                await consumer._client._wait_on_metadata(name)  # a group-less consumer asks for it explicitly
            found = consumer.partitions_for_topic(name)
            if found:
                parts += [TopicPartition(name, p) for p in sorted(found)]
        self.missing = set(self.topics) - {tp.topic for tp in parts}
        if self.missing:
            self.status = (f"topic(s) {', '.join(sorted(self.missing))} do not exist "
                           "(run `graduate topics ensure`)")
            log.warning("%s: %s", self.name, self.status)
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
            self._ends.update(await consumer.end_offsets(new) if new else {})
        return parts

    async def _caught_up(self, consumer: AIOKafkaConsumer) -> bool:
        if self.require_all and self.missing:
            return False
        for tp, end in self._ends.items():
            if await consumer.position(tp) < end:
                return False
        return True


def key_text(record: Any) -> str:
    """A record's key as text ("" when it has none)."""
    return record.key.decode("utf-8", "replace") if record.key else ""
