"""What the report keeps of a run, as plain JSON: pure functions over the client's results and
the records the services published (no broker here; run.py hands the records in)."""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from services.common.contracts import CapturedCall, Disagreement, RoutingDecision
from services.common.tasks import TaskSpec
from services.demo.replay import CallResult


def evidence(d: RoutingDecision) -> dict[str, Any]:
    try:
        value = json.loads(d.evidence or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def call_rows(results: Iterable[CallResult], task: str) -> list[dict[str, Any]]:
    """One row per call the backend services made (inputs of the open-ended task left out)."""
    return [{"phase": r.call.phase, "task": r.call.task, "call_id": r.call.call_id, "gold": r.call.gold,
             "drift": r.call.drift, "ok": r.ok, "served_by": r.served_by, "output": r.output,
             "confidence": r.confidence, "model_version": r.model_version, "latency_ms": round(r.latency_ms, 2), "started": round(r.started, 3),
             "fallback_reason": r.fallback_reason, "text": r.call.text if r.call.task == task else None}
            for r in results]


def decision_rows(history: Iterable[RoutingDecision]) -> list[dict[str, Any]]:
    """Every decision of the routing history, with its gate, verdict and evidence."""
    return [{"ts": d.ts.timestamp(), "mode": d.mode, "model_version": d.model_version, "threshold": d.threshold,
             "reason": d.reason, "decided_by": d.decided_by, "gate": evidence(d).get("gate"),
             "verdict": evidence(d).get("verdict"), "predicted_fallback_rate": d.predicted_fallback_rate,
             "evidence": evidence(d)} for d in history]


def disagreement_facts(disagreements: Sequence[Disagreement], launch: float, new_intent_calls: set[str]) -> dict:
    """The count, and the most confident examples before the launch and on the launch's new intents."""
    before = [d for d in disagreements if d.ts.timestamp() < launch]
    after = [d for d in disagreements if d.ts.timestamp() >= launch and d.call_id in new_intent_calls]

    def examples(items: list[Disagreement], n: int) -> list[dict]:
        return [{"input": d.input, "frontier": d.frontier_output, "small": d.small_output,
                 "confidence": round(d.confidence, 4), "reviewed": d.reviewed_label}
                for d in sorted(items, key=lambda d: -d.confidence)[:n]]
    return {"count": len(disagreements), "before_launch": len(before),
            "examples_before": examples(before, 6), "examples_after": examples(after, 3)}


def frontier_cost(captured: Sequence[CapturedCall], task: TaskSpec) -> dict[str, Any]:
    """The frontier's mean cost and token use per call, from the captured frontier answers."""
    n = len(captured)
    return {"calls": n,
            "usd_per_call": sum(c.cost_usd for c in captured) / n if n else None,
            "prompt_tokens": sum(c.prompt_tokens for c in captured) / n if n else None,
            "completion_tokens": sum(c.completion_tokens for c in captured) / n if n else None,
            "prices": task.prices.model_dump()}
