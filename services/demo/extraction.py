"""`python -m services.demo.extraction`: the graduation loop for the extraction task restaurant8k-booking.

1 set up (Kafka, Triton, the frontier SIMULATOR, the router, five workers: separate processes)
2 capture: a backend service calls the router with the `openai` SDK (frontier mode, captured),
  replaying Restaurant-8k train_0.json utterances
3 candidates: the profiler's report line for the task
4 the simulated review: Restaurant-8k's gold spans for the holdout slice, as ReviewedLabels
5 snapshot (the curator's) → train (BIO tags, ONNX, Triton) → the controller's offline gate
  → shadow on live traffic (never-captured utterances) → the judge's agreement, per field → the shadow gate → cutover
6 small mode with per-request fallback to the frontier
7 gold evaluation (per field, small vs SIMULATED frontier vs always-null; coverage at parity),
  stop everything, write <report_dir>/report.md, facts.json and extraction.png

The demo decides nothing: the services do (the gates, the cutover); it sends traffic, waits for
their records and reports. When a gate refuses, the report says so with the controller's reason.
Everything it started is stopped, also on failure or Ctrl-C. Settings: GRADUATE_DEMO_* (see
services/demo/extraction_settings.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import httpx
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import ModelRegistered, ReviewedLabel, RoutingDecision
from services.common.kafka import ensure_topics
from services.common.settings import REPO_ROOT, CommonSettings, load_settings
from services.common.tasks import load_tasks
from services.curator.settings import CuratorSettings
from services.demo import extraction_figures as xf
from services.demo import steps
from services.demo.bootstrap import start_services, wire
from services.demo.collect import decision_rows, evidence
from services.demo.extraction_settings import ExtractionDemoSettings
from services.demo.extraction_traffic import ExtractionPlan, plan_extraction_traffic
from services.demo.narrate import Narrator, StoryEnded, run_until_signalled
from services.demo.observe import TopicWatch
from services.demo.replay import CallResult, make_client
from services.stack import GRADUATE, Stack, StackError, tail
from services.demo.traffic import PlannedCall
from services.router.keys import create_key
from trainer.extraction import evaluate as ev

WATCHED = [catalog.CALLS_CAPTURED, catalog.MODELS, catalog.ROUTING_HISTORY, catalog.SHADOW_STATS,
           catalog.DISAGREEMENTS]
REVIEWER = "demo-simulated-review (Restaurant-8k gold spans)"


class ExtractionDemo(Narrator):
    def __init__(self, settings: ExtractionDemoSettings, console: Console) -> None:
        self.s, self.console = settings, console
        self.w = wire(settings)
        self.stack = Stack(self.w.var_dir, self.w.env, self.w.script_env, say=lambda m: console.print(f"  {m}"))
        self.codec = Codec()
        self.tasks = load_tasks(load_settings(CommonSettings).tasks_file).tasks
        self.task = self.tasks[settings.task]
        if self.task.kind != "extraction":
            raise SystemExit(f"task {settings.task} is {self.task.kind}; this demo graduates an extraction task")
        self.fields = [f.name for f in self.task.fields]
        self.watch: Optional[TopicWatch] = None
        self.client = None
        self.key = ""
        self.plan: Optional[ExtractionPlan] = None
        self.target: Optional[float] = None
        self.rest_of_shadow: list[PlannedCall] = []
        self.model: Optional[ModelRegistered] = None
        self.results: dict[str, list[CallResult]] = {}
        self.t0 = time.time()
        self.facts: dict[str, Any] = {"meta": {"demo": "extraction", "task": settings.task, "run_id": self.w.run_id,
                                               "namespace": self.w.namespace, "phases": [], "status": "running",
                                               "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                               "settings": json.loads(settings.model_dump_json()),
                                               "overrides": {k: v for k, v in sorted(os.environ.items()) if k.startswith(
                                                   ("GRADUATE_CONTROLLER_", "GRADUATE_TRAIN_", "GRADUATE_CURATOR_",
                                                    "GRADUATE_SIM_"))}},
                                      "frontier": {"kind": "SIMULATOR", "note": xf.SIMULATOR_NOTE}}

    # -- helpers -------------------------------------------------------------------------------
    def exact(self, output: Optional[str], gold: Optional[str]) -> bool:
        return output is not None and ev.values_of(output, self.fields) == ev.values_of(gold, self.fields)

    # -- 1 set up ------------------------------------------------------------------------------
    async def setup(self) -> None:
        with self.phase(1, "Set up: Kafka, Triton, the frontier SIMULATOR, the router and five workers"):
            self.say("No real frontier API is reachable here: a SIMULATOR answers in its place (JSON with "
                     "configured per-field error rates against Restaurant-8k's spans, deterministic per input, "
                     f"{self.s.sim_latency_min_ms:.0f}–{self.s.sim_latency_max_ms:.0f} ms).")
            await asyncio.to_thread(self.stack.start_backbone, self.w.external_kafka, self.w.external_triton)
            await ensure_topics(self.w.kafka, self.w.namespace)
            self.say(f"topics ensured under namespace [bold]{self.w.namespace}[/bold]")
            self.key = create_key(self.w.var_dir / "keys.json", f"demo-booking-service-{self.w.run_id}")
            ready = await asyncio.to_thread(start_services, self.stack, self.w, self.s)
            for name, seconds in ready.items():
                self.say(f"{name} ready ({seconds:.1f} s)")
            self.facts["meta"]["processes"] = [s.name for s in self.stack.services]
            self.watch = await self.start_watch()
            self.client = make_client(self.w.router_url, self.key, self.s.concurrency)
            async with httpx.AsyncClient(timeout=5.0) as http:
                stats = (await http.get(f"{self.w.sim_url}/v1/sim/stats")).json()
            self.facts["frontier"]["simulator_stats_at_start"] = stats

    async def start_watch(self) -> TopicWatch:
        """The topic watch, once the broker lists every watched topic (TopicWatch.start waits for it)."""
        watch = TopicWatch(self.w.kafka, self.codec, self.w.namespace, WATCHED)
        try:
            await watch.start()
        except RuntimeError as exc:
            raise StackError(f"the demo cannot watch its topics: {exc}") from exc
        return watch

    # -- 2 capture -----------------------------------------------------------------------------
    async def capture(self) -> None:
        plan = self.plan
        assert plan is not None
        with self.phase(2, "Capture: a booking service calls the router (openai SDK) on the frontier path"):
            self.say(f"{len(plan.capture):,} of Restaurant-8k's {plan.available['train_0.json']:,} distinct train_0.json "
                     f"utterances (a subset, to fit the demo's time), frontier mode: the SIMULATOR answers, the "
                     f"router captures")
            results = await self.send("capture", plan.capture)
            sent = {r.call.call_id for r in results if r.ok}

            def all_captured():
                self.stack.check_alive()
                got = sum(1 for c in self.watch.records(catalog.CALLS_CAPTURED) if c.call_id in sent)
                return got if got >= len(sent) else None
            got = await self.watch.wait_for(all_captured, 90.0)
            captured = [c for c in self.watch.records(catalog.CALLS_CAPTURED) if c.task == self.s.task]
            ok = [r for r in results if r.ok]
            right = sum(self.exact(r.output, r.call.gold) for r in ok)
            unparsed = sum(r.output is None for r in ok)
            self.say(f"captured on {catalog.topic_name(catalog.CALLS_CAPTURED, self.w.namespace)}: {len(captured):,} "
                     f"{self.s.task} calls" + ("" if got else " [red](not all yet)[/red]")
                     + f"; the SIMULATOR's answers: {right / max(len(ok), 1):.1%} exact match against the gold spans, "
                     f"{unparsed} not parseable JSON")
            self.facts["capture"] = {"sent": len(plan.capture), "ok": len(ok), "captured": len(captured),
                                     "parse_failures": sum(not c.parse_ok for c in captured),
                                     "frontier_exact_match_gold": round(right / max(len(ok), 1), 4),
                                     "frontier_unparsed": unparsed, "available": plan.available}

    # -- 3 candidates --------------------------------------------------------------------------
    async def candidates(self) -> None:
        with self.phase(3, "Candidates: should this call graduate?"):
            n = self.facts["capture"]["ok"]
            span_h = max(n * 24 / self.s.calls_per_day, 0.01)
            self.say(f"the replay compresses {n:,} calls into minutes; the profiler is told they stand for "
                     f"{span_h:.2f} h of traffic, i.e. {self.s.calls_per_day:,} calls/day")
            out = self.w.var_dir / "demo" / f"candidates-{self.w.run_id}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            env = {**self.w.env, "GRADUATE_PROFILER_MIN_SPAN_HOURS": f"{span_h:.4f}", "COLUMNS": "200"}
            proc = await asyncio.to_thread(subprocess.run, [str(GRADUATE), "candidates", "--json", str(out)], env=env,
                                           cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                print(proc.stdout)
                raise RuntimeError(f"graduate candidates failed ({proc.returncode})")
            lines = [" ".join(line.split()) for line in proc.stdout.splitlines() if self.s.task in line and "│" in line]
            for line in lines[:3] or proc.stdout.splitlines()[-12:]:
                self.console.print(f"  {escape(line)}", highlight=False)
            ranking = json.loads(out.read_text())
            mine = next((c for c in ranking if c.get("task") == self.s.task), None)
            if mine:
                passed = [t["name"] for t in mine.get("traits", []) if t.get("passed")]
                self.say(f"{self.s.task}: recommendation [bold]{mine.get('recommendation')}[/bold]; traits passed: "
                         f"{', '.join(passed) or 'none'}")
            self.facts["candidates"] = {"line": lines[:3], "entry": mine, "span_hours": span_h}

    # -- 4 review ------------------------------------------------------------------------------
    async def review(self) -> None:
        with self.phase(4, "Review (SIMULATED): Restaurant-8k's gold spans for the holdout slice"):
            fraction = load_settings(CuratorSettings).holdout_fraction
            holdout = steps.holdout_calls(self.results["capture"], self.s.task, fraction)
            chosen = steps.choose_reviewed(holdout, self.s.review_share, self.s.seed)
            labels = [ReviewedLabel(call_id=r.call.call_id, task=r.call.task, verdict="label",
                                    label=self.task.parse_output(r.call.gold), reviewer=REVIEWER,
                                    note="simulated review: the label is Restaurant-8k's own spans (gold)")
                      for r in chosen]
            await steps.publish_reviews(self.w.kafka, self.codec, self.w.namespace, labels)
            wrong = sum(not self.exact(r.output, r.call.gold) for r in chosen)
            self.say(f"no person reviewed anything: {len(chosen):,} of the {len(holdout):,} holdout calls "
                     f"({self.s.review_share:.0%}) got Restaurant-8k's gold spans as a ReviewedLabel, standing in for a "
                     f"reviewer; the frontier SIMULATOR had {wrong} of them not exactly right")
            frontier = 1 - wrong / len(chosen) if chosen else None
            self.target = min(0.995, frontier + self.s.threshold_headroom) if frontier is not None else None
            self.facts["review"] = {"holdout_fraction": fraction, "holdout_calls": len(holdout), "reviewed": len(chosen),
                                    "frontier_wrong_among_reviewed": wrong, "frontier_exact_match_reviewed": frontier,
                                    "threshold_target": self.target, "reviewer": REVIEWER}

    # -- 5 snapshot, train, gates ---------------------------------------------------------------
    async def train(self) -> ModelRegistered:
        self.console.print("  [bold]snapshot[/bold] (the curator's: captured calls + reviewed labels)")
        manifest, _ = await asyncio.to_thread(steps.run_json, [str(GRADUATE), "dataset", "snapshot", "--task",
                                                               self.s.task, "--json"], self.w.env, REPO_ROOT)
        self.say(f"snapshot {manifest['snapshot_id']}: train {manifest['counts']['train']:,}, holdout "
                 f"{manifest['counts']['holdout']:,} ({manifest['reviewed']['holdout']:,} reviewed)")
        self.facts["snapshot"] = {"id": manifest["snapshot_id"], "counts": manifest["counts"],
                                  "reviewed": manifest["reviewed"], "curation": manifest.get("curation")}
        self.console.print("  [bold]train[/bold] (BIO token tags on all-MiniLM-L6-v2 → ONNX → Triton)")
        while subprocess.run(["pgrep", "-f", "graduate train( |$)"], stdout=subprocess.DEVNULL).returncode == 0:
            self.say("another training run is going on on this machine: waiting for it (one at a time)")
            await asyncio.sleep(10)
        args = ["train", "--task", self.s.task, "--snapshot", manifest["snapshot_id"], "--epochs", str(self.s.epochs),
                "--triton-model", self.w.triton_model]
        if self.s.max_train_examples:
            args += ["--max-examples", str(self.s.max_train_examples)]
        knobs = {"GRADUATE_TRAIN_LEARNING_RATE": str(self.s.learning_rate),
                 "GRADUATE_TRAIN_BATCH_SIZE": str(self.s.batch_size), "GRADUATE_TRAIN_MAX_LENGTH": str(self.s.max_length)}
        if self.target is not None:
            knobs["GRADUATE_TRAIN_TARGET_ACCURACY"] = f"{self.target:.4f}"
            self.say(f"threshold target: kept exact match ≥ {self.target:.1%} — the frontier's "
                     f"{self.facts['review']['frontier_exact_match_reviewed']:.1%} on the reviewed holdout + "
                     f"{self.s.threshold_headroom:.0%} headroom")
        trainer = self.stack.spawn("trainer", args, knobs)
        started = time.monotonic()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=self.console) as progress:
            bar = progress.add_task("  fine-tuning", total=None)
            while trainer.process.poll() is None:
                last = " ".join(tail(trainer.log_file, 2).split())[-110:]
                progress.update(bar, description=f"  trainer: {last}")
                if time.monotonic() - started > self.s.train_timeout_s:
                    raise StackError(f"training ran past {self.s.train_timeout_s:.0f} s")
                await asyncio.sleep(1.0)
        self.stack.stop_service(trainer)
        if trainer.process.returncode != 0:
            raise StackError(f"training failed ({trainer.process.returncode}); log {trainer.log_file}:\n"
                             f"{tail(trainer.log_file, 40)}")
        self.trainer_summary(tail(trainer.log_file, 40))
        model = await self.watch.wait_for(lambda: next((m for m in self.watch.records(catalog.MODELS)
                                                         if m.triton_model == self.w.triton_model), None), 60.0)
        if model is None:
            raise StackError("the trainer finished but no ModelRegistered arrived")
        metrics = json.loads(model.metrics_json or "{}")
        self.facts["training"] = {"seconds": round(time.monotonic() - started, 1), "version": model.version,
                                  "triton_model": model.triton_model, "registered": json.loads(model.model_dump_json()),
                                  "per_field_trainer": metrics.get("per_field"), "gate_basis": metrics.get("gate_basis"),
                                  "timings": metrics.get("timings"), "train_size": metrics.get("train_size")}
        self.model = model
        return model

    def trainer_summary(self, log: str) -> None:
        """The trainer's own summary lines (holdout figures, int8, gate basis, Triton), from its log."""
        text = " ".join(log.split())
        keys = ("holdout:", "int8:", "gate basis:", "triton:", "published ", "model card:")
        starts = sorted((text.rfind(k), k) for k in keys if text.rfind(k) >= 0)
        for i, (at, key) in enumerate(starts):
            if key in ("published ", "model card:"):
                continue
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            self.say(escape(text[at:end].strip()[:400]))

    async def offline_gate(self, model: ModelRegistered) -> RoutingDecision:
        self.console.print("  [bold]offline gate[/bold] (the controller, on the ModelRegistered's paired holdout table)")
        offline = await self.watch.wait_for(self.decided(lambda d, e: e.get("gate") == "offline"
                                                         and str(e.get("candidate")) == model.version),
                                            self.s.gate_timeout_s)
        if offline is None:
            raise StackError("the controller gave no offline verdict")
        e = evidence(offline)
        stats = e.get("statistics") or {}
        self.say(f"[bold]controller[/bold] → {offline.mode} ({e.get('verdict')}): {escape(offline.reason)}")
        for check in e.get("checks", []):
            self.say(escape(f"  check {check['name']}: {check['status']} — {check['detail']}"))
        if stats:
            self.say(f"  evidence: table {stats.get('table')}, counts {e.get('counts')}, "
                     f"n {stats.get('n')}, p = {stats.get('p_value')}")
        self.facts["offline_gate"] = {"mode": offline.mode, "verdict": e.get("verdict"), "reason": offline.reason,
                                      "evidence": e}
        if offline.mode != "shadow":
            raise StoryEnded(f"the offline gate refused version {model.version}: {offline.reason}")
        return offline

    async def shadow(self, model: ModelRegistered) -> RoutingDecision:
        plan = self.plan
        assert plan is not None
        if not await self.router_mode("shadow"):
            raise StackError("the router did not follow the shadow decision")
        self.console.print(f"  [bold]shadow[/bold]: live traffic (never-captured {plan.available['live_source']} "
                           "utterances); the small model answers off the hot path, the judge compares its JSON with "
                           "the frontier's")
        cut = self.decided(lambda d, e: e.get("gate") == "shadow" and d.mode == "small")
        sent = await self.send("shadow", plan.shadow, stop=lambda: cut() is not None)
        done = {r.call.call_id for r in sent}
        self.rest_of_shadow = [c for c in plan.shadow if c.call_id not in done]

        def stats_line() -> None:
            stats = [s for s in self.watch.records(catalog.SHADOW_STATS) if s.model_version == model.version]
            if stats:
                s = stats[-1]
                self.console.print(f"  [dim]judge: {s.compared} compared, {s.agreed} agreed, {s.kept} kept, "
                                   f"{s.kept_agreed} kept and agreed[/dim]", end="\r")
        cutover = await self.watch.wait_for(cut, min(self.s.gate_timeout_s, self.s.shadow_settle_s),
                                            on_tick=stats_line, poll_s=1.0)
        self.console.print()
        self.judge_agreement(model)
        refusals = [d for d in self.history() if evidence(d).get("gate") == "shadow" and d.mode != "small"]
        self.facts["shadow_gate"] = {"calls_sent": len(sent), "calls_planned": len(plan.shadow), "refusals": [{"mode": d.mode, "reason": d.reason} for d in refusals],
                                     "cutover": {"reason": cutover.reason, "threshold": cutover.threshold,
                                                 "predicted_fallback_rate": cutover.predicted_fallback_rate,
                                                 "evidence": evidence(cutover)} if cutover else None}
        for d in refusals[-3:]:
            self.say(f"[bold]controller[/bold] → stays {d.mode}: {escape(d.reason)}")
        if cutover is None:
            reason = refusals[-1].reason if refusals else "no verdict in time (too few comparisons?)"
            raise StoryEnded(f"the shadow gate did not pass: {reason}")
        self.say(f"[bold]controller[/bold] → {cutover.mode}: {escape(cutover.reason)}")
        return cutover

    def judge_agreement(self, model: ModelRegistered) -> None:
        """The judge's agreement (request level, its ShadowStats) and per field, from its Disagreement records:
        a field agrees on a compared call unless a disagreement of that call differs on the field."""
        stats = [s for s in self.watch.records(catalog.SHADOW_STATS)
                 if s.task == self.s.task and s.model_version == model.version]
        if not stats:
            self.facts["judge"] = None
            return
        s = stats[-1]
        disagreements = {d.call_id: d for d in self.watch.records(catalog.DISAGREEMENTS)
                         if d.task == self.s.task and d.model_version == model.version}
        per_field = {}
        for name in self.fields:
            differ = sum(ev.values_of(d.frontier_output, self.fields)[name] != ev.values_of(d.small_output, self.fields)[name]
                         for d in disagreements.values())
            per_field[name] = {"disagreements": differ,
                               "agreement": round(1 - differ / s.compared, 4) if s.compared else None}
        self.facts["judge"] = {"compared": s.compared, "agreed": s.agreed, "kept": s.kept, "kept_agreed": s.kept_agreed,
                               "agreement": round(s.agreed / s.compared, 4) if s.compared else None,
                               "kept_agreement": round(s.kept_agreed / s.kept, 4) if s.kept else None,
                               "disagreements": len(disagreements), "per_field": per_field,
                               "examples": [{"input": d.input, "frontier": d.frontier_output, "small": d.small_output,
                                             "confidence": round(d.confidence, 4)}
                                            for d in sorted(disagreements.values(), key=lambda d: -d.confidence)[:5]]}
        self.say(f"judge: {s.compared} compared, request-level agreement {s.agreed / max(s.compared, 1):.1%} "
                 f"({s.kept_agreed}/{s.kept} at the threshold); per field: "
                 + ", ".join(f"{k} {v['agreement']:.1%}" for k, v in per_field.items() if v["agreement"] is not None))

    # -- 6 small mode --------------------------------------------------------------------------
    async def small_mode(self, cutover: RoutingDecision) -> None:
        plan = self.plan
        assert plan is not None
        if not await self.router_mode("small"):
            raise StackError("the router did not follow the cutover")
        self.say(f"cutover: small mode, threshold {cutover.threshold:.4f}, predicted fallback rate "
                 f"{cutover.predicted_fallback_rate:.1%}")
        moved = [PlannedCall(c.call_id, c.task, "small", c.text, c.gold) for c in self.rest_of_shadow]
        await self.send("small", moved + plan.small, concurrency=self.s.small_concurrency)
        small = [r for r in self.results["small"] if r.ok and r.served_by in ("small", "fallback")]
        observed = sum(r.served_by == "fallback" for r in small) / max(len(small), 1)
        self.say(f"fallback rate observed {observed:.1%} vs predicted {cutover.predicted_fallback_rate:.1%} "
                 f"({len(small):,} small-mode requests)")
        self.facts["small_mode"] = {"threshold": cutover.threshold, "n": len(small),
                                    "served_small": sum(r.served_by == "small" for r in small),
                                    "served_fallback": sum(r.served_by == "fallback" for r in small),
                                    "fallback_observed": round(observed, 4),
                                    "fallback_predicted": cutover.predicted_fallback_rate,
                                    "fallback_reasons": dict(sorted(
                                        {k: sum(1 for r in small if r.fallback_reason == k)
                                         for k in {r.fallback_reason for r in small if r.fallback_reason}}.items()))}
        early = self.decided(lambda d, e: e.get("verdict") == "demoted")()
        if early is not None:
            self.say(f"[yellow]controller demoted the task: {early.reason}[/yellow]")
            self.facts["small_mode"]["demoted"] = early.reason

    # -- 7 gold evaluation ----------------------------------------------------------------------
    async def evaluate_gold(self, model: ModelRegistered) -> None:
        """The reviewed holdout of the snapshot the model was trained from, answered by the served model
        (Triton) beside the frontier SIMULATOR's captured answers and the always-null baseline; then the
        small-mode traffic: what was served, the small model alone and the frontier alone, on the gold."""
        from trainer.extraction import serve
        from trainer.snapshot import load_snapshot, resolve_snapshot

        self.console.print("  [bold]gold: the reviewed holdout[/bold] (gold = Restaurant-8k's spans)")
        snap = load_snapshot(resolve_snapshot(self.w.var_dir / "datasets", self.s.task, model.snapshot_id))
        pick = [i for i, r in enumerate(snap.holdout.reviewed) if r]
        texts = [snap.holdout.input[i] for i in pick]
        gold = [snap.holdout.label[i] for i in pick]
        front = [snap.holdout.frontier_label[i] for i in pick]
        labels, confidence, _ = await asyncio.to_thread(serve.extract, self.w.triton_http, self.w.triton_model,
                                                        model.version, texts)
        table = xf.per_field_table(self.fields, gold, labels, front)
        small_ok = xf.request_correct(self.fields, gold, labels)
        frontier_ok = xf.request_correct(self.fields, gold, front)
        parity = xf.coverage_at_parity(np.asarray(confidence), small_ok, frontier_ok)
        self.facts["holdout_gold"] = table | {"coverage_at_parity": parity}
        self.facts["holdout_curve"] = {"confidence": [round(float(c), 5) for c in confidence],
                                       "small_ok": small_ok.astype(int).tolist(),
                                       "frontier_ok": frontier_ok.astype(int).tolist()}
        for name in self.fields:
            row = table["per_field"][name]
            self.say(f"{name:<11} span-F1 small {row['span_f1_small']:.3f} vs frontier {row['span_f1_frontier']:.3f} "
                     f"(always-null {row['span_f1_always_null']:.3f}); exact match {row['exact_match_small']:.3f} / "
                     f"{row['exact_match_frontier']:.3f} (always-null {row['exact_match_always_null']:.3f})")
        self.say(f"request exact match small {table['request_exact_match_small']:.3f} vs frontier "
                 f"{table['request_exact_match_frontier']:.3f} on {table['n']} items; coverage at parity "
                 + (f"{parity['coverage']:.1%} at threshold {parity['threshold']:.3f}" if parity["threshold"] is not None
                    else "none (no threshold reaches the frontier)"))

        small = [r for r in self.results.get("small", []) if r.ok and r.served_by in ("small", "fallback")]
        if not small:
            return
        self.console.print(f"  [bold]gold: the small-mode traffic[/bold] ({self.plan.available['live_source']} "
                           "utterances, never captured)")
        alone, conf, _ = await asyncio.to_thread(serve.extract, self.w.triton_http, self.w.triton_model, model.version,
                                                 [r.call.text for r in small])
        live = {r.call.call_id: r.output for r in small if r.served_by == "fallback"}
        missing = [r.call for r in small if r.call.call_id not in live]
        asked = await steps.ask_frontier(self.w.sim_url, self.task, missing, self.s.concurrency)
        frontier = [{**live, **asked}.get(r.call.call_id) for r in small]
        gold_live = [r.call.gold for r in small]
        served = xf.per_field_table(self.fields, gold_live, [r.output for r in small], frontier)
        alone_t = xf.per_field_table(self.fields, gold_live, alone, frontier)
        self.facts["small_mode_gold"] = {
            "n": len(small), "frontier_asked_directly": len(asked),
            "served": served, "small_alone": alone_t,
            "latency_ms": {"small": xf.percentiles([r.latency_ms for r in small if r.served_by == "small"]),
                           "fallback": xf.percentiles([r.latency_ms for r in small if r.served_by == "fallback"]),
                           "frontier_capture": xf.percentiles([r.latency_ms for r in self.results.get("capture", [])
                                                               if r.ok and r.served_by == "frontier"])}}
        self.say(f"request exact match: served (small + fallback) {served['request_exact_match_small']:.3f}, small alone "
                 f"{alone_t['request_exact_match_small']:.3f}, frontier alone {served['request_exact_match_frontier']:.3f} "
                 f"on {len(small)} requests")
        lat = self.facts["small_mode_gold"]["latency_ms"]
        self.say(f"latency seen by the service: small p50 {lat['small']['p50']} ms / p95 {lat['small']['p95']} ms; "
                 f"fallback p50 {lat['fallback']['p50']} ms / p95 {lat['fallback']['p95']} ms")

    # -- the end ---------------------------------------------------------------------------------
    def collect(self) -> None:
        task = self.s.task
        self.facts["calls"] = [{"phase": r.call.phase, "call_id": r.call.call_id, "ok": r.ok, "served_by": r.served_by,
                                "confidence": r.confidence, "latency_ms": round(r.latency_ms, 2),
                                "exact": self.exact(r.output, r.call.gold) if r.ok else None,
                                "fallback_reason": r.fallback_reason}
                               for phase in self.results.values() for r in phase]
        if self.watch is None:
            return
        self.facts["decisions"] = decision_rows(self.history())
        self.facts["models"] = [{"version": m.version, "triton_model": m.triton_model, "threshold": m.threshold,
                                 "coverage": m.coverage} for m in self.watch.records(catalog.MODELS) if m.task == task]

    def keep_model_card(self) -> None:
        registered = (self.facts.get("training") or {}).get("registered")
        if not registered:
            return
        folder = self.s.report_dir / "model"
        folder.mkdir(parents=True, exist_ok=True)
        source = registered["artifact_uri"].removeprefix("file://")
        for path in [*Path(source).glob("*.md"), *Path(source).glob("*.png")]:
            try:
                shutil.copyfile(path, folder / path.name)
            except OSError:
                pass

    async def run(self) -> int:
        code = 0
        try:
            await self.setup()
            self.plan = plan_extraction_traffic(self.s.data_dir, self.s.task, self.fields,
                                                capture_calls=self.s.train_calls, shadow_calls=self.s.shadow_calls,
                                                small_calls=self.s.small_calls, seed=self.s.seed,
                                                live_source=self.s.live_source)
            await self.capture()
            await self.candidates()
            await self.review()
            with self.phase(5, "Snapshot → train → offline gate → shadow → judge → shadow gate → cutover"):
                model = await self.train()
                await self.offline_gate(model)
                cutover = await self.shadow(model)
            with self.phase(6, "Small mode with per-request fallback to the frontier"):
                await self.small_mode(cutover)
            self.facts["meta"]["status"] = "complete"
        except StoryEnded as exc:
            self.facts["meta"]["status"] = f"ended early: {exc}"
            self.console.print(f"[yellow]the story ends here: {escape(str(exc))}[/yellow]")
            code = 3
        except Exception as exc:  # noqa: BLE001 - whatever broke, everything is stopped and the report says why
            self.facts["meta"]["status"] = f"failed: {type(exc).__name__}: {exc}"
            self.console.print(f"[red]failed: {type(exc).__name__}: {escape(str(exc))}[/red]")
            if not isinstance(exc, StackError):
                self.console.print_exception(max_frames=8)
            code = 1
        except asyncio.CancelledError:
            self.facts["meta"]["status"] = "interrupted"
            self.console.print("[yellow]interrupted: stopping everything[/yellow]")
            code = 130
        finally:
            with self.phase(7, "Gold evaluation, stop everything, write the report"):
                if self.model is not None and code in (0, 3):
                    try:
                        await self.evaluate_gold(self.model)
                    except Exception as exc:  # noqa: BLE001 - the report says what is missing
                        self.say(f"[yellow]gold evaluation incomplete: {type(exc).__name__}: {exc}[/yellow]")
                try:
                    self.collect()
                except Exception as exc:  # noqa: BLE001
                    self.say(f"[yellow]could not read everything back: {exc}[/yellow]")
                await self.teardown()
                from services.demo.extraction_report import write_extraction_report

                path = write_extraction_report(self.facts, self.s.report_dir)
                self.say(f"report: [bold]{path}[/bold]")
        return code


async def main_async(settings: ExtractionDemoSettings, console: Console) -> int:
    return await run_until_signalled(ExtractionDemo(settings, console).run)


def main() -> None:
    console = Console(emoji=False)
    settings = load_settings(ExtractionDemoSettings)
    try:
        code = asyncio.run(main_async(settings, console))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
