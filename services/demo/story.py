"""The story the demo tells, phase by phase: capture, candidates, the simulated review, training
and the gates, small mode and the drift, then the retrain the controller asked for and the gates
again. `Story` holds the phases and their helpers; run.py's `Demo` adds the set-up, the end (gold
evaluation, report, stopping everything) and the state.

The demo decides nothing: the services do (gate, cutover, demotion, the trainer worker's retrain);
these phases send traffic, wait for the services' records, and note what happened in `self.facts`.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.common import catalog
from services.common.contracts import ModelRegistered, RoutingDecision
from services.common.settings import REPO_ROOT, load_settings
from services.common.tasks import TaskSpec
from services.curator.settings import CuratorSettings
from services.demo import steps
from services.demo.bootstrap import Wiring
from services.demo.collect import decision_rows, evidence
from services.demo.narrate import Narrator, StoryEnded  # noqa: F401  (StoryEnded: raised here, imported from here)
from services.demo.observe import TopicWatch
from services.demo.replay import CallResult
from services.demo.settings import DemoSettings
from services.stack import GRADUATE, Stack, StackError, tail
from services.demo.traffic import PlannedCall, TrafficPlan


class Story(Narrator):
    s: DemoSettings
    w: Wiring
    console: Console
    stack: Stack
    watch: TopicWatch
    plan: TrafficPlan
    tasks: dict[str, TaskSpec]
    task: TaskSpec
    key: str
    client: Any
    facts: dict[str, Any]
    results: dict[str, list[CallResult]]
    target: Optional[float]
    rest_of_shadow: list[PlannedCall]

    # -- the phases ---------------------------------------------------------------------------
    async def capture(self) -> None:
        with self.phase(2, "Capture: backend services call the router (openai SDK) on the frontier path"):
            results = await self.send("capture", self.plan.capture)
            sent = {r.call.call_id for r in results if r.ok}
            per_task = {t: sum(1 for r in results if r.ok and r.call.task == t) for t in self.tasks}

            def all_captured():
                self.stack.check_alive()
                got = sum(1 for c in self.watch.records(catalog.CALLS_CAPTURED) if c.call_id in sent)
                return got if got >= len(sent) else None
            got = await self.watch.wait_for(all_captured, 90.0)
            captured = {t: sum(1 for c in self.watch.records(catalog.CALLS_CAPTURED) if c.task == t) for t in self.tasks}
            self.say(f"captured on {catalog.topic_name(catalog.CALLS_CAPTURED, self.w.namespace)}: "
                     + ", ".join(f"{t} {n:,}" for t, n in captured.items()) + ("" if got else " [red](not all yet)[/red]"))
            self.facts["capture"] = {"sent": {t: sum(1 for c in self.plan.capture if c.task == t) for t in self.tasks},
                                     "ok": per_task, "captured": captured}

    async def candidates(self) -> None:
        with self.phase(3, "Candidates: which calls should graduate"):
            n = self.facts["capture"]["ok"].get(self.s.task, 0)
            span_h = max(n * 24 / self.s.calls_per_day, 0.01)
            self.say(f"the replay compresses {n:,} {self.s.task} calls into minutes; the profiler is told they "
                     f"stand for {span_h:.2f} h of traffic, i.e. {self.s.calls_per_day:,} calls/day")
            out = self.w.var_dir / "demo" / f"candidates-{self.w.run_id}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            env = {**self.w.env, "GRADUATE_PROFILER_MIN_SPAN_HOURS": f"{span_h:.4f}", "COLUMNS": "200"}
            proc = await asyncio.to_thread(subprocess.run, [str(GRADUATE), "candidates", "--json", str(out)], env=env,
                                           cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            print(proc.stdout)
            if proc.returncode != 0:
                raise RuntimeError(f"graduate candidates failed ({proc.returncode})")
            ranking = json.loads(out.read_text())
            self.facts["candidates"] = {"ranking": ranking, "span_hours": span_h}

    async def review(self) -> None:
        with self.phase(4, "Review (SIMULATED): Banking77's true labels for a share of the holdout"):
            fraction = load_settings(CuratorSettings).holdout_fraction
            holdout = steps.holdout_calls(self.results["capture"], self.s.task, fraction)
            chosen = steps.choose_reviewed(holdout, self.s.review_share, self.s.seed)
            await steps.publish_reviews(self.w.kafka, self.codec, self.w.namespace, steps.reviewed_labels(chosen))
            disagree = sum(1 for r in chosen if r.output != r.call.gold)
            self.say(f"no person reviewed anything: {len(chosen):,} of the {len(holdout):,} holdout calls "
                     f"({self.s.review_share:.0%}) got Banking77's own label as a ReviewedLabel, standing in for a "
                     f"reviewer; the frontier SIMULATOR had {disagree} of them wrong")
            frontier = 1 - disagree / len(chosen) if chosen else None
            self.target = min(0.995, frontier + self.s.threshold_headroom) if frontier is not None else None
            self.facts["review"] = {"holdout_fraction": fraction, "holdout_calls": len(holdout),
                                    "reviewed": len(chosen), "frontier_wrong_among_reviewed": disagree,
                                    "frontier_accuracy_reviewed": frontier, "threshold_target": self.target}

    async def train(self) -> ModelRegistered:
        self.console.print("  [bold]snapshot[/bold]")
        manifest, _ = await asyncio.to_thread(steps.run_json, [str(GRADUATE), "dataset", "snapshot", "--task",
                                                               self.s.task, "--json"], self.w.env, REPO_ROOT)
        datasets = self.w.var_dir / "datasets"
        derived, info = steps.derive_prelaunch_snapshot(datasets, self.s.task, manifest["snapshot_id"],
                                                        self.plan.before_launch, self.plan.held_out)
        self.say(f"snapshot {manifest['snapshot_id']}: train {manifest['counts']['train']:,}, holdout "
                 f"{manifest['counts']['holdout']:,} ({manifest['reviewed']['holdout']:,} reviewed)")
        dropped = sum(info["dropped_rows"].values())
        self.say(f"training label set: the {info['labels']} intents in use before the launch; the launch's "
                 f"{len(self.plan.held_out)} intents are not among them ({dropped} row(s) dropped: frontier answers "
                 f"outside that set, no such input was sent) → {derived}")
        self.facts["snapshot"] = {"id": manifest["snapshot_id"], "counts": manifest["counts"],
                                  "reviewed": manifest["reviewed"], "curation": manifest.get("curation"),
                                  "derived": derived, **info}
        self.console.print("  [bold]train[/bold]")
        await self.one_training_at_a_time()
        args = ["train", "--task", self.s.task, "--snapshot", derived, "--epochs", str(self.s.epochs),
                "--triton-model", self.w.triton_model]
        if self.s.max_train_examples:
            args += ["--max-examples", str(self.s.max_train_examples)]
        knobs = self.train_knobs(self.target)
        if self.target is not None:
            frontier = self.facts["review"]["frontier_accuracy_reviewed"]
            self.say(f"threshold target: kept accuracy ≥ {self.target:.1%} — the frontier's {frontier:.1%} on the "
                     f"reviewed holdout + {self.s.threshold_headroom:.0%} headroom")
        trainer = self.stack.spawn("trainer", args, knobs)
        started = time.monotonic()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=self.console) as progress:
            bar = progress.add_task("  fine-tuning", total=None)
            while trainer.process.poll() is None:
                last = tail(trainer.log_file, 1).strip()[:110]
                progress.update(bar, description=f"  trainer: {last}")
                if time.monotonic() - started > self.s.train_timeout_s:
                    raise StackError(f"training ran past {self.s.train_timeout_s:.0f} s")
                await asyncio.sleep(1.0)
        self.stack.stop_service(trainer)
        if trainer.process.returncode != 0:
            raise StackError(f"training failed ({trainer.process.returncode}); log {trainer.log_file}:\n"
                             f"{tail(trainer.log_file, 40)}")
        for line in tail(trainer.log_file, 12).splitlines():
            if line.startswith(("holdout:", "triton:", "int8:", "published")):
                self.say(line[:160])
        model = await self.watch.wait_for(lambda: next((m for m in self.watch.records(catalog.MODELS)
                                                         if m.triton_model == self.w.triton_model), None), 30.0)
        if model is None:
            raise StackError("the trainer finished but no ModelRegistered arrived")
        self.facts["training"] = {"seconds": round(time.monotonic() - started, 1), "version": model.version,
                                  "triton_model": model.triton_model, "registered": json.loads(model.model_dump_json())}
        return model

    def train_knobs(self, target: Optional[float]) -> dict[str, str]:
        """The fine-tune's settings (GRADUATE_TRAIN_*) both trainings of the demo use."""
        knobs = {"GRADUATE_TRAIN_LEARNING_RATE": str(self.s.learning_rate), "GRADUATE_TRAIN_BATCH_SIZE":
                 str(self.s.batch_size), "GRADUATE_TRAIN_MAX_LENGTH": str(self.s.max_length)}
        if target is not None:
            knobs["GRADUATE_TRAIN_TARGET_ACCURACY"] = f"{target:.4f}"
        return knobs

    async def one_training_at_a_time(self) -> None:
        while subprocess.run(["pgrep", "-f", "graduate train( |$)"], stdout=subprocess.DEVNULL).returncode == 0:
            self.say("another training run is going on on this machine: waiting for it (one at a time)")
            await asyncio.sleep(10)

    async def gate_and_shadow(self, model: ModelRegistered) -> RoutingDecision:
        cutover, self.rest_of_shadow = await self.shadow_until_cutover(model, self.plan.shadow, "shadow")
        return cutover

    async def offline_verdict(self, model: ModelRegistered) -> RoutingDecision:
        """The controller's offline verdict on `model` (it gates every registration); StoryEnded on a refusal."""
        offline = await self.watch.wait_for(self.decided(lambda d, e: e.get("gate") == "offline"
                                                         and str(e.get("candidate")) == model.version),
                                            self.s.gate_timeout_s)
        if offline is None:
            raise StackError(f"the controller gave no offline verdict on version {model.version}")
        self.say(f"[bold]controller[/bold] → {offline.mode}: {offline.reason}")
        if offline.mode != "shadow" or offline.model_version != model.version:
            raise StoryEnded(f"the offline gate refused version {model.version}: {offline.reason}")
        return offline

    async def shadow_until_cutover(self, model: ModelRegistered, calls: list[PlannedCall], name: str,
                                   keep: int = 0) -> tuple[RoutingDecision, list[PlannedCall]]:
        """Offline verdict → shadow on `calls` until the shadow gate cuts over to `model` (StoryEnded if it
        refuses); returns the cutover and the calls not sent (they go to small mode instead). The last
        `keep` calls are never sent in shadow: a slow verdict cannot leave small mode without traffic."""
        await self.offline_verdict(model)
        if not await self.router_mode("shadow", model.version):
            raise StackError(f"the router did not follow the shadow decision for version {model.version}")
        self.console.print(f"  [bold]shadow[/bold] (version {model.version}): live Banking77 test traffic; the small "
                           "model answers off the hot path")

        def is_cutover(d: RoutingDecision, e: dict) -> bool:
            return e.get("gate") == "shadow" and d.mode == "small" and d.model_version == model.version
        cut = self.decided(is_cutover)
        shadowed = calls[:len(calls) - keep] if keep else calls
        sent = await self.send(name, shadowed, stop=lambda: cut() is not None)
        done = {r.call.call_id for r in sent}
        rest = [c for c in calls if c.call_id not in done]

        def stats_line() -> None:
            stats = [s for s in self.watch.records(catalog.SHADOW_STATS) if s.model_version == model.version]
            if stats:
                s = stats[-1]
                self.console.print(f"  [dim]judge: {s.compared} compared, {s.agreed} agreed, {s.kept} kept, "
                                   f"{s.reviewed} reviewed[/dim]", end="\r")
        # The controller re-evaluates on every statistics update: a refusal now may still turn into
        # a pass as comparisons accumulate, so wait for the cutover and report the last refusal if none.
        cutover = await self.watch.wait_for(cut, self.s.gate_timeout_s, on_tick=stats_line, poll_s=1.0)
        self.console.print()
        refusals = self.shadow_refusals(model.version)
        for d in refusals:
            self.say(f"[bold]controller[/bold] → stays {d.mode}: {d.reason}")
        if cutover is None:
            reason = refusals[-1].reason if refusals else "no verdict in time (too few comparisons?)"
            raise StoryEnded(f"the shadow gate did not pass for version {model.version}: {reason}")
        self.say(f"[bold]controller[/bold] → {cutover.mode}: {cutover.reason}")
        return cutover, rest

    def shadow_refusals(self, version: str) -> list[RoutingDecision]:
        """The shadow gate's refusals while `version` shadowed (the history keeps them; the mode stays)."""
        return [d for d in self.history() if evidence(d).get("gate") == "shadow" and d.mode != "small"
                and d.model_version == version]

    async def small_and_drift(self, cutover: RoutingDecision) -> None:
        if not await self.router_mode("small", cutover.model_version):
            raise StackError("the router did not follow the cutover")
        self.say(f"cutover: small mode, threshold {cutover.threshold:.4f}, predicted fallback rate "
                 f"{cutover.predicted_fallback_rate:.1%}")
        moved = [PlannedCall(c.call_id, c.task, "small", c.text, c.gold, c.drift) for c in self.rest_of_shadow]
        await self.send("small", moved + self.plan.small, concurrency=self.s.small_concurrency)
        small = [r for r in self.results["small"] if r.ok and r.served_by in ("small", "fallback")]
        observed = sum(r.served_by == "fallback" for r in small) / max(len(small), 1)
        self.say(f"fallback rate observed {observed:.1%} vs predicted {cutover.predicted_fallback_rate:.1%}")
        early = self.decided(lambda d, e: e.get("verdict") == "demoted")()
        if early is not None:
            raise StoryEnded(f"the controller demoted the task before any drift: {early.reason}")
        self.console.print(f"  [bold]drift[/bold]: the bank launches currency exchange; {self.s.drift_share:.0%} of the "
                           f"traffic is now about {len(self.plan.held_out)} intents the model never saw")
        self.facts["drift"] = {"labels": list(self.plan.held_out), "started": time.time()}
        demoted = self.decided(lambda d, e: e.get("verdict") == "demoted")
        await self.send("drift", self.plan.drift)
        decision = await self.watch.wait_for(demoted, self.s.gate_timeout_s)
        if decision is None:
            raise StoryEnded("the controller did not demote the task within the drift traffic")
        request = await self.watch.wait_for(lambda: next((r for r in self.watch.records(catalog.RETRAIN_REQUESTS)
                                                          if r.task == self.s.task), None), 30.0)
        self.say(f"[bold]controller[/bold] → {decision.mode}: {decision.reason}")
        if request:
            self.say(f"retrain requested ({request.request_id}): {request.reason}")
        self.facts["drift"] |= {"demoted_at": decision.ts.timestamp(),
                                "retrain_request": json.loads(request.model_dump_json()) if request else None}

    # -- after the demotion: the retrain the controller asked for, and the gates again ------------
    def captured_ids(self) -> set[str]:
        return {c.call_id for c in self.watch.records(catalog.CALLS_CAPTURED) if c.task == self.s.task}

    async def retrain_and_regate(self) -> None:
        request = (self.facts.get("drift") or {}).get("retrain_request")
        if not request:
            raise StoryEnded("the controller demoted the task but published no retrain request")
        self.facts["retrain"] = {"request": request}
        self.facts["retrain"]["review"] = await self.review_again()
        snapshot = await self.retrain_snapshot()
        model = await self.retrain_by_worker(request, snapshot)
        try:
            cutover, rest = await self.shadow_until_cutover(model, self.plan.regate, "retrain-shadow",
                                                            keep=len(self.plan.regate) // 3)
        finally:
            offline = self.decided(lambda d, e: e.get("gate") == "offline"
                                   and str(e.get("candidate")) == model.version)()
            self.facts["retrain"]["offline"] = decision_rows([offline])[0] if offline else None
            self.facts["retrain"]["shadow_refusals"] = decision_rows(self.shadow_refusals(model.version))
        await self.small_again(model, cutover, rest)

    async def review_again(self) -> dict[str, Any]:
        """The simulated review goes on: Banking77's label for the holdout calls captured since the first
        snapshot (shadow, small-mode fallbacks, the drift), so the next gate is graded on gold that
        includes the launch's intents."""
        fraction = load_settings(CuratorSettings).holdout_fraction
        later = [r for name in ("shadow", "small", "drift") for r in self.results.get(name, [])
                 if r.ok and r.served_by in ("frontier", "fallback")]
        expected = {r.call.call_id for r in later}

        def all_in() -> Optional[bool]:
            self.stack.check_alive()
            return expected <= self.captured_ids() or None
        complete = bool(await self.watch.wait_for(all_in, 90.0))
        captured = self.captured_ids()
        holdout = [r for r in steps.holdout_calls(later, self.s.task, fraction) if r.call.call_id in captured]
        chosen = steps.choose_reviewed(holdout, self.s.review_share, self.s.seed)
        await steps.publish_reviews(self.w.kafka, self.codec, self.w.namespace, steps.reviewed_labels(chosen))
        launch = sum(r.call.drift for r in chosen)
        wrong = sum(r.output != r.call.gold for r in chosen)
        self.console.print("  [bold]review (SIMULATED), continued[/bold]")
        self.say(f"{len(chosen):,} holdout calls captured since the first snapshot ({launch:,} about the launch's "
                 f"intents) got Banking77's own label as a ReviewedLabel; the frontier SIMULATOR had {wrong} of them "
                 f"wrong" + ("" if complete else " [yellow](not every call was captured yet)[/yellow]"))
        return {"holdout_calls": len(holdout), "reviewed": len(chosen), "about_launch_intents": launch,
                "frontier_wrong": wrong, "all_captured": complete}

    async def retrain_snapshot(self) -> dict[str, Any]:
        """A fresh curator snapshot: everything captured so far, the launch's intents included (the frontier
        answered them while the task fell back and shadowed). The retrain learns from all of it."""
        self.console.print("  [bold]snapshot[/bold] (fresh: the curator's view of everything captured)")
        manifest, _ = await asyncio.to_thread(steps.run_json, [str(GRADUATE), "dataset", "snapshot", "--task",
                                                               self.s.task, "--json"], self.w.env, REPO_ROOT)
        info = steps.snapshot_facts(Path(manifest["path"]), self.plan.held_out)
        frontier = info["frontier_accuracy_reviewed"]
        target = min(0.995, frontier + self.s.threshold_headroom) if frontier is not None else None
        first = self.facts.get("snapshot") or {}
        self.say(f"snapshot {manifest['snapshot_id']}: train {manifest['counts']['train']:,} (was "
                 f"{(first.get('counts') or {}).get('train', 0):,}), holdout {manifest['counts']['holdout']:,} "
                 f"({manifest['reviewed']['holdout']:,} reviewed); the launch's intents: "
                 f"{info['launch_rows']['train']:,} train rows, {info['launch_rows']['holdout']:,} holdout rows "
                 f"({info['launch_reviewed']['holdout']:,} reviewed); label set: all {len(manifest['labels'])} of the "
                 f"task's labels, {info['labels_with_train_rows']} with training rows")
        if target is not None:
            self.say(f"threshold target: kept accuracy ≥ {target:.1%} — the frontier's {frontier:.1%} on the reviewed "
                     f"holdout + {self.s.threshold_headroom:.0%} headroom")
        out = {"id": manifest["snapshot_id"], "counts": manifest["counts"], "reviewed": manifest["reviewed"],
               "labels": len(manifest["labels"]), "curation": manifest.get("curation"), **info,
               "threshold_target": target}
        self.facts["retrain"]["snapshot"] = out
        return out

    async def retrain_by_worker(self, request: dict[str, Any], snapshot: dict[str, Any]) -> ModelRegistered:
        """`graduate worker trainer` consumes the controller's RetrainRequest from graduate.retrain.requests,
        trains on the newest snapshot (the one just taken), serves the new version and registers it."""
        previous = self.facts["training"]["version"]
        epochs = self.s.retrain_epochs or self.s.epochs
        self.console.print(f"  [bold]retrain[/bold]: the trainer worker acts on retrain request {request['request_id']}")
        await self.one_training_at_a_time()
        knobs = self.train_knobs(snapshot["threshold_target"]) | {
            "GRADUATE_TRAIN_EPOCHS": str(epochs), "GRADUATE_TRAIN_TRITON_MODEL": self.w.triton_model,
            "GRADUATE_TRAIN_CONSUMER_GROUP": f"{self.w.namespace}trainer"}
        if self.s.max_train_examples:
            knobs["GRADUATE_TRAIN_MAX_EXAMPLES"] = str(self.s.max_train_examples)
        worker = self.stack.spawn("worker-trainer", ["worker", "trainer"], knobs)
        started = time.monotonic()

        def registered() -> Optional[ModelRegistered]:
            return next((m for m in self.watch.records(catalog.MODELS)
                         if m.triton_model == self.w.triton_model and m.version != previous), None)
        model = None
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=self.console) as progress:
            bar = progress.add_task("  fine-tuning", total=None)
            while (model := registered()) is None:
                if worker.process.poll() is not None:
                    raise StackError(f"the trainer worker exited ({worker.process.returncode}); log "
                                     f"{worker.log_file}:\n{tail(worker.log_file, 40)}")
                if re.search(r"trainer: run for \S+ failed", tail(worker.log_file, 200)):
                    raise StackError(f"the trainer worker's run failed (the request went to the dead-letter "
                                     f"topic); log {worker.log_file}:\n{tail(worker.log_file, 40)}")
                if time.monotonic() - started > self.s.train_timeout_s:
                    raise StackError(f"the retrain ran past {self.s.train_timeout_s:.0f} s")
                progress.update(bar, description=f"  trainer worker: {tail(worker.log_file, 1).strip()[:100]}")
                await asyncio.sleep(1.0)
        seconds = time.monotonic() - started
        await self.watch.wait_for(lambda: "registered" in tail(worker.log_file, 5) or None, 15.0)
        self.stack.stop_service(worker)
        log = worker.log_file.read_text(errors="replace")
        answered_id = model.retrain_request_id  # the registration names the request it answers
        for line in log.splitlines():
            if line.startswith(("holdout:", "triton:", "int8:")) or "trainer: retraining" in line:
                self.say(line.split("graduate.trainer: ")[-1][:160])
        if answered_id != request["request_id"]:
            raise StackError(f"version {model.version} was not registered for request {request['request_id']} "
                             f"(its registration names {answered_id}); log {worker.log_file}")
        if model.snapshot_id != snapshot["id"]:
            raise StackError(f"the trainer worker trained on snapshot {model.snapshot_id}, not the fresh "
                             f"{snapshot['id']} (another snapshot of the task is newer under var/datasets?)")
        self.say(f"version {model.version} registered for request {answered_id}: holdout small "
                 f"{model.small_accuracy:.1%} vs frontier {model.frontier_accuracy:.1%} ({model.gold_reviewed:,} "
                 f"reviewed), threshold {model.threshold:.4f}, coverage {model.coverage:.1%}, {len(model.labels)} labels "
                 f"({seconds:.0f} s)")
        self.facts["retrain"]["training"] = {
            "seconds": round(seconds, 1), "version": model.version, "previous_version": previous,
            "epochs": epochs, "answered_request_id": answered_id, "by": "graduate worker trainer",
            "triton_model": model.triton_model, "registered": json.loads(model.model_dump_json())}
        return model

    async def small_again(self, model: ModelRegistered, cutover: RoutingDecision, rest: list[PlannedCall]) -> None:
        """Small mode with the retrained version, on the rest of the post-retrain traffic."""
        if not await self.router_mode("small", model.version):
            raise StackError(f"the router did not follow the cutover to version {model.version}")
        self.say(f"re-cutover: small mode with version {model.version}, threshold {cutover.threshold:.4f}, predicted "
                 f"fallback rate {cutover.predicted_fallback_rate:.1%}")
        moved = [PlannedCall(c.call_id, c.task, "retrain-small", c.text, c.gold, c.drift) for c in rest]
        if moved:
            await self.send("retrain-small", moved, concurrency=self.s.small_concurrency)
        # calls still in flight when the shadow gate passed were served in small mode too
        small = [r for name in ("retrain-shadow", "retrain-small") for r in self.results.get(name, [])
                 if r.ok and r.served_by in ("small", "fallback")]
        fallback = sum(r.served_by == "fallback" for r in small)
        if small:
            launch = [r for r in small if r.call.drift]
            self.say(f"fallback rate observed {fallback / len(small):.1%} on {len(small):,} requests (predicted "
                     f"{cutover.predicted_fallback_rate:.1%}); on the launch's intents "
                     f"{sum(r.served_by == 'fallback' for r in launch) / max(len(launch), 1):.1%} of {len(launch):,}")
        else:
            self.say("[yellow]no post-retrain traffic was left for small mode[/yellow]")
        await asyncio.sleep(2.0)  # the controller's watch reads the last outcomes
        demoted = self.decided(lambda d, e: e.get("verdict") == "demoted" and d.model_version == model.version)()
        routed = self.current_decision()
        self.facts["retrain"] |= {
            "shadow": decision_rows([cutover])[0],
            "shadow_refusals": decision_rows(self.shadow_refusals(model.version)),
            "final": {"mode": routed.mode if routed else None, "model_version": routed.model_version if routed else None,
                      "threshold": routed.threshold if routed else None,
                      "predicted_fallback_rate": routed.predicted_fallback_rate if routed else None,
                      "reason": routed.reason if routed else None},
            "small_calls": len(small), "fallbacks": fallback, "cutover_at": cutover.ts.timestamp()}
        if demoted is not None:
            raise StoryEnded(f"the controller demoted version {model.version} too: {demoted.reason}")

    def current_decision(self) -> Optional[RoutingDecision]:
        """The task's routing as the last decision that set it (the history minus refusals)."""
        routed = [d for d in self.history() if evidence(d).get("verdict") != "refused"]
        return routed[-1] if routed else None
