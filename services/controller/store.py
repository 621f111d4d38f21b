"""The controller's reads and writes on Kafka: follow (or replay) its state, read router outcomes, publish.

A decision goes to both routing topics — the compacted one the router follows and the history
that is never compacted (the audit trail); a refusal goes to the history alone.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from services.common import catalog
from services.common.catalog import TopicSpec, topic_name
from services.common.codec import Codec, CodecError
from services.common.contracts import (DeadLetter, ModelRegistered, RetrainRequest, RouterOutcome, RoutingDecision,
                                       ShadowStats)
from services.common.follow import TopicFollower
from services.common.kafka import make_producer
from services.common.settings import CommonSettings, KafkaSettings
from services.common.reader import replay_topic
from services.common.routing_state import OnPoison
from services.common.streams import PROCESSED, Emit, Meta
from services.common.tasks import TaskSpec
from services.controller.control import Controller, Effects
from services.controller.graduation import Signal
from services.controller.settings import ControllerSettings

log = logging.getLogger(__name__)


def emits_of(effects: Effects) -> list[Emit]:
    """What to send for a controller's effects (decisions first to the routing topic, then history)."""
    out: list[Emit] = []
    for d in effects.decisions:
        out += [Emit(catalog.ROUTING_DECISIONS, d.task, d), Emit(catalog.ROUTING_HISTORY, d.task, d)]
    out += [Emit(catalog.ROUTING_HISTORY, d.task, d) for d in effects.refusals]
    out += [Emit(catalog.RETRAIN_REQUESTS, r.task, r) for r in effects.retrains]
    return out


@dataclass
class Replayed:
    """What the replay read: the offsets each topic was read to, and what would not decode."""

    ends: dict[str, int] = field(default_factory=dict)  # topic -> next offset (single-partition topics)
    undecodable: int = 0
    letter_ends: dict[int, int] = field(default_factory=dict)  # dead-letter partition -> next offset


async def replay_state(controller: Controller, kafka: KafkaSettings, codec: Codec, namespace: str) -> Replayed:
    """Feed the compacted routing topic, the history, the models and the judge's stats to `controller`."""
    out = Replayed()
    for spec, model, read in ((catalog.ROUTING_HISTORY, RoutingDecision, controller.read_history),
                              (catalog.ROUTING_DECISIONS, RoutingDecision, controller.read_decision),
                              (catalog.MODELS, ModelRegistered, controller.read_model),
                              (catalog.SHADOW_STATS, ShadowStats, controller.read_stats),
                              (catalog.RETRAIN_REQUESTS, RetrainRequest, controller.read_request)):
        replay = await replay_topic(kafka, codec, spec, namespace, model)
        for item in replay.records:
            read(item.value)
        out.ends[replay.topic] = max((end for _, end in replay.offsets.values()), default=0)
        out.undecodable += len(replay.undecodable)
    letters = await replay_topic(kafka, codec, catalog.DEADLETTER, namespace, DeadLetter)
    for item in letters.records:
        refused = trainer_refusal(item.value, codec, namespace)
        if refused is not None:
            controller.read_refusal(*refused)
    out.letter_ends = {p: end for p, (_, end) in letters.offsets.items()}
    return out


FOLLOWED = (catalog.ROUTING_HISTORY, catalog.ROUTING_DECISIONS, catalog.MODELS, catalog.SHADOW_STATS,
            catalog.RETRAIN_REQUESTS, catalog.DEADLETTER)


def apply_record(controller: Controller, spec: TopicSpec, value: Any, act: Callable[[str], bool], codec: Codec,
                 namespace: str) -> Effects:
    """One record of a followed topic: an event (`on_*`) when `act(task)` says this replica decides
    for its task now, else state (`read_*`). The routing topics are always state."""
    if spec is catalog.ROUTING_HISTORY:
        controller.read_history(value)
        return Effects()
    if spec is catalog.ROUTING_DECISIONS:
        controller.read_decision(value)
        return Effects()
    args: tuple = (value,)
    if spec is catalog.DEADLETTER:
        refused = trainer_refusal(value, codec, namespace)
        if refused is None:
            return Effects()
        args = refused
    on, read = {catalog.MODELS.name: (controller.on_model, controller.read_model),
                catalog.SHADOW_STATS.name: (controller.on_stats, controller.read_stats),
                catalog.RETRAIN_REQUESTS.name: (controller.on_request, controller.read_request),
                catalog.DEADLETTER.name: (controller.on_refusal, controller.read_refusal)}[spec.name]
    if act(args[0].task):
        return on(*args)
    read(*args)
    return Effects()


