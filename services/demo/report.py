"""demo-report/: one page (README.md) with the demo's figures and four plots, from the run's facts.

`write_report(facts, folder)` is a pure function of `facts` (also saved there as facts.json), so
the page can be rebuilt without running the demo again: `python -m services.demo.report FOLDER`.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from services.demo import figures as fig
from services.demo import plots

SIM = "frontier SIMULATOR"


def _pct(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}%}"


def _ms(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:,.0f} ms" if x >= 100 else f"{x:,.1f} ms"


def _usd(x: Optional[float], digits: int = 0) -> str:
    return "n/a" if x is None else f"${x:,.{digits}f}"


def calls_of(facts: dict, phase: str, task: Optional[str] = None) -> list[dict]:
    task = task or facts["meta"]["settings"]["task"]
    return [c for c in facts.get("calls", []) if c["phase"] == phase and c["task"] == task and c["ok"]]


def compute(facts: dict) -> dict[str, Any]:
    """Every figure the page shows (also written to headline.json for tests and dashboards)."""
    s = facts["meta"]["settings"]
    registered = (facts.get("training") or {}).get("registered") or {}
    threshold = next((d["threshold"] for d in facts.get("decisions", []) if d["mode"] == "small"),
                     registered.get("threshold"))
    small_answers = facts.get("small_answers") or {}
    frontier_answers = facts.get("frontier_answers") or {}
    shadow = [c for c in calls_of(facts, "shadow") if c["served_by"] == "frontier"]
    small = [c for c in calls_of(facts, "small") if c["served_by"] in ("small", "fallback")]
    drift = calls_of(facts, "drift")
    out: dict[str, Any] = {"threshold": threshold}

    # accuracy against Banking77's labels, paired: the same test requests answered by each system
    paired = [c for c in shadow + small if c["call_id"] in small_answers and c["call_id"] in frontier_answers]
    gold: dict[str, Any] = {"n_shadow": sum(c["phase"] == "shadow" for c in paired),
                            "n_small": sum(c["phase"] == "small" for c in paired),
                            "frontier_asked_directly": facts.get("frontier_answers_asked_directly", 0)}
    if paired:
        answers = [tuple(small_answers[c["call_id"]]) for c in paired]
        frontier = [frontier_answers[c["call_id"]] for c in paired]
        gold["frontier"] = fig.rate(f == c["gold"] for f, c in zip(frontier, paired)).as_dict()
        gold["small"] = fig.rate(a[0] == c["gold"] for a, c in zip(answers, paired)).as_dict()
        if threshold is not None:
            would = fig.with_fallback(answers, frontier, threshold)
            served = [c["output"] if c["phase"] == "small" else w for c, w in zip(paired, would)]
            ok_served = [o == c["gold"] for o, c in zip(served, paired)]
            ok_frontier = [f == c["gold"] for f, c in zip(frontier, paired)]
            gold["small_with_fallback"] = fig.rate(ok_served).as_dict()
            gold["difference"] = fig.paired_difference(ok_served, ok_frontier)
            gold["coverage"] = fig.rate(a[1] >= threshold for a in answers).as_dict()
        out["live_curve"] = fig.coverage_curve([a[1] for a in answers], [a[0] == c["gold"] for a, c in zip(answers, paired)])
    if small:
        gold["live_small_mode"] = fig.rate(c["output"] == c["gold"] for c in small).as_dict()
    out["gold"] = gold

    # fallback: predicted by calibration on the holdout, observed live before and during the drift
    before = fig.rate(c["served_by"] == "fallback" for c in small)
    in_small_drift = [c for c in drift if c["served_by"] in ("small", "fallback")]
    out["fallback"] = {"predicted": registered.get("predicted_fallback_rate"), "observed": before.as_dict(),
                       "during_drift": fig.rate(c["served_by"] == "fallback" for c in in_small_drift).as_dict(),
                       "holdout_coverage": registered.get("coverage")}

    # latency per path, as the calling service saw it
    frontier_ms = [c["latency_ms"] for p in ("capture", "shadow") for c in calls_of(facts, p) if c["served_by"] == "frontier"]
    paths = {"small": [c["latency_ms"] for c in calls_of(facts, "small") if c["served_by"] == "small"],
             "fallback": [c["latency_ms"] for c in calls_of(facts, "small") if c["served_by"] == "fallback"],
             "frontier": frontier_ms}
    lat = {k: fig.latency(k, v).__dict__ for k, v in paths.items()}
    small_p50, front_p50 = lat["small"]["p50_ms"], lat["frontier"]["p50_ms"]
    out["latency"] = lat | {"ratio_p50": front_p50 / small_p50 if small_p50 and front_p50 else None,
                            "ratio_p95": (lat["frontier"]["p95_ms"] / lat["small"]["p95_ms"]
                                          if lat["small"]["p95_ms"] and lat["frontier"]["p95_ms"] else None)}
    out["latency_samples"] = paths

    # cost at calls_per_day
    per_call = (facts.get("frontier_cost") or {}).get("usd_per_call")
    if per_call:
        assumptions = fig.CostAssumptions(
            calls_per_day=s["calls_per_day"], instance_usd_per_hour=s["instance_usd_per_hour"],
            serving_instances=s["serving_instances"], training_runs_per_month=s["training_runs_per_month"],
            training_run_usd=s["training_run_usd"], ops_usd_per_month=s["ops_usd_per_month"],
            sample_rate=s["small_sample_rate"])
        predicted = registered.get("predicted_fallback_rate")
        rate, basis = ((before.value, "fallback rate observed in small mode") if before.n else
                       (predicted, "fallback rate predicted on the holdout (no small-mode traffic)"))
    if per_call and rate is not None and rate < 1.0:
        out["cost"] = fig.compare_costs(per_call, rate, assumptions).as_dict() | {"basis": basis,
            "fixed_breakdown": {"serving": s["instance_usd_per_hour"] * s["serving_instances"] * assumptions.hours_per_month,
                                "training": s["training_runs_per_month"] * s["training_run_usd"],
                                "ops": s["ops_usd_per_month"]}}

    # the drift episode
    d = facts.get("drift") or {}
    if d.get("started"):
        ordered = sorted(drift, key=lambda c: c["started"])
        demoted = d.get("demoted_at")
        before_demotion = [c for c in ordered if demoted is None or c["started"] <= demoted]
        out["drift"] = {"labels": d.get("labels"), "calls_until_demotion": len(before_demotion),
                        "seconds_until_demotion": (demoted - d["started"]) if demoted else None,
                        "new_intent_share_before_demotion": fig.rate(c["drift"] for c in before_demotion).as_dict(),
                        "retrain_request": d.get("retrain_request")}

    if facts.get("retrain"):
        out["retrain"] = retrain_figures(facts, out["fallback"])
    return out


def retrain_figures(facts: dict, fallback: dict) -> dict[str, Any]:
    """The retrain the controller asked for and the gates again: what each step recorded, and the
    post-retrain test traffic (never sent before) against Banking77's labels."""
    r = facts["retrain"]
    training = r.get("training") or {}
    registered = training.get("registered") or {}
    request = r.get("request") or {}
    out: dict[str, Any] = {
        "request_id": request.get("request_id"), "request_reason": request.get("reason"),
        "answered_request_id": training.get("answered_request_id"), "trained_by": training.get("by"),
        "snapshot": {k: (r.get("snapshot") or {}).get(k) for k in ("id", "counts", "reviewed", "launch_rows",
                                                                    "launch_reviewed", "threshold_target")},
        "version": training.get("version"), "previous_version": training.get("previous_version"),
        "training_seconds": training.get("seconds"),
        "holdout": {k: registered.get(k) for k in ("holdout_size", "gold_reviewed", "small_accuracy",
                                                   "frontier_accuracy", "threshold", "coverage", "kept_accuracy",
                                                   "predicted_fallback_rate")} if registered else None,
    }
    for gate in ("offline", "shadow"):
        d = r.get(gate)
        out[gate] = None if not d else {"mode": d["mode"], "verdict": d["verdict"], "reason": d["reason"],
                                        "model_version": d["model_version"], "threshold": d["threshold"],
                                        "statistics": (d.get("evidence") or {}).get("statistics"),
                                        "counts": (d.get("evidence") or {}).get("counts")}
    out["shadow_refusals"] = [d["reason"] for d in r.get("shadow_refusals") or []]
    out["final"] = r.get("final")
    # small mode with the new version: the rest of the traffic, and calls in flight when the shadow gate passed
    after = [c for p in ("retrain-shadow", "retrain-small") for c in calls_of(facts, p)
             if c["served_by"] in ("small", "fallback")]
    out["fallback"] = {
        "predicted": registered.get("predicted_fallback_rate"),
        "before_drift": fallback["observed"], "during_drift": fallback["during_drift"],
        "after": fig.rate(c["served_by"] == "fallback" for c in after).as_dict(),
        "after_launch_intents": fig.rate(c["served_by"] == "fallback" for c in after if c["drift"]).as_dict(),
        "after_other_intents": fig.rate(c["served_by"] == "fallback" for c in after if not c["drift"]).as_dict()}
    answers = facts.get("retrain_answers") or {}
    sent = [c for p in ("retrain-shadow", "retrain-small") for c in calls_of(facts, p) if c["call_id"] in answers]
    gold: dict[str, Any] = {"n": len(sent), "n_launch": sum(c["drift"] for c in sent)}
    for who in ("previous", "new"):
        gold[who] = {part: fig.rate(answers[c["call_id"]][who][0] == c["gold"] for c in sent if keep(c)).as_dict()
                     for part, keep in (("all", lambda c: True), ("launch_intents", lambda c: c["drift"]),
                                        ("other_intents", lambda c: not c["drift"]))}
    gold["served_after_cutover"] = fig.rate(c["output"] == c["gold"] for c in after).as_dict()
    out["gold"] = gold
    return out


def write_report(facts: dict, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):  # a plot this run cannot draw must not show an older run's
        stale.unlink()
    (folder / "facts.json").write_text(json.dumps(facts, indent=1, default=str) + "\n")
    figures = compute(facts)
    headline = {k: v for k, v in figures.items() if k not in ("latency_samples", "live_curve")}
    (folder / "headline.json").write_text(json.dumps(headline, indent=2, default=str) + "\n")
    made = plots.draw_all(facts, figures, folder)
    page = folder / "README.md"
    page.write_text(render(facts, figures, made))
    return page


def render(facts: dict, f: dict, made: dict[str, str]) -> str:
    from services.demo.page import render_page

    return render_page(facts, f, made)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-report")
    data = json.loads((target / "facts.json").read_text())
    print(write_report(data, target), datetime.now(timezone.utc).isoformat(timespec="seconds"))
