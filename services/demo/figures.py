"""The report's figures, as plain functions over what the client saw and what the topics hold.

Accuracy is measured against Banking77's own labels (the gold), with Wilson 95 % intervals;
latency is what the calling service measured end to end through the router; costs use the
simulated frontier's token counts at the task's prices plus the stated fixed costs of owning a model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int

    @property
    def value(self) -> Optional[float]:
        return self.hits / self.n if self.n else None

    def interval(self) -> tuple[Optional[float], Optional[float]]:
        """Wilson score interval, 95 %."""
        if not self.n:
            return None, None
        p, n = self.hits / self.n, self.n
        centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def text(self) -> str:
        if not self.n:
            return "n/a"
        lo, hi = self.interval()
        return f"{self.value:.1%} (95% CI {lo:.1%}–{hi:.1%}, n={self.n:,})"

    def as_dict(self) -> dict:
        lo, hi = self.interval()
        return {"hits": self.hits, "n": self.n, "value": self.value, "ci95": [lo, hi]}


def rate(flags: Iterable[bool]) -> Rate:
    values = list(flags)
    return Rate(sum(bool(v) for v in values), len(values))


@dataclass(frozen=True)
class Latency:
    path: str
    n: int
    p50_ms: Optional[float]
    p95_ms: Optional[float]
    mean_ms: Optional[float]


def latency(path: str, values_ms: Sequence[float]) -> Latency:
    if not values_ms:
        return Latency(path, 0, None, None, None)
    arr = np.asarray(values_ms, dtype=float)
    return Latency(path, len(arr), float(np.percentile(arr, 50)), float(np.percentile(arr, 95)), float(arr.mean()))


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Accuracy of `a` minus that of `b` on the same items, with a 95 % normal-approximation interval."""
    n = len(a)
    if not n:
        return {"value": None, "ci95": [None, None], "a_only": 0, "b_only": 0, "n": 0}
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    d = (a_only - b_only) / n
    se = math.sqrt(max(a_only + b_only - (a_only - b_only) ** 2 / n, 0.0)) / n
    return {"value": d, "ci95": [d - Z95 * se, d + Z95 * se], "a_only": a_only, "b_only": b_only, "n": n}


def with_fallback(small: Sequence[tuple[str, float]], frontier: Sequence[Optional[str]], threshold: float) -> list[Optional[str]]:
    """What small mode serves: the small model's label at or above the threshold, else the frontier's answer."""
    return [label if conf >= threshold else f for (label, conf), f in zip(small, frontier)]


def coverage_curve(confidence: Sequence[float], correct: Sequence[bool], points: int = 60) -> list[dict[str, float]]:
    """Keeping answers with confidence >= t: the share kept and their accuracy, for thresholds over [0, 1]."""
    conf, ok = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    out = []
    for t in np.linspace(0.0, 1.0, points + 1):
        kept = conf >= t
        if kept.sum() == 0:
            break
        out.append({"threshold": float(t), "coverage": float(kept.mean()), "kept_accuracy": float(ok[kept].mean())})
    return out


def rolling_rate(flags: Sequence[bool], window: int) -> list[float]:
    """The share of True over the last `window` items, at each item (shorter at the start)."""
    out, acc = [], 0
    for i, f in enumerate(flags):
        acc += bool(f)
        if i >= window:
            acc -= bool(flags[i - window])
        out.append(acc / min(i + 1, window))
    return out


@dataclass(frozen=True)
class CostAssumptions:
    calls_per_day: int
    instance_usd_per_hour: float
    serving_instances: int
    training_runs_per_month: float
    training_run_usd: float
    ops_usd_per_month: float
    sample_rate: float
    days_per_month: float = 30.0
    hours_per_month: float = 730.0

    @property
    def fixed_usd_per_month(self) -> float:
        return (self.instance_usd_per_hour * self.serving_instances * self.hours_per_month
                + self.training_runs_per_month * self.training_run_usd + self.ops_usd_per_month)


@dataclass(frozen=True)
class CostComparison:
    frontier_usd_per_call: float
    fallback_rate: float
    frontier_only_per_1k: float
    graduated_per_1k: float
    frontier_only_per_month: float
    graduated_per_month: float
    graduated_variable_per_month: float
    fixed_per_month: float
    saving_per_month: float
    break_even_calls_per_day: Optional[float]

    def as_dict(self) -> dict:
        return asdict(self)


def compare_costs(frontier_usd_per_call: float, fallback_rate: float, a: CostAssumptions) -> CostComparison:
    """Frontier-only against graduated (fallback and sampled calls still paid, plus owning the model)."""
    calls_month = a.calls_per_day * a.days_per_month
    still_paid = min(1.0, fallback_rate + a.sample_rate)  # sampled calls go to the frontier as well
    variable = frontier_usd_per_call * still_paid * calls_month
    frontier_month = frontier_usd_per_call * calls_month
    graduated_month = variable + a.fixed_usd_per_month
    saved_per_call = frontier_usd_per_call * (1 - still_paid)
    break_even = a.fixed_usd_per_month / (saved_per_call * a.days_per_month) if saved_per_call > 0 else None
    return CostComparison(
        frontier_usd_per_call=frontier_usd_per_call, fallback_rate=fallback_rate,
        frontier_only_per_1k=frontier_usd_per_call * 1000, graduated_per_1k=graduated_month / calls_month * 1000,
        frontier_only_per_month=frontier_month, graduated_per_month=graduated_month,
        graduated_variable_per_month=variable, fixed_per_month=a.fixed_usd_per_month,
        saving_per_month=frontier_month - graduated_month, break_even_calls_per_day=break_even)
