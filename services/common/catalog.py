"""The topic catalog: the single source of truth for every topic graduate reads or writes.

Nothing else in the code spells a topic name; code asks `topic_name(SPEC, namespace)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from services.common import contracts as c

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: type[c.Contract]
    partitions: int
    cleanup_policy: str  # "delete" or "compact"
    retention_ms: int | None
    written_by: str
    read_by: str
    replication: int = 1
    extra_config: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        cfg.update(self.extra_config)
        return cfg


CALLS_CAPTURED = TopicSpec("graduate.calls.captured", "call_id", c.CapturedCall, 12, "delete", 90 * DAY_MS,
                           "router, capture client", "profiler, curator, shadow")
LABELS_REVIEWED = TopicSpec("graduate.labels.reviewed", "call_id", c.ReviewedLabel, 3, "compact", None,
                            "review UI", "curator, judge")
SHADOW_RESULTS = TopicSpec("graduate.shadow.results", "call_id", c.ShadowResult, 12, "delete", 30 * DAY_MS,
                           "shadow", "judge")
DISAGREEMENTS = TopicSpec("graduate.disagreements", "call_id", c.Disagreement, 3, "delete", 90 * DAY_MS,
                          "judge", "data engineers, review UI")
MODELS = TopicSpec("graduate.models", "task/version", c.ModelRegistered, 1, "compact", None,
                   "trainer", "controller, shadow, router, review page")
ROUTING_DECISIONS = TopicSpec("graduate.routing.decisions", "task", c.RoutingDecision, 1, "compact", None,
                              "controller, CLI", "router, shadow")
ROUTING_HISTORY = TopicSpec("graduate.routing.history", "task", c.RoutingDecision, 1, "delete", None,
                            "controller, CLI", "audit (every decision, never compacted)",
                            extra_config={"retention.ms": "-1"})
ROUTER_OUTCOMES = TopicSpec("graduate.router.outcomes", "task", c.RouterOutcome, 12, "delete", 30 * DAY_MS,
                            "router", "controller, profiler")
RETRAIN_REQUESTS = TopicSpec("graduate.retrain.requests", "task", c.RetrainRequest, 1, "delete", 30 * DAY_MS,
                             "controller, CLI (graduate approve), review page", "trainer, controller")
SHADOW_STATS = TopicSpec("graduate.shadow.stats", "task/version", c.ShadowStats, 1, "compact", None,
                         "judge", "controller, CLI")
DATASET = TopicSpec("graduate.dataset", "task/normalised_hash", c.DatasetRecord, 12, "compact", None,
                    "curator (partition p: what captured partition p held)",
                    "snapshots (curator, trainer), review queue, controller, data engineers")
DATASET_FORGOTTEN = TopicSpec("graduate.dataset.forgotten", "task/normalised_hash", c.DatasetForgotten, 1, "compact",
                              None, "graduate dataset forget", "curator, snapshots")
DEADLETTER = TopicSpec("graduate.deadletter", "original key", c.DeadLetter, 3, "delete", 30 * DAY_MS,
                       "every processor", "ops")

CATALOG: tuple[TopicSpec, ...] = (
    CALLS_CAPTURED, LABELS_REVIEWED, SHADOW_RESULTS, DISAGREEMENTS, MODELS, ROUTING_DECISIONS,
    ROUTING_HISTORY, ROUTER_OUTCOMES, RETRAIN_REQUESTS, SHADOW_STATS, DATASET, DATASET_FORGOTTEN, DEADLETTER,
)


def topic_name(spec: TopicSpec, namespace: str = "") -> str:
    """The one namer: the catalog name, prefixed by a namespace (tests, tenants)."""
    return f"{namespace}{spec.name}"


def spec_for(name: str, namespace: str = "") -> TopicSpec:
    for spec in CATALOG:
        if topic_name(spec, namespace) == name:
            return spec
    raise KeyError(f"{name!r} is not a topic of the catalog (namespace {namespace!r})")
