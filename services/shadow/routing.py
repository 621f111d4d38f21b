"""Follow the compacted routing-decisions and models topics into a RoutingState.

Every worker reads both topics whole (no consumer group, all partitions, from the beginning),
like the router does, so each one knows every task's mode whatever partitions it owns.
`ready` is set once both topics were read to the end they had at start: a processor waits for
it before it handles anything, so a call is never judged against a routing state still
replaying (which would skip calls of tasks already in shadow).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from services.common import catalog
from services.common.catalog import topic_name
from services.common.codec import Codec
from services.common.contracts import ModelRegistered, RoutingDecision
from services.common.settings import KafkaSettings
from services.common.streams import Meta
from services.shadow.logic import RoutingState

log = logging.getLogger(__name__)
OnPoison = Callable[[Meta, bytes, BaseException], Awaitable[None]]


class RoutingFollower:
    def __init__(self, kafka: KafkaSettings, codec: Codec, namespace: str, *,
                 on_change: Callable[[], None] | None = None, on_poison: OnPoison | None = None) -> None:
        self.kafka = kafka
        self.codec = codec
        self.state = RoutingState()
        self.ready = asyncio.Event()
        self.on_change = on_change
        self.on_poison = on_poison
        self.models = {topic_name(catalog.ROUTING_DECISIONS, namespace): RoutingDecision,
                       topic_name(catalog.MODELS, namespace): ModelRegistered}

    def apply(self, value: RoutingDecision | ModelRegistered) -> None:
        if isinstance(value, RoutingDecision):
            self.state.apply_decision(value)
        else:
            self.state.apply_model(value)

    async def run(self) -> None:
        # Subscribed without a group: aiokafka assigns every partition, offsets start at the beginning.
        consumer = AIOKafkaConsumer(*self.models, **self.kafka.client_config(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            for attempt in itertools.count(1):
                if {tp.topic for tp in consumer.assignment()} == set(self.models):
                    break
                if attempt % 100 == 0:
                    log.warning("routing: waiting for topics %s (create them first)", ", ".join(self.models))
                await asyncio.sleep(0.1)
            parts = sorted(consumer.assignment())
            end = await consumer.end_offsets(parts)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        try:
                            self.apply(self.codec.decode(r.value, self.models[tp.topic]))
                        except Exception as exc:
                            log.warning("routing: cannot apply %s[%d]@%d: %s", tp.topic, tp.partition, r.offset, exc)
                            if self.on_poison is not None:
                                await self.on_poison(Meta(tp.topic, tp.partition, r.offset, r.key), r.value, exc)
                if batch and self.on_change is not None:
                    self.on_change()
                if not self.ready.is_set() and all([await consumer.position(tp) >= end[tp] for tp in parts]):
                    log.info("routing: replayed %d decisions, %d models", len(self.state.decisions),
                             len(self.state.models))
                    self.ready.set()
        finally:
            await consumer.stop()
