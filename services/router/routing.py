"""Each task's mode, from the compacted routing topic: the router's only source of truth.

`RoutingTable` is the pure state (apply a decision or a tombstone; a task with no decision is in
`frontier` mode). `RoutingFollower` (a services.common.follow.TopicFollower) replays the topic from
the beginning, says when it has reached the end it saw at start (readiness), and keeps applying new
decisions live.
"""
from __future__ import annotations

import logging
from typing import Callable

from services.common.catalog import ROUTING_DECISIONS, topic_name
from services.common.codec import Codec, CodecError
from services.common.contracts import Mode, RoutingDecision
from services.common.follow import TopicFollower, key_text
from services.common.kafka import dead_letter
from services.common.settings import KafkaSettings
from services.common.tasks import TaskRegistry

log = logging.getLogger(__name__)


class RoutingTable:
    """Task → latest RoutingDecision; `on_change(task, mode, predicted_fallback_rate)` after each change."""

    def __init__(self, tasks: TaskRegistry, on_change: Callable[[str, str, float | None], None] | None = None) -> None:
        self.tasks = tasks
        self.decisions: dict[str, RoutingDecision] = {}
        self.on_change = on_change
        for name in tasks.tasks:
            self._changed(name)

    def get(self, task: str) -> RoutingDecision | None:
        return self.decisions.get(task)

    def mode_of(self, task: str) -> Mode:
        d = self.decisions.get(task)
        return d.mode if d else "frontier"

    def apply(self, task: str, decision: RoutingDecision | None) -> None:
        """A decision for `task`, or None (a tombstone: back to frontier)."""
        if decision is None:
            self.decisions.pop(task, None)
        else:
            if decision.task != task:
                log.warning("routing decision keyed %r names task %r; applying it to %r", task, decision.task, task)
            if decision.mode == "small" and decision.threshold is None:
                log.warning("routing decision %s puts %s in small mode without a threshold: every small answer "
                            "is served", decision.decision_id, task)
            self.decisions[task] = decision
        if task not in self.tasks.tasks:
            log.warning("routing decision for %r, which the tasks file does not declare; requests for it are "
                        "refused", task)
        self._changed(task)

    def describe(self) -> list[dict]:
        """Every declared task with its mode, model version and threshold (GET /v1/tasks)."""
        out = []
        for name, spec in sorted(self.tasks.tasks.items()):
            d = self.decisions.get(name)
            out.append({"task": name, "kind": spec.kind, "mode": d.mode if d else "frontier",
                        "model_version": d.model_version if d else None, "threshold": d.threshold if d else None,
                        "triton_model": (d.triton_model or name) if d else None,
                        "predicted_fallback_rate": d.predicted_fallback_rate if d else None,
                        "reason": d.reason if d else "no routing decision yet",
                        "decided_by": d.decided_by if d else None, "decided_at": d.ts.isoformat() if d else None,
                        "decision_id": d.decision_id if d else None})
        return out

    def _changed(self, task: str) -> None:
        if self.on_change is not None:
            d = self.decisions.get(task)
            self.on_change(task, d.mode if d else "frontier", d.predicted_fallback_rate if d else None)


class RoutingFollower(TopicFollower):
    """Replays and follows the routing topic into a RoutingTable; `ready` once replayed to the end
    (never while the topic is missing: the router does not serve on a state it could not read)."""

    name = "routing follower"

    def __init__(self, kafka: KafkaSettings, namespace: str, codec: Codec, table: RoutingTable, *,
                 dead_letters: Callable | None = None, retry_s: float = 2.0,
                 client_id: str = "graduate-router") -> None:
        self.topic = topic_name(ROUTING_DECISIONS, namespace)
        super().__init__(kafka, [self.topic], require_all=True, retry_s=retry_s, missing_recheck_s=retry_s,
                         client_id=client_id)
        self.codec = codec
        self.table = table
        self.dead_letters = dead_letters

    @property
    def not_ready_reason(self) -> str:
        return self.status

    def apply(self, record) -> None:
        task = key_text(record)
        if record.value is None:
            self.table.apply(task, None)
            log.info("routing: tombstone for %s; back to frontier", task)
            return
        try:
            decision = self.codec.decode(record.value, RoutingDecision)
        except CodecError as exc:
            log.error("routing: cannot decode the decision at %s[%d]@%d: %s; dead-lettered, skipped",
                      record.topic, record.partition, record.offset, exc)
            if self.dead_letters is not None:
                self.dead_letters(dead_letter(record.topic, record.partition, record.offset, "router", exc,
                                              record.key, record.value))
            return
        self.table.apply(task or decision.task, decision)
        log.info("routing: %s -> %s (model %s, threshold %s) by %s: %s", decision.task, decision.mode,
                 decision.model_version, decision.threshold, decision.decided_by, decision.reason)
