"""Replay topics from their start, then follow them: the read side of every in-memory view.

The router (routing decisions), the shadow and the judge (decisions + models) and the review
page (everything it shows) each keep a view of whole topics in memory. They read with the one
topic reader (services/common/reader.py, `follow=True`): no consumer group, every partition from
the beginning, so every replica sees everything;
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

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from services.common.reader import TopicReader
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
        self._positions: dict[TopicPartition, int] = {}  # kept across reconnects
        self.replay_ends: dict[TopicPartition, int] = {}  # what `ready` waits for; later records are news

    def replayed(self, record: Any) -> bool:
        """Whether `record` was part of the replay (below the end `ready` waited for), not news."""
        return record.offset < self.replay_ends.get(TopicPartition(record.topic, record.partition), 0)

    # -- to implement ------------------------------------------------------------------------------
    def apply(self, record: Any) -> Any:
        raise NotImplementedError

    def after_batch(self) -> None:
        """Called after each non-empty batch was applied."""

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow forever (cancel to stop)."""
        while True:
            try:
                if await self._follow():
                    continue  # reopened to look for a missing topic: at once, from where it was
            except (KafkaError, OSError) as exc:
                self.status = f"cannot read {', '.join(self.topics)}: {type(exc).__name__}: {exc}"
                log.warning("%s: %s; retrying in %g s", self.name, self.status, self.retry_s)
            except Exception as exc:  # a bug must not stop the follower silently
                self.status = f"{self.name} failed: {type(exc).__name__}: {exc}"
                log.exception("%s failed; retrying in %g s", self.name, self.retry_s)
            await asyncio.sleep(self.retry_s)

    async def _follow(self) -> bool:
        """Read with one consumer (services.common.reader) from the kept positions; True when it
        stopped to look for missing topics again."""
        async with TopicReader(self.kafka, self.topics, positions=self._positions, follow=True,
                               client_id=self.client_id, max_poll_records=self.max_poll_records,
                               poll_ms=500) as reader:
            self._note_missing(reader.missing)
            if not self.ready.is_set():
                self.replay_ends = {tp: span.end for tp, span in reader.spans.items()}
            if not reader.spans:  # every topic missing: ready without them unless `require_all`
                self._note_ready(reader)
                await asyncio.sleep(min(self.retry_s, self.missing_recheck_s))
                return True
            opened = time.monotonic()
            async for records in reader:  # an empty list after a quiet poll
                for record in records:
                    self.records += 1
                    result = self.apply(record)
                    if inspect.isawaitable(result):
                        await result
                self._positions = dict(reader.positions)
                if records:
                    self.after_batch()
                    await asyncio.sleep(0)  # let requests in between large replay batches
                self._note_ready(reader)
                if self.missing and time.monotonic() - opened > self.missing_recheck_s:
                    return True
        return False

    def _note_ready(self, reader: TopicReader) -> None:
        if not self.ready.is_set() and reader.caught_up and not (self.require_all and self.missing):
            self.status = "following"
            log.info("%s: replayed %d records of %s%s", self.name, self.records, ", ".join(self.topics),
                     f"; missing: {', '.join(sorted(self.missing))}" if self.missing else "")
            self.ready.set()

    def _note_missing(self, missing: set[str]) -> None:
        self.missing = set(missing)
        if self.missing:
            self.status = (f"topic(s) {', '.join(sorted(self.missing))} do not exist "
                           "(run `graduate topics ensure`)")
            log.warning("%s: %s", self.name, self.status)


def key_text(record: Any) -> str:
    """A record's key as text ("" when it has none)."""
    return record.key.decode("utf-8", "replace") if record.key else ""
