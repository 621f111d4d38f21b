"""What the demo sees of the topics: a background reader of catalog topics from their start.

The demo decides nothing itself; it watches what the services publish (captures, models, every
routing decision in the history, shadow statistics, disagreements, retrain requests) to know when
a phase is done and to write the report from the records.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.catalog import TopicSpec, topic_name
from services.common.codec import Codec, CodecError
from services.common.contracts import Contract
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)
T = TypeVar("T", bound=Contract)


class TopicWatch:
    """Follows `specs` (each with its contract) from offset 0; `records(spec)` is what arrived so far."""

    def __init__(self, kafka: KafkaSettings, codec: Codec, namespace: str, specs: list[TopicSpec]) -> None:
        self.kafka, self.codec, self.namespace = kafka, codec, namespace
        self.specs = {topic_name(s, namespace): s for s in specs}
        self._records: dict[str, list] = {s.name: [] for s in specs}
        self.undecodable = 0
        self._consumer: Optional[AIOKafkaConsumer] = None
        self._task: Optional[asyncio.Task] = None

    async def start(self, metadata_timeout_s: float = 30.0) -> None:
        self._consumer = AIOKafkaConsumer(**self.kafka.client_config(), enable_auto_commit=False,
                                          auto_offset_reset="earliest", client_id="graduate-demo-watch",
                                          max_poll_records=2000)
        await self._consumer.start()
        # Right after the topics were created the broker's metadata may not list one yet; a watch
        # without it would wait for its records in vain, so ask until every topic is there.
        deadline = time.monotonic() + metadata_timeout_s
        while True:
            missing = [name for name in self.specs if not self._consumer.partitions_for_topic(name)]
            if not missing:
                break
            if time.monotonic() > deadline:
                await self._consumer.stop()
                raise RuntimeError(f"the broker does not list {', '.join(missing)} after {metadata_timeout_s:.0f} s "
                                   "(were the topics created? `graduate topics ensure`)")
            for name in missing:
                if name in await self._consumer.topics():
                    await self._consumer._client._wait_on_metadata(name)  # a group-less consumer asks explicitly
            await asyncio.sleep(0.2)
        parts = [TopicPartition(name, p) for name in self.specs for p in sorted(self._consumer.partitions_for_topic(name))]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="demo-topic-watch")

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=300)
            for tp, messages in batch.items():
                spec = self.specs[tp.topic]
                for m in messages:
                    try:
                        self._records[spec.name].append(self.codec.decode(m.value, spec.value))
                    except CodecError:
                        self.undecodable += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping; the reason was logged
                pass
        if self._consumer is not None:
            await self._consumer.stop()

    def records(self, spec: TopicSpec) -> list:
        if self._task is not None and self._task.done() and not self._task.cancelled() and self._task.exception():
            raise RuntimeError(f"the topic watch stopped: {self._task.exception()!r}")
        return list(self._records[spec.name])

    async def wait_for(self, predicate: Callable[[], Optional[T]], timeout_s: float, *,
                       on_tick: Callable[[], None] = lambda: None, poll_s: float = 0.5) -> Optional[T]:
        """Poll `predicate` until it returns something truthy, or None after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = predicate()
            if found:
                return found
            on_tick()
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(poll_s)
