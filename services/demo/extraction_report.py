"""The extraction demo's report: <report_dir>/report.md, facts.json and extraction.png, from the facts
the run collected (plain JSON). Every figure says what it was measured against; the frontier is a
SIMULATOR, and the report says so at the top.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from services.demo import extraction_figures as xf


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _num(v: Optional[float], digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def field_rows(table: dict[str, Any]) -> list[str]:
    out = ["| field | span-F1 small | span-F1 frontier (SIMULATOR) | span-F1 always-null | exact match small | "
           "exact match frontier | exact match always-null | gold values |", "|---|---|---|---|---|---|---|---|"]
    for name, r in table["per_field"].items():
        out.append(f"| {name} | **{r['span_f1_small']:.3f}** | {r['span_f1_frontier']:.3f} | {r['span_f1_always_null']:.3f} | "
                   f"{r['exact_match_small']:.3f} | {r['exact_match_frontier']:.3f} | {r['exact_match_always_null']:.3f} | "
                   f"{r['gold_values']} |")
    out.append(f"| **request** (every field right) | — | — | — | **{table['request_exact_match_small']:.3f}** | "
               f"{table['request_exact_match_frontier']:.3f} | {table['request_exact_match_always_null']:.3f} | "
               f"n = {table['n']:,} |")
    return out


def write_extraction_report(facts: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = facts["meta"]
    settings = meta.get("settings", {})
    task = meta.get("task")
    fields: list[str] = []
    holdout = facts.get("holdout_gold")
    plot = None
    if holdout:
        fields = list(holdout["per_field"])
        curve = facts.get("holdout_curve") or {}
        try:
            if xf.draw(folder / "extraction.png", fields, holdout, np.array(curve.get("confidence", [])),
                       np.array(curve.get("small_ok", []), dtype=bool), np.array(curve.get("frontier_ok", []), dtype=bool),
                       f"{task}: small model vs SIMULATED frontier on {holdout['n']:,} reviewed holdout items "
                       "(gold = Restaurant-8k spans)", holdout["coverage_at_parity"].get("threshold")):
                plot = "extraction.png"
        except Exception as exc:  # noqa: BLE001 - a missing plot must not lose the report
            facts.setdefault("report_warnings", []).append(f"plot skipped: {exc}")
    lines = [f"# graduate extraction demo: {task}", "",
             f"> **The frontier is a SIMULATOR.** No real frontier API is reachable here: {xf.SIMULATOR_NOTE}; "
             f"its latency is drawn from {settings.get('sim_latency_min_ms', 0):.0f}–"
             f"{settings.get('sim_latency_max_ms', 0):.0f} ms. "
             "Gold = Restaurant-8k's own spans. The \"review\" is simulated too: the gold spans are published as "
             "ReviewedLabels in place of a person.", "",
             f"- status: **{meta.get('status')}**; wall time {meta.get('wall_s', 0) / 60:.1f} min "
             f"(run {meta.get('run_id')}, started {meta.get('started')})",
             "- phases: " + ", ".join(f"{p['n']}. {p['title'].split(':')[0]} {p['seconds']:.0f} s" for p in meta["phases"])]
    capture = facts.get("capture")
    if capture:
        lines += [f"- data: a **subset** of Restaurant-8k to fit the time: {capture['sent']:,} of "
                  f"{capture['available']['train_0.json']:,} distinct train_0.json utterances captured; live traffic "
                  f"from {capture['available'].get('live_source', 'test.json')} utterances never captured (shadow ≤ {settings.get('shadow_calls')}, small mode {settings.get('small_calls')} "
                  f"+ what the shadow phase did not send); {settings.get('epochs')} epoch(s)"]
    lines.append("")

    if holdout:
        parity = holdout["coverage_at_parity"]
        small_gold = facts.get("small_mode_gold") or {}
        lat = small_gold.get("latency_ms") or {}
        sm = facts.get("small_mode") or {}
        lines += ["## Headline", "", "| | |", "|---|---|",
                  f"| mean span-F1, reviewed holdout | small **{holdout['macro_span_f1_small']:.3f}** vs frontier "
                  f"(SIMULATOR) {holdout['macro_span_f1_frontier']:.3f}; always-null 0.000 |",
                  f"| request exact match, reviewed holdout | small {holdout['request_exact_match_small']:.3f} vs frontier "
                  f"{holdout['request_exact_match_frontier']:.3f} (always-null {holdout['request_exact_match_always_null']:.3f}; "
                  f"n = {holdout['n']:,}) |",
                  "| coverage at parity | " + (f"**{parity['coverage']:.1%}** at threshold {parity['threshold']:.3f} (kept "
                                               f"exact match {parity['kept_exact_match']:.3f} ≥ frontier "
                                               f"{parity['target_frontier_exact_match']:.3f})"
                                               if parity["threshold"] is not None else "none: no threshold reaches the frontier")
                  + " |"]
        if sm:
            lines.append(f"| fallback rate, small mode | observed **{_pct(sm.get('fallback_observed'))}** vs predicted "
                         f"{_pct(sm.get('fallback_predicted'))} ({sm.get('n'):,} requests, threshold "
                         f"{_num(sm.get('threshold'), 4)} with the demo's headroom) |")
        if lat:
            lines.append(f"| latency seen by the calling service | small path p50 **{lat['small']['p50']} ms** / p95 "
                         f"{lat['small']['p95']} ms (n={lat['small']['n']}) vs fallback p50 {lat['fallback']['p50']} ms / "
                         f"p95 {lat['fallback']['p95']} ms (n={lat['fallback']['n']}); frontier during capture p50 "
                         f"{lat['frontier_capture']['p50']} ms |")
        lines.append("")
        if plot:
            lines += [f"![per-field span-F1 and coverage]({plot})", ""]

    lines += ["## The loop, step by step", ""]
    if capture:
        lines += ["### Capture", "", f"A booking service called the router {capture['ok']:,} times with the `openai` SDK "
                  f"(frontier mode); {capture['captured']:,} calls were captured. The SIMULATOR's answers were exactly "
                  f"right on {capture['frontier_exact_match_gold']:.1%} of them against the gold spans "
                  f"({capture['frontier_unparsed']} not parseable JSON).", ""]
    cand = facts.get("candidates")
    if cand:
        entry = cand.get("entry") or {}
        lines += ["### Candidates", "", f"The profiler's line for {task} (the replay stands for "
                  f"{cand['span_hours']:.2f} h of traffic at {settings.get('calls_per_day', 0):,} calls/day):", "",
                  "```", *(cand.get("line") or ["(no line)"]), "```", "",
                  f"recommendation **{entry.get('recommendation')}**; traits passed: "
                  + ", ".join(t["name"] for t in entry.get("traits", []) if t.get("passed")) + "", ""]
    review = facts.get("review")
    if review:
        lines += ["### Review (simulated) and snapshot", "",
                  f"{review['reviewed']:,} of the {review['holdout_calls']:,} holdout calls (curator holdout fraction "
                  f"{review['holdout_fraction']}) got Restaurant-8k's gold spans as ReviewedLabels "
                  f"(reviewer `{review['reviewer']}`); the frontier SIMULATOR was exactly right on "
                  f"{_pct(review['frontier_exact_match_reviewed'])} of them. Threshold target for the trainer: kept "
                  f"exact match ≥ {_pct(review['threshold_target'])} (frontier + {settings.get('threshold_headroom', 0):.0%} "
                  "headroom, so the served answers can lead by more than the gate's test can mistake for noise)."]
        snap = facts.get("snapshot")
        if snap:
            lines.append(f"The curator's snapshot `{snap['id']}`: train {snap['counts']['train']:,}, holdout "
                         f"{snap['counts']['holdout']:,} ({snap['reviewed']['holdout']:,} reviewed).")
        lines.append("")
    training = facts.get("training")
    if training:
        reg = training["registered"]
        lines += ["### Training", "", f"`graduate train` fine-tuned all-MiniLM-L6-v2 for BIO token tags on "
                  f"{training.get('train_size')} examples, exported ONNX, served it in Triton as "
                  f"`{training['triton_model']}` version {training['version']} in {training['seconds']:.0f} s. "
                  f"ModelRegistered: holdout exact match small {reg['small_accuracy']:.3f} vs frontier "
                  f"{reg['frontier_accuracy']:.3f} ({training.get('gate_basis')} basis, n = {reg['holdout_size']}), "
                  f"threshold {_num(reg.get('threshold'), 4)}, coverage {_pct(reg.get('coverage'))}.", ""]
    gate = facts.get("offline_gate")
    if gate:
        stats = gate["evidence"].get("statistics") or {}
        lines += ["### The controller's offline gate", "", f"**{gate['verdict']}** → mode `{gate['mode']}`: {gate['reason']}", "",
                  "| check | status | detail |", "|---|---|---|"]
        lines += [f"| {c['name']} | {c['status']} | {c['detail']} |" for c in gate["evidence"].get("checks", [])]
        lines += ["", f"Evidence: table `{stats.get('table')}`, counts {json.dumps(gate['evidence'].get('counts'))}, "
                  f"statistic {stats.get('test', stats.get('name', ''))}, p = {stats.get('p_value')}.", ""]
    judge = facts.get("judge")
    if judge:
        lines += ["### Shadow: the judge's agreement", "",
                  f"{judge['compared']:,} live comparisons; request-level agreement {_pct(judge['agreement'])}, at the "
                  f"threshold {_pct(judge['kept_agreement'])} ({judge['kept_agreed']}/{judge['kept']}); "
                  f"{judge['disagreements']} Disagreement records. Per field (from the judge's Disagreement records):", "",
                  "| field | agreement | disagreeing calls |", "|---|---|---|"]
        lines += [f"| {k} | {_pct(v['agreement'])} | {v['disagreements']} |" for k, v in judge["per_field"].items()]
        lines.append("")
    shadow = facts.get("shadow_gate")
    if shadow:
        if shadow.get("calls_sent") is not None:
            lines += [f"The shadow replay sent {shadow['calls_sent']:,} of at most {shadow['calls_planned']:,} planned "
                      "calls (it stops at the cutover; the controller re-evaluates the shadow gate on every statistics "
                      "update).", ""]
        if shadow.get("cutover"):
            lines += [f"Shadow gate → **small**: {shadow['cutover']['reason']}", ""]
        if shadow.get("refusals"):
            lines += ["Earlier shadow-gate verdicts (re-evaluated on every statistics update):", ""]
        for r in shadow.get("refusals", [])[-3:]:
            lines += [f"- stays `{r['mode']}`: {r['reason']}"]
        lines.append("")
    sm = facts.get("small_mode")
    if sm:
        lines += ["### Small mode with per-request fallback", "",
                  f"{sm['n']:,} requests: {sm['served_small']:,} served by the small model, {sm['served_fallback']:,} "
                  f"fell back to the frontier (reasons {json.dumps(sm['fallback_reasons'])}); fallback rate observed "
                  f"{_pct(sm['fallback_observed'])} vs predicted {_pct(sm['fallback_predicted'])} by calibration.", ""]
        if sm.get("demoted"):
            lines += [f"The controller demoted the task: {sm['demoted']}", ""]

    lines += ["## Gold evaluation", ""]
    if holdout:
        lines += [f"### Reviewed holdout ({holdout['n']:,} items; gold = Restaurant-8k spans)", "",
                  "The served model (asked through Triton) beside the frontier SIMULATOR's captured answers and a "
                  "trivial always-null answer:", "", *field_rows(holdout), ""]
    live = facts.get("small_mode_gold")
    if live:
        source = (capture or {}).get("available", {}).get("live_source", "test.json")
        lines += [f"### Small-mode traffic ({live['n']:,} {source} requests, never captured)", "",
                  f"What was served (small above the threshold, frontier below): request exact match "
                  f"{live['served']['request_exact_match_small']:.3f}; the small model alone "
                  f"{live['small_alone']['request_exact_match_small']:.3f}; the frontier SIMULATOR alone "
                  f"{live['served']['request_exact_match_frontier']:.3f} ({live['frontier_asked_directly']} of its answers "
                  "asked directly: it is deterministic per input). Per field, the small model alone:", "",
                  *field_rows(live["small_alone"]), ""]
    if not holdout and not live:
        lines += ["No model reached evaluation in this run (see the status above).", ""]
    overrides = meta.get("overrides") or {}
    lines += ["## Settings", "", "Service settings changed from their defaults for this run (environment): "
              + (", ".join(f"`{k}={v}`" for k, v in overrides.items()) if overrides else "none") + ".", "",
              "```", json.dumps(settings, indent=1, default=str)[:4000], "```", ""]
    (folder / "facts.json").write_text(json.dumps(facts, indent=1, default=str) + "\n")
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