class ControlFollower(TopicFollower):
    """Every controller replica follows the small topics whole (FOLLOWED): the replay builds the
    `Controller`'s state for every task, so any replica can take any task over and show all of
    them; a record read after the replay is news, acted on by its task's owner (`owns`) and read
    as state by the others. Effects go to `send`."""

    name = "controller follower"

    def __init__(self, kafka: KafkaSettings, codec: Codec, namespace: str, controller: Controller,
                 owns: Callable[[str], bool], send: Callable[[Effects], Awaitable[None]], *,
                 on_poison: OnPoison | None = None, retry_s: float = 2.0) -> None:
        self.specs = {topic_name(spec, namespace): spec for spec in FOLLOWED}
        super().__init__(kafka, self.specs, require_all=True, retry_s=retry_s, client_id=f"{kafka.client_id}-controller",
                         max_poll_records=2000)
        self.codec, self.namespace, self.controller, self.owns, self.send = codec, namespace, controller, owns, send
        self.on_poison = on_poison
        self.undecodable = 0

    async def apply(self, record: Any) -> None:
        if record.value is None:
            return  # a compaction tombstone
        spec = self.specs[record.topic]
        news = not self.replayed(record)
        try:
            value = self.codec.decode(record.value, spec.value)
        except CodecError as exc:
            self.undecodable += 1
            log.warning("controller: cannot read %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            # replayed too, as the shadow's and the judge's followers do (the poison may have come while
            # this replica was starting); so each replica letters it at each start. Never a letter's letter.
            if self.on_poison is not None and spec is not catalog.DEADLETTER:
                await self.on_poison(Meta(record.topic, record.partition, record.offset, record.key), record.value, exc)
            return
        effects = apply_record(self.controller, spec, value, lambda task: news and self.owns(task), self.codec,
                               self.namespace)
        if effects:
            await self.send(effects)
        if spec is not catalog.DEADLETTER:  # others' letters are not the controller's events
            PROCESSED.labels("controller").inc()


def trainer_refusal(letter: DeadLetter, codec: Codec, namespace: str) -> tuple[RetrainRequest, str] | None:
    """The retrain request a trainer's dead letter refused, and why; None for any other dead letter."""
    if letter.processor != "trainer" or letter.source_topic != topic_name(catalog.RETRAIN_REQUESTS, namespace):
        return None
    try:
        return codec.decode(letter.payload, RetrainRequest), letter.reason
    except ValueError:
        return None


async def read_signals(settings: CommonSettings, codec: Codec, specs: dict[str, TaskSpec], profiler,
                       holdout_fraction: float, control: ControllerSettings,
                       drift_since: Optional[dict[str, datetime]] = None) -> list[Signal]:
    """A look at the data of `specs`' tasks: the profiler's verdict (as `graduate candidates`), the
    reviewed holdout (as the curator's snapshot would count it) and, for a task demoted for drift
    at `drift_since[task]`, what was captured since."""
    from services.curator.logic import ts_ms
    from services.curator.readiness import drift_readiness, readiness_of_dataset
    from services.curator.snapshot import curate_sources, read_sources
    from services.profiler.report import compute_candidates

    candidates = {c.task: c for c in await compute_candidates(settings, profiler, codec)}
    data = await read_sources(settings, codec)
    out = []
    for task, spec in sorted(specs.items()):
        candidate = candidates.get(task)
        dataset = curate_sources(spec, data, holdout_fraction)
        since = (drift_since or {}).get(task)
        drift = None if since is None else drift_readiness(
            dataset, ts_ms(since), min_reviewed_holdout=control.min_holdout,
            min_reviewed_floor=control.min_shadow_reviewed, labels=len(spec.labels or ()),
            min_train_per_label=control.drift_min_train_per_label, min_reviewed_since=control.drift_min_reviewed)
        out.append(Signal(task, candidate is not None and candidate.recommendation == "graduate",
                          candidate.failing if candidate else ("no captured calls",),
                          readiness_of_dataset(dataset, spec.kind, control.min_holdout), drift))
    return out


async def read_history(kafka: KafkaSettings, codec: Codec, namespace: str,
                       task: str | None = None) -> list[RoutingDecision]:
    replay = await replay_topic(kafka, codec, catalog.ROUTING_HISTORY, namespace, RoutingDecision)
    return [i.value for i in replay.records if task is None or i.value.task == task]


async def read_outcomes(kafka: KafkaSettings, codec: Codec, namespace: str, per_partition: int) -> list[RouterOutcome]:
    """The last `per_partition` router outcomes of every partition, undecodable ones skipped."""
    replay = await replay_topic(kafka, codec, catalog.ROUTER_OUTCOMES, namespace, RouterOutcome, last=per_partition)
    return sorted((i.value for i in replay.records), key=lambda o: o.ts)


async def publish(kafka: KafkaSettings, codec: Codec, namespace: str, effects: Effects) -> None:
    """Send effects from outside a worker (the CLI's overrides), waiting for every ack."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        for e in emits_of(effects):
            await producer.send_and_wait(topic_name(e.spec, namespace), codec.encode(e.value), key=e.key_bytes())
    finally:
        await producer.stop()

