"""The report page's markdown: headline first, then each figure with what it was measured on."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from services.demo.report import _ms, _pct, _usd


def _rate(r: Optional[dict]) -> str:
    if not r or not r.get("n"):
        return "n/a"
    lo, hi = r["ci95"]
    return f"{r['value']:.1%} ({lo:.1%}–{hi:.1%}, n={r['n']:,})"


def _realised(facts: dict) -> str:
    sim = facts.get("simulator") or {}
    if sim.get("realised_accuracy") is None:
        return ""
    return f" (realised {sim['realised_accuracy']:.1%} over its {sim['graded_answers']:,} graded answers in this run)"


def demotion_of(facts: dict) -> Optional[dict]:
    return next((x for x in facts.get("decisions", []) if x.get("verdict") == "demoted"), None)


def _break_even(c: dict) -> str:
    v = c.get("break_even_calls_per_day")
    return "never (nothing is saved per call)" if v is None else f"{v:,.0f} calls/day"


def _clock(ts: float, t0: float) -> str:
    return f"+{ts - t0:,.0f} s"


def headline(facts: dict, f: dict) -> list[str]:
    s, g, fb = facts["meta"]["settings"], f["gold"], f["fallback"]
    lines = []
    if g.get("small_with_fallback"):
        d = g["difference"]
        lines.append(f"- **Accuracy on {g['frontier']['n']:,} live Banking77 test requests (gold labels, paired):** "
                     f"graduated serving (small model + fallback) {_pct(g['small_with_fallback']['value'])} vs the "
                     f"SIMULATED frontier {_pct(g['frontier']['value'])} (difference {d['value']:+.1%}, 95% CI "
                     f"{d['ci95'][0]:+.1%} to {d['ci95'][1]:+.1%}); the small model alone {_pct(g['small']['value'])}.")
    if fb["observed"]["n"]:
        lines.append(f"- **Served locally:** {1 - fb['observed']['value']:.1%} of small-mode requests; fallback rate "
                     f"observed {_pct(fb['observed']['value'])} vs {_pct(fb['predicted'])} predicted by calibration.")
    lat = f["latency"]
    if lat.get("ratio_p50"):
        lines.append(f"- **Latency:** small path p50 {_ms(lat['small']['p50_ms'])} / p95 {_ms(lat['small']['p95_ms'])} "
                     f"vs frontier p50 {_ms(lat['frontier']['p50_ms'])} / p95 {_ms(lat['frontier']['p95_ms'])} "
                     f"({lat['ratio_p50']:,.1f}× faster at p50).")
    c = f.get("cost")
    if c:
        lines.append(f"- **Cost at {s['calls_per_day']:,} calls/day:** {_usd(c['frontier_only_per_month'])}/month "
                     f"frontier-only vs {_usd(c['graduated_per_month'])}/month graduated "
                     f"(saving {_usd(c['saving_per_month'])}/month; break-even {_break_even(c)}).")
    d = f.get("drift")
    demotion = demotion_of(facts)
    if d and demotion and d.get("seconds_until_demotion") is not None:
        lines.append(f"- **Drift:** {len(d['labels'])} intents held out of training arrived; fallback rate "
                     f"{_pct(fb['observed']['value'])} before → {_pct(fb['during_drift']['value'])} after. The controller "
                     f"demoted the task to shadow after {d['calls_until_demotion']:,} requests "
                     f"({d['seconds_until_demotion']:.0f} s) and requested a retrain — "
                     f"{demotion['reason'].split(';')[0]}.")
    r = f.get("retrain")
    if r:
        lines.append(retrain_headline(r))
    return lines


def retrain_headline(r: dict) -> str:
    snap, fb, final = r["snapshot"], r["fallback"], r.get("final") or {}
    text = (f"- **Retrain and re-gate:** the trainer worker answered retrain request `{r['request_id']}`"
            + (f" with version {r['version']}, trained in {r['training_seconds']:.0f} s on a fresh snapshot "
               f"({(snap.get('counts') or {}).get('train', 0):,} train rows, "
               f"{(snap.get('launch_rows') or {}).get('train', 0):,} of them about the launch's intents)"
               if r.get("version") else " — no new version was registered"))
    if r.get("offline"):
        text += f"; offline gate: {r['offline']['verdict']}"
    if r.get("shadow"):
        text += f"; shadow gate: {r['shadow']['verdict']} → **{final.get('mode')}** with version " \
                f"{final.get('model_version')} (threshold {final.get('threshold') or 0:.3f})"
    elif r.get("shadow_refusals"):
        text += f"; the shadow gate **refused** it — {r['shadow_refusals'][-1]}"
    if fb["after"]["n"]:
        text += (f"; fallback rate {_pct(fb['during_drift']['value'])} during the drift → "
                 f"{_pct(fb['after']['value'])} after the re-cutover (predicted {_pct(fb['predicted'])})")
    g = r.get("gold") or {}
    if g.get("n_launch"):
        text += (f"; on {g['n_launch']:,} unseen test requests about the launch's intents the new version alone is "
                 f"right {_pct(g['new']['launch_intents']['value'])} (the previous one "
                 f"{_pct(g['previous']['launch_intents']['value'])})")
    return text + "."


def render_page(facts: dict, f: dict, made: dict[str, str]) -> str:
    meta, s = facts["meta"], facts["meta"]["settings"]
    registered = (facts.get("training") or {}).get("registered") or {}
    out = [f"# graduate demo — {s['task']}", ""]
    out += [f"> **The frontier model in this report is a SIMULATOR** (`graduate frontier-sim`): it answers "
            f"Banking77 from its labels with {s['sim_accuracy']:.0%} configured accuracy, errors on confusable "
            f"intents, and {s['sim_latency_min_ms']:.0f}–{s['sim_latency_max_ms']:.0f} ms latency{_realised(facts)}. "
            "No real LLM was called.",
            "", f"Run {meta['run_id']} · {meta['started']} · status **{meta['status']}** · wall time "
            f"{meta.get('wall_s', 0) / 60:.1f} min", ""]
    out += ["## Headline", "", *headline(facts, f), ""]
    if "fallback" in made:
        out += [f"![fallback rate over time]({made['fallback']})", ""]

    g = f["gold"]
    d = g.get("difference") or {}
    out += ["## Accuracy on gold labels", "",
            f"Gold = Banking77's own labels. The same {g.get('frontier', {}).get('n', 0):,} Banking77 **test** requests "
            f"(never trained on; {g.get('n_shadow', 0):,} sent while the model shadowed, {g.get('n_small', 0):,} in "
            "small mode) answered by each system: the small model asked directly, the frontier SIMULATOR's live "
            f"answer ({g.get('frontier_asked_directly', 0):,} of them asked directly afterwards — it answers an input "
            "the same way every time), and what small mode serves (as served after the cutover; before it, what "
            "the threshold rule would have served). 95 % Wilson intervals.", "",
            "| system | accuracy |", "|---|---|",
            f"| frontier (SIMULATED) | {_rate(g.get('frontier'))} |",
            f"| small model alone | {_rate(g.get('small'))} |",
            f"| **graduated: small model at the threshold, frontier below it** | {_rate(g.get('small_with_fallback'))} |",
            f"| small mode as served, after the cutover only | {_rate(g.get('live_small_mode'))} |", ""]
    if d.get("n"):
        out += [f"Graduated − frontier: {d['value']:+.2%} (95% CI {d['ci95'][0]:+.2%} to {d['ci95'][1]:+.2%}; "
                f"{d['a_only']} requests only graduated serving got right, {d['b_only']} only the frontier).", ""]
    if registered:
        out += [f"Trainer's holdout ({registered['holdout_size']:,} examples; gold = {registered['gold_reviewed']:,} "
                f"reviewed labels + {registered['gold_frontier']:,} frontier answers): small "
                f"{_pct(registered['small_accuracy'])}, frontier {_pct(registered['frontier_accuracy'])}, kept accuracy "
                f"at the threshold {_pct(registered['kept_accuracy'])}. The review was SIMULATED: "
                f"{facts.get('review', {}).get('reviewed', 0):,} holdout calls got Banking77's label as a ReviewedLabel.", ""]

    fb = f["fallback"]
    out += ["## Coverage and fallback", "",
            f"- threshold (calibrated on the holdout, temperature {registered.get('temperature', 1):.2f}): "
            f"{'n/a' if f['threshold'] is None else format(f['threshold'], '.4f')}",
            f"- coverage at the threshold: holdout {_pct(fb['holdout_coverage'])}, live test traffic "
            f"{_rate(g.get('coverage'))}",
            f"- fallback rate: predicted {_pct(fb['predicted'])}, observed in small mode {_rate(fb['observed'])}, "
            f"during the drift {_rate(fb['during_drift'])}", ""]
    if "coverage" in made:
        out += [f"![coverage–accuracy curve]({made['coverage']})", ""]

    lat = f["latency"]
    out += ["## Latency per path", "",
            f"As the calling service measured it, end to end through the router: small and fallback in small mode "
            f"with {s.get('small_concurrency', '?')} requests in flight, frontier before the cutover with "
            f"{s['concurrency']} in flight (its latency is the SIMULATOR's sleep plus the router).", "",
            "| path | requests | p50 | p95 |", "|---|---|---|---|"]
    for path in ("small", "fallback", "frontier"):
        x = lat[path]
        out.append(f"| {path}{' (SIMULATED frontier)' if path != 'small' else ''} | {x['n']:,} | {_ms(x['p50_ms'])} | "
                   f"{_ms(x['p95_ms'])} |")
    if lat.get("ratio_p50"):
        out += ["", f"Frontier ÷ small: {lat['ratio_p50']:,.1f}× at p50, {lat['ratio_p95']:,.1f}× at p95."]
    out += [""]
    if "latency" in made:
        out += [f"![latency histograms]({made['latency']})", ""]

    c = f.get("cost")
    if c:
        fc, fix = facts["frontier_cost"], c["fixed_breakdown"]
        out += ["## Cost", "", "| | per 1,000 calls | per month |", "|---|---|---|",
                f"| frontier only | {_usd(c['frontier_only_per_1k'], 2)} | {_usd(c['frontier_only_per_month'])} |",
                f"| graduated | {_usd(c['graduated_per_1k'], 2)} | {_usd(c['graduated_per_month'])} |", "",
                "Assumptions: " + "; ".join([
                    f"{s['calls_per_day']:,} calls/day, 30 days/month",
                    f"frontier price ${fc['prices']['frontier_input_per_mtok']}/M input and "
                    f"${fc['prices']['frontier_output_per_mtok']}/M output tokens; the SIMULATOR's token counts "
                    f"(mean {fc['prompt_tokens']:,.0f} in / {fc['completion_tokens']:,.1f} out) → "
                    f"{_usd(c['frontier_usd_per_call'], 5)} per call",
                    f"graduated still pays the frontier for the {c['basis']} ({_pct(c['fallback_rate'])}) plus the "
                    f"{s['small_sample_rate']:.0%} sampled for monitoring",
                    f"owning the model {_usd(c['fixed_per_month'])}/month: serving {_usd(fix['serving'])} "
                    f"({s['serving_instances']} × ${s['instance_usd_per_hour']}/h), training {_usd(fix['training'])} "
                    f"({s['training_runs_per_month']:g} runs × ${s['training_run_usd']}), ops {_usd(fix['ops'])}",
                    f"break-even {_break_even(c)}"]) + ".", ""]
        if "cost" in made:
            out += [f"![cost comparison]({made['cost']})", ""]

    out += candidates_section(facts)
    out += timeline_section(facts)
    out += disagreements_section(facts)
    out += drift_section(facts, f)
    out += retrain_section(f)
    out += how_section(facts)
    out += ["", f"_Written {datetime.now(timezone.utc).isoformat(timespec='seconds')} by services/demo/report.py; "
            "figures in headline.json, raw facts in facts.json._", ""]
    return "\n".join(out)


def candidates_section(facts: dict) -> list[str]:
    cands = (facts.get("candidates") or {}).get("ranking") or []
    if not cands:
        return []
    out = ["## Candidates: which calls to graduate", "",
           f"From the captured calls (the replay stands for {facts['candidates']['span_hours']:.2f} h of traffic).", ""]
    for i, c in enumerate(cands, 1):
        e = c.get("economics") or {}
        out.append(f"{i}. **{c['task']}** — **{c['recommendation']}** (score {c['score']:.2f}; saving "
                   f"{_usd(e.get('monthly_saving_usd'))}/month, break-even "
                   f"{e.get('break_even_calls_per_day') or 0:,.0f} calls/day)")
        for t in c.get("traits", []):
            out.append(f"   - {'✅' if t['passed'] else '❌'} {t['name']}: {t['reason']}")
    return out + [""]


def timeline_section(facts: dict) -> list[str]:
    decisions = facts.get("decisions") or []
    if not decisions:
        return []
    t0 = datetime.fromisoformat(facts["meta"]["started"]).timestamp()
    out = ["## Decisions timeline", "", "Every record of the routing history (refusals keep the mode): the first "
           "gate and cutover, the demotion on drift, then the retrained version's gates.", "",
           "| when | mode | model | threshold | by | reason |", "|---|---|---|---|---|---|"]
    for d in decisions:
        reason = d["reason"].replace("|", "/")
        threshold = "-" if d["threshold"] is None else f"{d['threshold']:.3f}"
        out.append(f"| {_clock(d['ts'], t0)} | {d['mode']} | {d['model_version'] or '-'} | {threshold} | "
                   f"{d['decided_by']} | {reason} |")
    return out + [""]


def disagreements_section(facts: dict) -> list[str]:
    d = facts.get("disagreements")
    if not d:
        return []
    out = ["## Shadow: disagreements", "",
           f"{d['count']:,} disagreements between the small model and the SIMULATED frontier were published to "
           f"`graduate.disagreements` ({d.get('before_launch', 0):,} before the launch; the rest on the launch's "
           "traffic, while the demoted task shadowed again). The most confident ones:", ""]
    for title, key in (("before the launch", "examples_before"), ("after the launch", "examples_after")):
        rows = d.get(key) or []
        if not rows:
            continue
        out += [f"_{title}_", "", "| input | frontier | small | confidence | reviewed |", "|---|---|---|---|---|"]
        for e in rows:
            text = e["input"].replace("|", "/").replace("\n", " ")[:90]
            out.append(f"| {text} | {e['frontier']} | {e['small']} | {e['confidence']:.2f} | {e['reviewed'] or '-'} |")
        out.append("")
    return out


def drift_section(facts: dict, f: dict) -> list[str]:
    d = f.get("drift")
    if not d:
        return []
    request: dict[str, Any] = d.get("retrain_request") or {}
    demotion = demotion_of(facts)
    out = ["## The drift episode", "",
           f"The intents {', '.join(f'`{x}`' for x in d['labels'])} were held out of all traffic before the launch, so "
           "the training snapshot could not contain them (its label set is the task's before the launch). After "
           f"the launch {d['new_intent_share_before_demotion']['value'] or 0:.0%} of the requests were about them.", ""]
    if demotion:
        out += [f"- demotion after {d['calls_until_demotion']:,} post-launch requests "
                f"({d['seconds_until_demotion']:.0f} s): {demotion['reason']}"]
    if request:
        out += [f"- retrain request `{request.get('request_id')}`: {request.get('reason')}"]
    return out + [""]


def retrain_how(facts: dict) -> list[str]:
    r = facts.get("retrain") or {}
    snap, train = r.get("snapshot") or {}, r.get("training") or {}
    if not train:
        return []
    return [f"- retrain: snapshot {snap.get('id', '-')} (all {snap.get('labels', '-')} labels; "
            f"{(snap.get('counts') or {}).get('train', '-')} train / {(snap.get('counts') or {}).get('holdout', '-')} "
            f"holdout), {train.get('seconds', 0):.0f} s, {train.get('epochs', '-')} epochs, version "
            f"{train.get('version', '-')} by {train.get('by', '-')} (model card in `model-retrained/`)"]


def retrain_section(f: dict) -> list[str]:
    r = f.get("retrain")
    if not r:
        return []
    snap, h, fb, g = r["snapshot"], r.get("holdout") or {}, r["fallback"], r.get("gold") or {}
    counts, launch = snap.get("counts") or {}, snap.get("launch_rows") or {}
    out = ["## Retrain and re-gate", "",
           "The demotion came with a RetrainRequest on `graduate.retrain.requests`. The trainer worker "
           "(`graduate worker trainer`) consumed it and trained on the newest snapshot, taken by the curator right "
           "before: everything captured so far, including the launch's intents the frontier SIMULATOR answered while "
           "the task fell back and shadowed. The simulated review went on for the holdout calls captured since the "
           "first snapshot. Then the controller gated the new registration like any other.", "",
           "| step | evidence |", "|---|---|",
           f"| retrain request | `{r['request_id']}` — {str(r.get('request_reason') or '').replace('|', '/')} |",
           f"| answered by | {r.get('trained_by') or '-'}, which logged request `{r.get('answered_request_id') or '-'}` |",
           f"| snapshot | `{snap.get('id') or '-'}`: {counts.get('train', 0):,} train / {counts.get('holdout', 0):,} "
           f"holdout rows; about the launch's intents {launch.get('train', 0):,} train / {launch.get('holdout', 0):,} "
           f"holdout ({(snap.get('launch_reviewed') or {}).get('holdout', 0):,} reviewed) |",
           f"| training | version {r.get('version') or '-'} (was {r.get('previous_version') or '-'}), "
           f"{r.get('training_seconds') or 0:.0f} s |"]
    if h:
        out.append(f"| holdout | {h['holdout_size']:,} examples ({h['gold_reviewed']:,} reviewed): small "
                   f"{_pct(h['small_accuracy'])}, frontier {_pct(h['frontier_accuracy'])}; threshold "
                   f"{h['threshold'] or 0:.4f} keeps {_pct(h['coverage'])} at {_pct(h['kept_accuracy'])} "
                   f"(target {_pct(snap.get('threshold_target'))}) |")
    for gate in ("offline", "shadow"):
        d = r.get(gate)
        if d:
            out.append(f"| {gate} gate | **{d['verdict']}** → {d['mode']} ({d['model_version']}): "
                       f"{d['reason'].replace('|', '/')} |")
    for reason in r.get("shadow_refusals") or []:
        out.append(f"| shadow gate refusal (the mode stays) | {reason.replace('|', '/')} |")
    final = r.get("final") or {}
    if final:
        out.append(f"| routing now | {final.get('mode')} with version {final.get('model_version')}, threshold "
                   f"{final.get('threshold') or 0:.4f} |")
    out += ["", f"- fallback rate in small mode: {_rate(fb['before_drift'])} before the drift, "
            f"{_rate(fb['during_drift'])} during it, {_rate(fb['after'])} after the re-cutover (predicted "
            f"{_pct(fb['predicted'])}); after it, on the launch's intents {_rate(fb['after_launch_intents'])}, on the "
            f"others {_rate(fb['after_other_intents'])}"]
    if g.get("n"):
        out += [f"- the {g['n']:,} post-retrain test requests (never sent before; {g['n_launch']:,} about the launch's "
                "intents), answered by each version alone (Triton, gold = Banking77's labels):", "",
                "| | all | launch's intents | other intents |", "|---|---|---|---|"]
        for who in ("previous", "new"):
            v = r.get("previous_version") if who == "previous" else r.get("version")
            out.append(f"| version {v} ({who}) | " + " | ".join(_rate(g[who][k]) for k in
                                                               ("all", "launch_intents", "other_intents")) + " |")
        out += ["", f"- served in small mode after the re-cutover (small model or fallback), gold accuracy "
                f"{_rate(g.get('served_after_cutover'))}"]
    return out + [""]


def how_section(facts: dict) -> list[str]:
    meta = facts["meta"]
    out = ["## How this run was made", "", "| phase | seconds |", "|---|---|"]
    out += [f"| {p['n']}. {p['title']} | {p['seconds']:,.0f} |" for p in meta["phases"]]
    snap = facts.get("snapshot") or {}
    train = facts.get("training") or {}
    out += ["", f"- processes started: {', '.join(meta.get('processes', []))} (+ the trainer run, and the trainer worker for the retrain); all stopped at the end: "
            f"{'yes' if not meta.get('left_running') else 'NO: ' + str(meta['left_running'])}",
            f"- snapshot {snap.get('id', '-')} → training snapshot {snap.get('derived', '-')} "
            f"({(snap.get('counts') or {}).get('train', '-')} train / {(snap.get('counts') or {}).get('holdout', '-')} holdout)",
            f"- training: {train.get('seconds', 0):.0f} s, version {train.get('version', '-')}, Triton model "
            f"`{train.get('triton_model', '-')}` (model card in `model/`)",
            *retrain_how(facts),
            "- settings (GRADUATE_DEMO_*): " + ", ".join(
                f"{k}={v}" for k, v in facts["meta"]["settings"].items()
                if not k.endswith(("_dir", "_port", "_timeout_s")) and k not in ("namespace", "drift_labels"))]
    return out
