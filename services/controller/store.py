"""The controller's reads and writes on Kafka: replay its state, tail router outcomes, publish.

A decision goes to both routing topics — the compacted one the router follows and the history
that is never compacted (the audit trail); a refusal goes to the history alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common import catalog
from services.common.catalog import topic_name
from services.common.codec import Codec
from services.common.contracts import (DeadLetter, ModelRegistered, RetrainRequest, RouterOutcome, RoutingDecision,
                                       ShadowStats)
from services.common.kafka import make_producer
from services.common.settings import CommonSettings, KafkaSettings
from services.common.streams import Emit, replay_topic
from services.common.tasks import TaskSpec
from services.controller.control import Controller, Effects
from services.controller.graduation import Signal
from services.controller.settings import ControllerSettings


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
    name = topic_name(catalog.ROUTER_OUTCOMES, namespace)
    consumer = AIOKafkaConsumer(**kafka.client_config(), enable_auto_commit=False, max_poll_records=2000)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(name)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        pending = set()
        for tp in tps:
            consumer.seek(tp, max(starts[tp], ends[tp] - per_partition))
            if starts[tp] < ends[tp]:
                pending.add(tp)
        out: list[RouterOutcome] = []
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        try:
                            out.append(codec.decode(m.value, RouterOutcome))
                        except ValueError:
                            pass
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return sorted(out, key=lambda o: o.ts)
    finally:
        await consumer.stop()


async def publish(kafka: KafkaSettings, codec: Codec, namespace: str, effects: Effects) -> None:
    """Send effects from outside a worker (the CLI's overrides), waiting for every ack."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        for e in emits_of(effects):
            await producer.send_and_wait(topic_name(e.spec, namespace), codec.encode(e.value), key=e.key_bytes())
    finally:
        await producer.stop()

