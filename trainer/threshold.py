"""The threshold: coverage at parity, chosen by the gate's own test without selection bias.

What a task in `small` serves is the small model's answer at or above the threshold and the
frontier's below it. The threshold is the lowest one whose served answers pass the offline
gate's non-inferiority test (services.controller.gate: Tango's paired score test, its margin
and alpha) against the frontier, on every check (the request, and each field of an extraction
task). Searching thresholds and testing on the same items inflates the pass rate, so the search
is a fixed-sequence procedure (Maurer, Hothorn & Lehmacher 1995; Hsu & Berger 1999): the
candidate thresholds are fixed before any label is looked at (confidence quantiles, highest
first), each is tested at the full alpha, and the search stops at the first one that fails; the
threshold is the last that passed. Any wrongly passed threshold implies that the first true
null in the sequence was rejected, which happens with probability at most alpha, so the
family-wise error, and with it the gate's false-pass rate, stays at alpha (docs/DESIGN.md,
bench/bench_threshold.py). The steps are published so that the gate re-runs the sequence
(services.controller.gate.replay, which owns the test of one step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from services.controller.gate import REQUEST, step_passes
from trainer.evaluate import paired_counts

# Candidate thresholds: confidence quantiles at coverage 1/STEPS, 2/STEPS, .., 1 (highest first).
# Fewer steps stop less often on a chance dip; more give a finer coverage. 50 = 2 % steps.
STEPS = 50


@dataclass(frozen=True)
class SearchStep:
    threshold: float
    coverage: float
    kept: int
    passed: bool
    p_value: float  # the largest p-value over the checks (the step passes when it is < alpha)
    tables: dict[str, dict[str, int]]  # per check ("request", "field:<name>"): the served paired table

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "coverage": self.coverage, "kept": self.kept,
                "passed": self.passed, "p_value": self.p_value, "tables": self.tables}


@dataclass(frozen=True)
class ThresholdChoice:
    """The search's outcome; threshold None when even the first (highest) candidate fails."""

    threshold: Optional[float]
    coverage: float
    kept: int
    kept_accuracy: float  # the small model's accuracy on the requests it keeps
    served_accuracy: float  # small at/above the threshold, frontier below
    frontier_accuracy: float
    n: int
    margin: float
    alpha: float
    steps: list[SearchStep] = field(default_factory=list)

    @property
    def predicted_fallback_rate(self) -> float:
        return 1.0 - self.coverage

    def as_dict(self) -> dict[str, Any]:
        return {"method": "fixed-sequence", "threshold": self.threshold, "coverage": self.coverage,
                "kept": self.kept, "kept_accuracy": self.kept_accuracy, "served_accuracy": self.served_accuracy,
                "frontier_accuracy": self.frontier_accuracy, "n": self.n, "margin": self.margin,
                "alpha": self.alpha, "predicted_fallback_rate": self.predicted_fallback_rate}

    def search_record(self) -> dict[str, Any]:
        """What metrics_json carries for the gate: the sequence up to the first failure."""
        return {"method": "fixed-sequence", "margin": self.margin, "alpha": self.alpha, "n": self.n,
                "threshold": self.threshold, "steps": [s.as_dict() for s in self.steps]}


def candidate_thresholds(confidence: np.ndarray, steps: int = STEPS) -> list[float]:
    """Distinct thresholds at coverage k/steps (k = 1..steps), highest first: they depend on the
    confidences only, never on which answers are right, so the sequence is fixed in advance."""
    conf = np.sort(np.asarray(confidence, dtype=np.float64))[::-1]
    if not len(conf):
        return []
    ranks = np.unique(np.ceil(np.arange(1, steps + 1) / steps * len(conf)).astype(int).clip(1, len(conf)))
    out: list[float] = []
    for r in ranks:
        t = float(conf[r - 1])
        if not out or t < out[-1]:
            out.append(t)
    return out


def served_tables(kept: np.ndarray, checks: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, int]]:
    """Per check: the paired table of the served answer (small where kept, else frontier) vs the frontier."""
    out = {}
    for name, (small_ok, frontier_ok) in checks.items():
        served = np.where(kept, small_ok, frontier_ok)
        out[name] = paired_counts(served, frontier_ok).model_dump()
    return out


def search_threshold(confidence: np.ndarray, checks: dict[str, tuple[np.ndarray, np.ndarray]], margin: float,
                     alpha: float, steps: int = STEPS) -> ThresholdChoice:
    """The lowest candidate threshold reached by the fixed sequence (see the module docstring).

    `checks` maps a check's name to (small_ok, frontier_ok) per item; REQUEST must be one of them
    (kept and served accuracy are reported on it)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    checks = {k: (np.asarray(s, dtype=bool), np.asarray(f, dtype=bool)) for k, (s, f) in checks.items()}
    small_ok, frontier_ok = checks[REQUEST]
    n = len(confidence)
    done: list[SearchStep] = []
    chosen: Optional[SearchStep] = None
    for t in candidate_thresholds(confidence, steps):
        kept = confidence >= t
        tables = served_tables(kept, checks)
        passed, p = step_passes(tables, margin, alpha)
        done.append(SearchStep(t, float(kept.mean()), int(kept.sum()), passed, p, tables))
        if not passed:
            break
        chosen = done[-1]
    frontier_acc = float(frontier_ok.mean()) if n else 0.0
    if chosen is None:
        return ThresholdChoice(None, 0.0, 0, 0.0, frontier_acc, frontier_acc, n, margin, alpha, done)
    kept = confidence >= chosen.threshold
    served = np.where(kept, small_ok, frontier_ok)
    return ThresholdChoice(chosen.threshold, chosen.coverage, chosen.kept, float(small_ok[kept].mean()),
                           float(served.mean()), frontier_acc, n, margin, alpha, done)
