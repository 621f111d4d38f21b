"""How often the gate passes a model it should refuse: a simulation of the threshold search.

World "null": the frontier is right with probability `frontier_accuracy`; the small model's
confidence u is uniform on [0, 1]; it is exactly as accurate as the frontier except on its most
confident `deficit_share` of inputs, where it loses `margin / deficit_share`, so it is one
point (the margin) worse overall, and its served answers at every threshold that keeps at
least `deficit_share` are truly `margin` worse than the frontier: every such threshold is a
null of the gate's test, each with its own noise, which is the worst case for a search that
picks the best-looking threshold. Correctness of the two models is independent given u (many
discordant pairs: a noisy table). A pass is false when the true served difference at the chosen
threshold is at or below -margin.

World "parity": the small model is as accurate as the frontier overall, with a confidence that
means something (accuracy rising linearly in u): the served answers are at least as accurate as
the frontier at every threshold, so the pass rate there is the procedure's power.

Procedures, each on the same simulated holdout:
- `target`: the old rule, the lowest threshold whose kept accuracy reaches the frontier's
  accuracy, then the gate's test at it, all on the same items;
- `same_items`: the lowest candidate threshold whose served answers pass the test, on the same
  items (the search without a correction);
- `split`: the same search on a seeded half, the test on the other half;
- `fixed_sequence`: trainer.threshold.search_threshold (what the trainer does).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from services.controller.gate import score_p_value
from trainer.calibrate import choose_threshold
from trainer.threshold import REQUEST, candidate_thresholds, search_threshold

PROCEDURES = ("target", "same_items", "split", "fixed_sequence")


def simulate_holdout(rng: np.random.Generator, n: int, world: str, frontier_accuracy: float, margin: float,
                     deficit_share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, small_ok, frontier_ok) of one simulated holdout."""
    u = rng.random(n)
    frontier_ok = rng.random(n) < frontier_accuracy
    if world == "null":
        p_small = np.where(u >= 1 - deficit_share, frontier_accuracy - margin / deficit_share, frontier_accuracy)
    elif world == "parity":
        p_small = np.clip(frontier_accuracy - 0.1 + 0.2 * u, 0, 1)
    else:
        raise ValueError(f"unknown world {world!r}")
    return u, rng.random(n) < p_small, frontier_ok


def true_served_difference(world: str, threshold: float, margin: float, deficit_share: float) -> float:
    """E[served right] - E[frontier right] at `threshold` (coverage 1 - threshold, u uniform)."""
    coverage = 1.0 - threshold
    if world == "null":
        return -margin * min(coverage, deficit_share) / deficit_share
    return 0.1 * coverage * (1 - coverage)


def _passes(small_ok: np.ndarray, frontier_ok: np.ndarray, kept: np.ndarray, margin: float, alpha: float) -> bool:
    served = np.where(kept, small_ok, frontier_ok)
    b, c = int((served & ~frontier_ok).sum()), int((~served & frontier_ok).sum())
    return score_p_value(b, c, len(served), margin) < alpha


def _lowest_passing(conf, small_ok, frontier_ok, margin, alpha, steps):
    lowest = None
    for t in candidate_thresholds(conf, steps):
        if _passes(small_ok, frontier_ok, conf >= t, margin, alpha):
            lowest = t
    return lowest


def run_procedure(name: str, rng: np.random.Generator, conf: np.ndarray, small_ok: np.ndarray,
                  frontier_ok: np.ndarray, margin: float, alpha: float, steps: int) -> tuple[bool, float | None]:
    """(passed, chosen threshold) of one procedure on one holdout."""
    if name == "target":
        t = choose_threshold(conf, small_ok, float(frontier_ok.mean()), 20).threshold
        return (t is not None and _passes(small_ok, frontier_ok, conf >= t, margin, alpha)), t
    if name == "same_items":
        t = _lowest_passing(conf, small_ok, frontier_ok, margin, alpha, steps)
        return t is not None, t
    if name == "split":
        half = rng.permutation(len(conf)) < len(conf) // 2
        a, b = half, ~half
        t = _lowest_passing(conf[a], small_ok[a], frontier_ok[a], margin, alpha, steps)
        return (t is not None and _passes(small_ok[b], frontier_ok[b], conf[b] >= t, margin, alpha)), t
    if name == "fixed_sequence":
        t = search_threshold(conf, {REQUEST: (small_ok, frontier_ok)}, margin, alpha, steps).threshold
        return t is not None, t
    raise ValueError(f"unknown procedure {name!r}")


def simulate(world: str, *, n: int = 1000, reps: int = 1000, frontier_accuracy: float = 0.92,
             margin: float = 0.01, alpha: float = 0.05, deficit_share: float = 0.05, steps: int = 50,
             seed: int = 7, procedures: tuple[str, ...] = PROCEDURES) -> dict[str, Any]:
    """Per procedure: pass rate, false-pass rate (pass with a true served difference <= -margin),
    mean coverage when passed, over `reps` simulated holdouts of `n` items."""
    rng = np.random.default_rng(seed)
    counts = {p: {"passed": 0, "false_pass": 0, "coverage_sum": 0.0} for p in procedures}
    for _ in range(reps):
        conf, small_ok, frontier_ok = simulate_holdout(rng, n, world, frontier_accuracy, margin, deficit_share)
        for p in procedures:
            passed, t = run_procedure(p, rng, conf, small_ok, frontier_ok, margin, alpha, steps)
            if passed:
                counts[p]["passed"] += 1
                counts[p]["coverage_sum"] += 1.0 - t
                if true_served_difference(world, t, margin, deficit_share) <= -margin + 1e-12:
                    counts[p]["false_pass"] += 1
    out = {}
    for p, c in counts.items():
        out[p] = {"pass_rate": c["passed"] / reps, "false_pass_rate": c["false_pass"] / reps,
                  "mean_coverage_when_passed": c["coverage_sum"] / c["passed"] if c["passed"] else None}
    return {"world": world, "n": n, "reps": reps, "frontier_accuracy": frontier_accuracy, "margin": margin,
            "alpha": alpha, "deficit_share": deficit_share, "steps": steps, "seed": seed, "procedures": out}
