"""The watch after cutover: does a task in `small` still behave the way the gate promised?

One `Window` per cutover episode (the `small` decision's id), fed with the task's small-mode
router outcomes and with sampled answers (small-mode calls also sent to the frontier) joined to
the frontier's captured answer. The window keeps the last `window_size` outcomes that are no
older than `window_max_age_s` (event time, so a replay assesses the same way). `assess` is pure
and calls a breach when any of these holds, each needing both an effect and significance:
- fallback: the threshold-fallback rate is at least `fallback_limit(predicted)` and a one-sided
  binomial test says it is above the predicted rate (p < watch_alpha), with >= min_window outcomes;
- confidence: the window's mean confidence is `confidence_drop` below the episode's first
  `min_window` confidences and a two-sample KS test says the distributions differ (p < watch_alpha);
- sampled accuracy: agreement with the frontier on >= min_sampled sampled answers is
  `accuracy_drop` below what the gate measured, and a one-sided binomial test agrees.
Only fallbacks for low confidence count (a Triton error is an outage, not drift).
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
from scipy.stats import binomtest, ks_2samp

from services.common.contracts import ModelRegistered, RouterOutcome, RoutingDecision
from services.controller.gate import Check, expected_kept_agreement, fallback_limit
from services.controller.settings import ControllerSettings


@dataclass(frozen=True)
class Promise:
    """What the cutover promised for one episode: the figures the watch holds the task to."""

    episode: str
    task: str
    model_version: Optional[str]
    threshold: Optional[float]
    since: float  # the cutover's time (epoch seconds); earlier outcomes belong to another episode
    predicted_fallback_rate: Optional[float]
    expected_agreement: Optional[float]
    expected_source: str


def promise_of(decision: RoutingDecision, model: Optional[ModelRegistered]) -> Promise:
    """The promise of a `small` decision: its own evidence first, then the registered model's."""
    try:
        evidence = json.loads(decision.evidence or "{}")
    except json.JSONDecodeError:
        evidence = {}
    predicted = decision.predicted_fallback_rate
    if predicted is None and model is not None:
        predicted = model.predicted_fallback_rate
    live = evidence.get("kept_agreement") if isinstance(evidence, dict) else None
    if isinstance(live, (int, float)):
        expected, source = float(live), "shadow gate kept_agreement"
    elif model is not None:
        expected, source = expected_kept_agreement(model)
    else:
        expected, source = None, "none"
    return Promise(decision.decision_id, decision.task, decision.model_version, decision.threshold,
                   decision.ts.timestamp(), predicted, expected, source)


@dataclass
class Window:
    promise: Promise
    outcomes: deque = field(default_factory=deque)  # (ts, confidence or None, low-confidence fallback)
    sampled: deque = field(default_factory=deque)  # (ts, agreed)
    reference: list[float] = field(default_factory=list)  # the episode's first confidences
    seen: int = 0
    breached: bool = False


def observe_outcome(window: Window, outcome: RouterOutcome, settings: ControllerSettings) -> bool:
    """Add a router outcome to the window when it belongs to this episode; True when counted."""
    p = window.promise
    ts = outcome.ts.timestamp()
    if outcome.mode != "small" or outcome.task != p.task or ts < p.since:
        return False
    if p.model_version and outcome.model_version and outcome.model_version != p.model_version:
        return False
    if outcome.served_by == "fallback":
        if outcome.fallback_reason != settings.low_confidence_reason:
            return False
        low = True
    elif outcome.served_by == "small":
        low = False
    else:
        return False
    window.outcomes.append((ts, outcome.confidence, low))
    while len(window.outcomes) > settings.window_size:
        window.outcomes.popleft()
    if outcome.confidence is not None and len(window.reference) < settings.min_window:
        window.reference.append(outcome.confidence)
    window.seen += 1
    _prune(window, ts, settings)
    return True


def observe_sampled(window: Window, ts: float, agreed: bool, settings: ControllerSettings) -> None:
    window.sampled.append((ts, agreed))
    while len(window.sampled) > settings.sampled_window:
        window.sampled.popleft()
    _prune(window, ts, settings)


def _prune(window: Window, newest: float, settings: ControllerSettings) -> None:
    oldest = newest - settings.window_max_age_s
    for q in (window.outcomes, window.sampled):
        while q and q[0][0] < oldest:
            q.popleft()


@dataclass(frozen=True)
class Assessment:
    breach: bool
    checks: tuple[Check, ...]
    evidence: dict[str, Any]

    @property
    def reason(self) -> str:
        fails = [c.detail for c in self.checks if c.status == "fail"]
        return "drift: " + "; ".join(fails) if fails else "within what the gate promised"

    def as_evidence(self) -> dict[str, Any]:
        return {**self.evidence, "checks": [asdict(c) for c in self.checks]}


def assess(window: Window, settings: ControllerSettings) -> Assessment:
    """Compare the window with the episode's promise (pure; cheap unless an effect shows)."""
    checks = (_fallback(window, settings), _confidence(window, settings), _sampled(window, settings))
    breach = any(c.status == "fail" for c in checks)
    return Assessment(breach, checks, window_evidence(window, settings) if breach else {})


