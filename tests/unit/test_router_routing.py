"""The routing table: decisions, tombstones, the default mode, and the mode metric."""
from __future__ import annotations

from services.common.contracts import RoutingDecision
from services.common.tasks import TaskRegistry
from services.router.metrics import RouterMetrics
from services.router.routing import RoutingTable
from tests.unit.test_router_logic import PRIVATE, TASK


def decision(mode: str, **kw) -> RoutingDecision:
    return RoutingDecision(task="intent", mode=mode, reason="r", decided_by="t", **kw)


def table() -> tuple[RoutingTable, RouterMetrics]:
    metrics = RouterMetrics()
    return RoutingTable(TaskRegistry(tasks={"intent": TASK, "private": PRIVATE}), on_change=metrics.set_mode), metrics


def mode_metric(metrics: RouterMetrics, task: str) -> dict[str, float]:
    return {m: metrics.registry.get_sample_value("graduate_router_task_mode", {"task": task, "mode": m})
            for m in ("frontier", "shadow", "small")}


def test_no_decision_means_frontier():
    t, metrics = table()
    assert t.mode_of("intent") == "frontier" and t.get("intent") is None
    assert mode_metric(metrics, "intent") == {"frontier": 1.0, "shadow": 0.0, "small": 0.0}


def test_latest_decision_wins_and_a_tombstone_resets():
    t, metrics = table()
    t.apply("intent", decision("shadow", model_version="1"))
    t.apply("intent", decision("small", model_version="1", threshold=0.7, predicted_fallback_rate=0.2))
    assert t.mode_of("intent") == "small" and t.get("intent").threshold == 0.7
    assert mode_metric(metrics, "intent")["small"] == 1.0
    assert metrics.registry.get_sample_value("graduate_router_predicted_fallback_rate", {"task": "intent"}) == 0.2
    t.apply("intent", None)
    assert t.mode_of("intent") == "frontier"
    assert metrics.registry.get_sample_value("graduate_router_predicted_fallback_rate", {"task": "intent"}) is None


def test_describe_lists_every_declared_task():
    t, _ = table()
    t.apply("intent", decision("small", model_version="4", threshold=0.5, triton_model="m"))
    rows = {r["task"]: r for r in t.describe()}
    row = rows["intent"]
    assert (row["mode"], row["model_version"], row["triton_model"]) == ("small", "4", "m")
    assert rows["private"]["mode"] == "frontier" and rows["private"]["reason"] == "no routing decision yet"
