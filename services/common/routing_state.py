"""The routing state every processor acts on, and the follower that keeps it current.

`RoutingState` is the current decision per task (the compacted `routing.decisions` topic) plus the
registered models (`models`: a decision may name only a version; the registration names the Triton
model and, for extraction, the fields). `RoutingFollower` reads both topics whole (no consumer
group, all partitions, from the beginning), like the router does, so each worker knows every task's
mode whatever partitions it owns. `ready` is set once both topics were read to the end they had at
start: a processor waits for it before it handles anything, so a call is never judged against a
routing state still replaying (which would skip calls of tasks already in shadow).
Used by the shadow and the judge.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from services.common import catalog
from services.common.catalog import topic_name
from services.common.codec import Codec
from services.common.contracts import ModelRegistered, RoutingDecision
from services.common.follow import TopicFollower
from services.common.settings import KafkaSettings
from services.common.streams import Meta

log = logging.getLogger(__name__)
OnPoison = Callable[[Meta, bytes, BaseException], Awaitable[None]]


@dataclass
class RoutingState:
    """The current decision per task and the registered models (from two compacted topics)."""

    decisions: dict[str, RoutingDecision] = field(default_factory=dict)
    models: dict[tuple[str, str], ModelRegistered] = field(default_factory=dict)
    task_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # extraction task specs' fields
    model_fields: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def apply_decision(self, decision: RoutingDecision) -> None:
        self.decisions[decision.task] = decision

    def apply_model(self, model: ModelRegistered) -> None:
        self.models[(model.task, model.version)] = model
        if extraction_model(model):
            self.model_fields[(model.task, model.version)] = tuple(model.labels)

    def fields_for(self, task: str, version: str) -> tuple[str, ...]:
        """An extraction model's field names in its own order (its registration's labels, else the
        task spec's fields); () for a classification task."""
        return self.model_fields.get((task, version)) or tuple(self.task_fields.get(task, ()))

    def threshold_for(self, task: str, version: str) -> float | None:
        """The threshold of a model version: the routing decision's when it names this version,
        else the calibrated one from its registration."""
        decision = self.decisions.get(task)
        if decision is not None and decision.model_version == version and decision.threshold is not None:
            return decision.threshold
        model = self.models.get((task, version))
        return model.threshold if model is not None else None


def extraction_model(model: ModelRegistered) -> bool:
    """A registration of an extraction model (the trainer writes metrics_json.kind)."""
    try:
        metrics = json.loads(model.metrics_json or "{}")
    except json.JSONDecodeError:
        return False
    return isinstance(metrics, dict) and metrics.get("kind") == "extraction"


class RoutingFollower(TopicFollower):
    """Follows routing.decisions and models into `state`; `ready` once both were replayed."""

    name = "routing"

    def __init__(self, kafka: KafkaSettings, codec: Codec, namespace: str, *,
                 on_change: Callable[[], None] | None = None, on_poison: OnPoison | None = None) -> None:
        self.models = {topic_name(catalog.ROUTING_DECISIONS, namespace): RoutingDecision,
                       topic_name(catalog.MODELS, namespace): ModelRegistered}
        super().__init__(kafka, self.models, require_all=True, retry_s=2.0, missing_recheck_s=1.0,
                         client_id=f"{kafka.client_id}-routing")
        self.codec = codec
        self.state = RoutingState()
        self.on_change = on_change
        self.on_poison = on_poison

    def apply_value(self, value: RoutingDecision | ModelRegistered) -> None:
        if isinstance(value, RoutingDecision):
            self.state.apply_decision(value)
        else:
            self.state.apply_model(value)

    async def apply(self, record) -> None:
        if record.value is None:  # a tombstone: the task has no decision (frontier), as the router reads it
            if self.models[record.topic] is RoutingDecision and record.key:
                self.state.decisions.pop(record.key.decode("utf-8", "replace"), None)
            return
        try:
            self.apply_value(self.codec.decode(record.value, self.models[record.topic]))
        except Exception as exc:
            log.warning("routing: cannot apply %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            if self.on_poison is not None:
                await self.on_poison(Meta(record.topic, record.partition, record.offset, record.key), record.value, exc)

    def after_batch(self) -> None:
        if self.on_change is not None:
            self.on_change()
