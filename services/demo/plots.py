"""The report's four plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from services.demo import figures as fig  # noqa: E402

COLOURS = {"small": "#2a9d8f", "fallback": "#e9c46a", "frontier": "#e76f51"}
WINDOW = 100


def draw_all(facts: dict, figures: dict, folder: Path) -> dict[str, str]:
    made = {}
    for name, draw in (("latency", latency_histograms), ("coverage", coverage_curve),
                       ("fallback", fallback_over_time), ("cost", cost_comparison)):
        path = folder / f"{name}.png"
        try:
            if draw(facts, figures, path):
                made[name] = path.name
        except Exception as exc:  # noqa: BLE001 - a missing plot must not lose the page
            print(f"plot {name} skipped: {exc}")
        finally:
            plt.close("all")
    return made


def latency_histograms(facts: dict, figures: dict, path: Path) -> bool:
    samples = {k: v for k, v in figures["latency_samples"].items() if v}
    if not samples:
        return False
    lo = max(min(min(v) for v in samples.values()), 0.5)
    hi = max(max(v) for v in samples.values())
    bins = np.logspace(np.log10(lo), np.log10(hi * 1.05), 60)
    fig_, ax = plt.subplots(figsize=(8, 4))
    for name in ("frontier", "fallback", "small"):  # the big frontier sample first, so it hides nothing
        if name not in samples:
            continue
        values, lat = samples[name], figures["latency"][name]
        ax.hist(values, bins=bins, alpha=0.75, color=COLOURS[name], histtype="stepfilled" if name != "fallback" else "step",
                lw=2,
                label=f"{name} (n={lat['n']:,}, p50 {lat['p50_ms']:,.0f} ms, p95 {lat['p95_ms']:,.0f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency seen by the calling service, ms (log scale)")
    ax.set_ylabel("requests")
    ax.set_title("Latency per path (frontier = the SIMULATOR's 400–900 ms)")
    ax.legend(fontsize=8)
    fig_.tight_layout()
    fig_.savefig(path, dpi=110)
    return True


def coverage_curve(facts: dict, figures: dict, path: Path) -> bool:
    registered = (facts.get("training") or {}).get("registered") or {}
    try:
        import json

        holdout = json.loads(registered.get("metrics_json") or "{}").get("curve") or []
    except ValueError:
        holdout = []
    live = figures.get("live_curve") or []
    if not holdout and not live:
        return False
    fig_, ax = plt.subplots(figsize=(7, 4.5))
    if holdout:
        ax.plot([p["coverage"] for p in holdout], [p["kept_accuracy"] for p in holdout], "o-", ms=3,
                label="holdout (gold: reviewed labels, else the frontier's)")
    if live:
        ax.plot([p["coverage"] for p in live], [p["kept_accuracy"] for p in live], "s-", ms=3,
                label="live test traffic (gold: Banking77 labels)")
    t = figures.get("threshold")
    if t is not None and registered:
        ax.scatter([registered.get("coverage")], [registered.get("kept_accuracy")], s=120, marker="*", color="black",
                   zorder=5, label=f"chosen threshold {t:.3f}: coverage {registered.get('coverage', 0):.1%}")
    frontier = (figures["gold"].get("frontier") or {}).get("value")
    if frontier:
        ax.axhline(frontier, color=COLOURS["frontier"], ls="--", lw=1, label=f"SIMULATED frontier, live gold {frontier:.1%}")
    ax.set_xlabel("coverage (share of requests the small model keeps)")
    ax.set_ylabel("accuracy on the kept requests")
    ax.set_title("Coverage–accuracy: keeping answers with confidence ≥ t")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig_.tight_layout()
    fig_.savefig(path, dpi=110)
    return True


def fallback_over_time(facts: dict, figures: dict, path: Path) -> bool:
    """Small-mode requests in order (the x axis counts them, so the retrain's minutes without small-mode
    traffic take a fixed gap): the cutover, the drift, the demotion, and small mode again after the retrain."""
    task = facts["meta"]["settings"]["task"]

    def small_mode(phases: tuple[str, ...]) -> list[dict]:
        return sorted((c for c in facts.get("calls", []) if c["task"] == task and c["ok"] and c["phase"] in phases
                       and c["served_by"] in ("small", "fallback")), key=lambda c: c["started"])
    calls = small_mode(("small", "drift"))
    if len(calls) < 10:
        return False
    after = small_mode(("retrain-shadow", "retrain-small"))  # small mode again, the retrained version: its own window
    gap = max(len(calls) // 8, 20)
    fig_, ax = plt.subplots(figsize=(9, 4))
    for i, (segment, start) in enumerate(((calls, 0), (after, len(calls) + gap))):
        if not segment:
            continue
        x = list(range(start, start + len(segment)))
        ax.plot(x, fig.rolling_rate([c["served_by"] == "fallback" for c in segment], WINDOW), color=COLOURS["fallback"],
                lw=2, label=f"fallback rate (last {WINDOW} small-mode requests)" if i == 0 else None)
        ax.plot(x, fig.rolling_rate([c["drift"] for c in segment], WINDOW), color="grey", lw=1, ls=":",
                label="share of requests about the launch's new intents" if i == 0 else None)
    predicted = figures["fallback"]["predicted"]
    if predicted is not None:
        ax.hlines(predicted, 0, len(calls), color="black", ls="--", lw=1, label=f"predicted by calibration {predicted:.1%}")
    launch = next((i for i, c in enumerate(calls) if c["phase"] == "drift"), None)
    if launch is not None:
        ax.axvline(launch, color="red", lw=1.5, label="launch: intents held out of training arrive")
    drift = facts.get("drift") or {}
    if drift.get("demoted_at"):
        ax.axvline(len(calls), color="purple", lw=1.5, ls="-.", label="controller demotes to shadow, asks for a retrain")
    retrain = figures.get("retrain") or {}
    if after:
        seconds = retrain.get("training_seconds")
        ax.axvspan(len(calls), len(calls) + gap, color="grey", alpha=0.12)
        ax.text(len(calls) + gap / 2, 0.95, "retrain" + (f"\n{seconds:.0f} s" if seconds else ""), ha="center",
                va="top", fontsize=7)
        ax.axvline(len(calls) + gap, color="green", lw=1.5, ls="-.",
                   label=f"retrained version {retrain.get('version')} passes both gates: small again")
        predicted_new = (retrain.get("fallback") or {}).get("predicted")
        if predicted_new is not None:
            ax.hlines(predicted_new, len(calls) + gap, len(calls) + gap + len(after), color="blue", ls="--", lw=1,
                      label=f"predicted for version {retrain.get('version')} {predicted_new:.1%}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("small-mode requests, in order")
    ax.set_ylabel("rate")
    ax.set_title("Fallback rate in small mode: drift, demotion, retrain, small mode again")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig_.tight_layout()
    fig_.savefig(path, dpi=110)
    return True


def cost_comparison(facts: dict, figures: dict, path: Path) -> bool:
    cost: dict[str, Any] = figures.get("cost") or {}
    if not cost:
        return False
    per_day = facts["meta"]["settings"]["calls_per_day"]
    fig_, ax = plt.subplots(figsize=(6, 4))
    ax.bar(["frontier only"], [cost["frontier_only_per_month"]], color=COLOURS["frontier"])
    ax.bar(["graduated"], [cost["graduated_variable_per_month"]], color=COLOURS["fallback"],
           label="frontier calls still paid (fallback + sampled)")
    ax.bar(["graduated"], [cost["fixed_per_month"]], bottom=[cost["graduated_variable_per_month"]],
           color=COLOURS["small"], label="owning the small model (serving, training, ops)")
    for i, total in enumerate((cost["frontier_only_per_month"], cost["graduated_per_month"])):
        ax.text(i, total, f"${total:,.0f}", ha="center", va="bottom")
    ax.set_ylabel("USD per month")
    ax.set_ylim(0, cost["frontier_only_per_month"] * 1.35)
    ax.set_title(f"Cost at {per_day:,} calls/day (frontier prices of the task; SIMULATED token counts)", fontsize=9)
    ax.legend(fontsize=8)
    fig_.tight_layout()
    fig_.savefig(path, dpi=110)
    return True
