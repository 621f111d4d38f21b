"""Extraction figures shared by the extraction demo and bench/bench_extraction.py: per-field scores
of the small model and the frontier against gold, coverage at parity, latency percentiles, and
one PNG (per-field span-F1 bars beside the coverage / kept-accuracy curve).

Pure functions over plain lists (gold, small and frontier answers as the task's JSON strings,
the small model's request confidence = its least confident field), so both callers measure the
same way the trainer does (trainer.extraction.evaluate, trainer.calibrate).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from trainer import calibrate
from trainer.extraction import evaluate as ev

SIMULATOR_NOTE = ("the frontier is graduate's SIMULATOR (services.frontier_sim.extraction: configured per-field "
                  "error rates, deterministic per input), not a real LLM")


def per_field_table(fields: Sequence[str], gold: Sequence[str], small: Sequence[str],
                    frontier: Sequence[Optional[str]]) -> dict[str, Any]:
    """Per field: span-F1 and exact match of small and frontier, the always-null baseline; per request
    exact match of both, agreement and the paired table (a missing frontier answer counts as all-null)."""
    g = [ev.values_of(x, fields) for x in gold]
    s = [ev.values_of(x, fields) for x in small]
    f = [ev.values_of(x, fields) for x in frontier]
    null = [{name: None for name in fields} for _ in g]
    table = {}
    for name in fields:
        sm, fr, nl = ev.field_scores(g, s, name), ev.field_scores(g, f, name), ev.field_scores(g, null, name)
        table[name] = {"span_f1_small": round(sm["span_f1"], 4), "span_f1_frontier": round(fr["span_f1"], 4),
                       "span_f1_always_null": round(nl["span_f1"], 4),
                       "exact_match_small": round(sm["exact_match"], 4),
                       "exact_match_frontier": round(fr["exact_match"], 4),
                       "exact_match_always_null": round(nl["exact_match"], 4),
                       "agreement": round(float(np.mean(ev.field_correct(f, s, name))), 4) if g else None,
                       "gold_values": sm["support"]}
    small_ok, frontier_ok = ev.request_correct(g, s), ev.request_correct(g, f)
    null_ok = ev.request_correct(g, null)
    n = len(g)
    return {"n": n, "per_field": table,
            "request_exact_match_small": round(float(small_ok.mean()), 4) if n else None,
            "request_exact_match_frontier": round(float(frontier_ok.mean()), 4) if n else None,
            "request_exact_match_always_null": round(float(null_ok.mean()), 4) if n else None,
            "agreement": round(float(ev.request_correct(f, s).mean()), 4) if n else None,
            "macro_span_f1_small": round(float(np.mean([table[x]["span_f1_small"] for x in fields])), 4),
            "macro_span_f1_frontier": round(float(np.mean([table[x]["span_f1_frontier"] for x in fields])), 4)}


def request_correct(fields: Sequence[str], gold: Sequence[str], answers: Sequence[Optional[str]]) -> np.ndarray:
    return ev.request_correct([ev.values_of(x, fields) for x in gold], [ev.values_of(x, fields) for x in answers])


def coverage_at_parity(confidence: np.ndarray, small_ok: np.ndarray, frontier_ok: np.ndarray,
                       min_kept: int = 20) -> dict[str, Any]:
    """The lowest threshold at which the small model's exact match on the requests it keeps is at least
    the frontier's on all of them (the trainer's rule), its coverage, and the served table there."""
    target = float(frontier_ok.mean()) if len(frontier_ok) else 1.0
    choice = calibrate.choose_threshold(confidence, small_ok, target, min_kept)
    out = {"target_frontier_exact_match": round(target, 4), "threshold": choice.threshold,
           "coverage": round(choice.coverage, 4), "kept": choice.kept, "kept_exact_match": round(choice.kept_accuracy, 4),
           "predicted_fallback_rate": round(1 - choice.coverage, 4) if choice.threshold is not None else None}
    if choice.threshold is not None:
        keep = confidence >= choice.threshold
        served_ok = np.where(keep, small_ok, frontier_ok)
        out["served_exact_match"] = round(float(served_ok.mean()), 4)
    return out


def percentiles(samples_ms: Sequence[float]) -> dict[str, Any]:
    if not samples_ms:
        return {"n": 0, "p50": None, "p95": None}
    a = np.asarray(samples_ms, dtype=float)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "mean": round(float(a.mean()), 1)}


def draw(path: Path, fields: Sequence[str], table: dict[str, Any], confidence: Optional[np.ndarray],
         small_ok: Optional[np.ndarray], frontier_ok: Optional[np.ndarray], title: str,
         threshold: Optional[float] = None) -> bool:
    """Per-field span-F1 bars (small, simulated frontier, always-null) and, when confidences are given,
    coverage and kept exact match against the threshold with the frontier's exact match as parity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve_panel = confidence is not None and small_ok is not None and len(confidence) > 0
    figure, axes = plt.subplots(1, 2 if curve_panel else 1, figsize=(13 if curve_panel else 7, 4.4))
    ax = axes[0] if curve_panel else axes
    x = np.arange(len(fields))
    width = 0.38
    small = [table["per_field"][f]["span_f1_small"] for f in fields]
    front = [table["per_field"][f]["span_f1_frontier"] for f in fields]
    ax.bar(x - width / 2, small, width, color="#2a9d8f", label="small model (MiniLM, BIO tags)")
    ax.bar(x + width / 2, front, width, color="#e76f51", label="frontier (SIMULATOR)")
    for i, (a, b) in enumerate(zip(small, front)):
        ax.text(i - width / 2, a + 0.005, f"{a:.3f}", ha="center", va="bottom", fontsize=7)
        ax.text(i + width / 2, b + 0.005, f"{b:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, list(fields))
    low = min(small + front)
    ax.set_ylim(max(0.0, min(low - 0.08, 0.8)), 1.02)
    ax.set_ylabel(f"span-F1 vs gold (n={table['n']:,}; always-null = 0)")
    ax.set_title("per-field span-F1")
    ax.legend(loc="lower right", fontsize=8)
    if curve_panel:
        curve = calibrate.coverage_accuracy_curve(np.asarray(confidence), np.asarray(small_ok))
        ax2 = axes[1]
        ax2.plot(curve.threshold, curve.coverage, color="#264653", label="coverage (share served by the small model)")
        ax2.plot(curve.threshold, curve.kept_accuracy, color="#2a9d8f", label="small exact match on kept requests")
        if frontier_ok is not None and len(frontier_ok):
            ax2.axhline(float(np.mean(frontier_ok)), color="#e76f51", ls="--",
                        label=f"frontier (SIMULATOR) exact match {np.mean(frontier_ok):.3f}")
        if threshold is not None:
            ax2.axvline(threshold, color="grey", ls=":", label=f"threshold at parity {threshold:.3f}")
        ax2.set_xlabel("confidence threshold (least confident field)")
        ax2.set_ylim(0.0, 1.02)
        ax2.set_title("coverage and kept exact match vs threshold")
        ax2.legend(loc="lower left", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