def window_evidence(window: Window, settings: ControllerSettings) -> dict[str, Any]:
    p = window.promise
    return {"gate": "watch", "episode": p.episode, "model_version": p.model_version, "threshold": p.threshold,
            "window": len(window.outcomes), "window_size": settings.window_size, "min_window": settings.min_window,
            "window_max_age_s": settings.window_max_age_s, "sampled": len(window.sampled),
            "predicted_fallback_rate": p.predicted_fallback_rate, "expected_agreement": p.expected_agreement,
            "expected_source": p.expected_source, "confidence": confidence_summary(window)}


def _fallback(window: Window, settings: ControllerSettings) -> Check:
    predicted = window.promise.predicted_fallback_rate
    n = len(window.outcomes)
    if predicted is None:
        return Check("fallback", "n/a", "no predicted fallback rate for this cutover")
    if n < settings.min_window:
        return Check("fallback", "pending", f"{n} small-mode outcomes in the window (minimum {settings.min_window})",
                     settings.min_window - n)
    low = sum(1 for _, _, f in window.outcomes if f)
    rate, limit = low / n, fallback_limit(predicted, settings)
    figures = (f"fallback rate {rate:.3f} over the last {n} small-mode requests vs predicted {predicted:.3f} "
               f"(breach at {limit:.3f})")
    if rate < limit:
        return Check("fallback", "pass", figures)
    p = float(binomtest(low, n, min(max(predicted, 1e-9), 1 - 1e-9), alternative="greater").pvalue)
    if p < settings.watch_alpha:
        return Check("fallback", "fail", f"{figures}, p = {p:.2g}")
    return Check("fallback", "pass", f"{figures}, not significant (p = {p:.2g})")


def _confidence(window: Window, settings: ControllerSettings) -> Check:
    current = np.array([c for _, c, _ in window.outcomes if c is not None], dtype=float)
    reference = np.array(window.reference, dtype=float)
    if len(reference) < settings.min_window or len(current) < settings.min_window:
        return Check("confidence", "pending", f"{len(current)} confidences in the window, reference "
                     f"{len(reference)} (minimum {settings.min_window})")
    drop = float(reference.mean() - current.mean())
    figures = f"mean confidence {current.mean():.3f} vs {reference.mean():.3f} at cutover (drop {drop:+.3f})"
    if drop < settings.confidence_drop:
        return Check("confidence", "pass", figures)
    p = float(ks_2samp(reference, current).pvalue)
    if p < settings.watch_alpha:
        return Check("confidence", "fail", f"confidence fell: {figures}, KS p = {p:.2g}")
    return Check("confidence", "pass", f"{figures}, not significant (KS p = {p:.2g})")


def _sampled(window: Window, settings: ControllerSettings) -> Check:
    expected = window.promise.expected_agreement
    m = len(window.sampled)
    if expected is None:
        return Check("sampled_accuracy", "n/a", "no agreement level from the gate to hold the task to")
    if m < settings.min_sampled:
        return Check("sampled_accuracy", "pending", f"{m} sampled answers compared with the frontier "
                     f"(minimum {settings.min_sampled})", settings.min_sampled - m)
    agreed = sum(1 for _, a in window.sampled if a)
    rate, floor = agreed / m, expected - settings.accuracy_drop
    figures = (f"sampled agreement with the frontier {rate:.3f} on {m} vs {expected:.3f} at the gate "
               f"(breach at {floor:.3f})")
    if rate > floor:
        return Check("sampled_accuracy", "pass", figures)
    p = float(binomtest(agreed, m, min(max(expected, 1e-9), 1 - 1e-9), alternative="less").pvalue)
    if p < settings.watch_alpha:
        return Check("sampled_accuracy", "fail", f"{figures}, p = {p:.2g}")
    return Check("sampled_accuracy", "pass", f"{figures}, not significant (p = {p:.2g})")


def confidence_summary(window: Window) -> dict[str, Any]:
    """Quantiles and a 10-bin histogram of the window's confidences (the evidence's picture)."""
    conf = np.array([c for _, c, _ in window.outcomes if c is not None], dtype=float)
    if not len(conf):
        return {"n": 0}
    q = np.quantile(conf, [0.1, 0.25, 0.5, 0.75, 0.9])
    hist, _ = np.histogram(np.clip(conf, 0.0, 1.0), bins=10, range=(0.0, 1.0))
    below = sum(1 for c in conf if window.promise.threshold is not None and c < window.promise.threshold)
    return {"n": int(len(conf)), "mean": round(float(conf.mean()), 4),
            "quantiles": dict(zip(("p10", "p25", "p50", "p75", "p90"), (round(float(x), 4) for x in q))),
            "histogram": hist.tolist(), "below_threshold": below,
            "reference_mean": round(float(np.mean(window.reference)), 4) if window.reference else None}


def same_output(a: Optional[str], b: Optional[str]) -> bool:
    """Equal answers: the same label, or JSON objects with the same fields (as the judge compares)."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    if a[:1] == "{" and b[:1] == "{":
        try:
            return json.loads(a) == json.loads(b)
        except json.JSONDecodeError:
            return False
    return False
