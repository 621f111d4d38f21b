"""`make demo` / `python -m services.demo.run`: the whole graduation loop on Banking77.

1 set up (Kafka, Triton, the frontier SIMULATOR, the router, five workers: separate processes)
2 capture (backend services call the router: Banking77 train inputs + a low-volume draft-reply task)
3 candidates (the profiler's ranking) · 4 the simulated review of a holdout slice
5 snapshot → train → offline gate → shadow on live test traffic → shadow gate → cutover to small
6 small mode with fallback, then the launch of intents held out of training: drift → demotion → retrain request
7 the trainer worker answers the retrain request (a fresh snapshot that holds the launch's intents) → offline
  gate → shadow on unseen test traffic → shadow gate → small mode again with the new version
8 gold evaluation, stop everything, write demo-report/

The demo decides nothing: the services do (gate, cutover, demotion, retrain); it sends traffic,
waits for their records, and reports. Everything it started is stopped, also on failure or Ctrl-C.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Any, Optional

import httpx
from rich.console import Console

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import ModelRegistered
from services.common.kafka import ensure_topics
from services.common.settings import CommonSettings, load_settings
from services.common.tasks import load_tasks
from services.demo import collect, steps
from services.demo.bootstrap import start_services, wire
from services.demo.observe import TopicWatch
from services.demo.replay import CallResult, make_client
from services.demo.settings import DemoSettings
from services.stack import Stack, StackError
from services.demo.narrate import run_until_signalled
from services.demo.story import Story, StoryEnded
from services.demo.traffic import PlannedCall, plan_traffic
from services.router.keys import create_key

WATCHED = [catalog.CALLS_CAPTURED, catalog.MODELS, catalog.ROUTING_HISTORY, catalog.SHADOW_STATS,
           catalog.DISAGREEMENTS, catalog.RETRAIN_REQUESTS]


class Demo(Story):
    def __init__(self, settings: DemoSettings, console: Console) -> None:
        self.s, self.console = settings, console
        self.w = wire(settings)
        self.stack = Stack(self.w.var_dir, self.w.env, self.w.script_env, say=lambda m: console.print(f"  {m}"))
        self.codec = Codec()
        common = load_settings(CommonSettings)
        self.tasks = load_tasks(common.tasks_file).tasks
        self.task = self.tasks[settings.task]
        self.watch: Optional[TopicWatch] = None
        self.target: Optional[float] = None
        self.rest_of_shadow: list[PlannedCall] = []
        self.client = None
        self.results: dict[str, list[CallResult]] = {}
        self.t0 = time.time()
        self.facts: dict[str, Any] = {"meta": {"run_id": self.w.run_id, "namespace": self.w.namespace,
                                               "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                               "phases": [], "status": "running",
                                               "settings": json.loads(settings.model_dump_json())}}

    async def setup(self) -> None:
        with self.phase(1, "Set up: Kafka, Triton, the frontier SIMULATOR, the router and five workers"):
            self.say("No real frontier API is reachable here: a SIMULATOR answers in its place "
                     f"(accuracy {self.s.sim_accuracy:.0%} against Banking77's labels, "
                     f"{self.s.sim_latency_min_ms:.0f}–{self.s.sim_latency_max_ms:.0f} ms).")
            await asyncio.to_thread(self.stack.start_backbone, self.w.external_kafka, self.w.external_triton)
            await ensure_topics(self.w.kafka, self.w.namespace)
            self.say(f"topics ensured under namespace [bold]{self.w.namespace}[/bold]")
            self.key = create_key(self.w.var_dir / "keys.json", f"demo-backend-{self.w.run_id}")
            ready = await asyncio.to_thread(start_services, self.stack, self.w, self.s)
            for name, seconds in ready.items():
                self.say(f"{name} ready ({seconds:.1f} s)")
            self.facts["meta"]["processes"] = [s.name for s in self.stack.services]
            self.watch = TopicWatch(self.w.kafka, self.codec, self.w.namespace, WATCHED)
            await self.watch.start()
            self.client = make_client(self.w.router_url, self.key, self.s.concurrency)

    async def evaluate_gold(self, model: ModelRegistered) -> None:
        """Every test input that was sent, answered by the small model alone (Triton) and — where the
        frontier did not answer it live — by the frontier SIMULATOR asked directly (it is deterministic
        per input, so that is the answer it gives live): the paired gold comparison of the report."""
        calls = [r.call for phase in ("shadow", "small", "drift") for r in self.results.get(phase, []) if r.ok]
        unique = list({c.call_id: c for c in calls}.values())
        answers = await steps.ask_small_model(self.w.triton_grpc, self.w.triton_model, model.version,
                                              [c.text for c in unique])
        self.facts["small_answers"] = {c.call_id: [a.label, round(float(a.confidence), 6)]
                                       for c, a in zip(unique, answers)}
        live = {r.call.call_id: r.output for phase in ("shadow", "small") for r in self.results.get(phase, [])
                if r.ok and r.served_by in ("frontier", "fallback")}
        missing = [r.call for r in self.results.get("small", []) if r.ok and r.call.call_id not in live]
        asked = await steps.ask_frontier(self.w.sim_url, self.task, missing, self.s.concurrency)
        self.facts["frontier_answers"] = {**live, **asked}
        self.facts["frontier_answers_asked_directly"] = len(asked)
        async with httpx.AsyncClient(timeout=5.0) as http:
            self.facts["simulator"] = (await http.get(f"{self.w.sim_url}/v1/sim/stats")).json()

    async def evaluate_retrain(self) -> None:
        """The post-retrain test inputs (never sent before), answered by the previous and the new version
        alone, straight from Triton: what the retrain learnt, against Banking77's labels."""
        calls = [r.call for phase in ("retrain-shadow", "retrain-small") for r in self.results.get(phase, []) if r.ok]
        unique = list({c.call_id: c for c in calls}.values())
        training = self.facts["retrain"]["training"]
        texts = [c.text for c in unique]
        before = await steps.ask_small_model(self.w.triton_grpc, self.w.triton_model, training["previous_version"], texts)
        after = await steps.ask_small_model(self.w.triton_grpc, self.w.triton_model, training["version"], texts)
        self.facts["retrain_answers"] = {c.call_id: {"previous": [a.label, round(float(a.confidence), 6)],
                                                     "new": [b.label, round(float(b.confidence), 6)]}
                                         for c, a, b in zip(unique, before, after)}

    def collect(self) -> None:
        """Everything the report needs, from the client's results and the topics, into plain JSON."""
        task = self.s.task
        self.facts["calls"] = collect.call_rows((r for phase in self.results.values() for r in phase), task)
        if self.watch is None:
            return
        records = self.watch.records
        self.facts["decisions"] = collect.decision_rows(self.history())
        new_intent = {r.call.call_id for r in self.results.get("drift", []) if r.call.drift}
        self.facts["disagreements"] = collect.disagreement_facts(
            [d for d in records(catalog.DISAGREEMENTS) if d.task == task],
            (self.facts.get("drift") or {}).get("started", float("inf")), new_intent)
        stats = [s for s in records(catalog.SHADOW_STATS) if s.task == task]
        self.facts["shadow_stats"] = json.loads(stats[-1].model_dump_json()) if stats else None
        self.facts["frontier_cost"] = collect.frontier_cost(
            [c for c in records(catalog.CALLS_CAPTURED) if c.task == task and c.source == "frontier"], self.task)
        self.facts["retrain_requests"] = [json.loads(r.model_dump_json()) for r in records(catalog.RETRAIN_REQUESTS)
                                          if r.task == task]

    # -- the end ---------------------------------------------------------------------------
    def keep_model_card(self) -> None:
        for training, name in ((self.facts.get("training"), "model"),
                               ((self.facts.get("retrain") or {}).get("training"), "model-retrained")):
            registered = (training or {}).get("registered")
            if not registered:
                continue
            folder = self.s.report_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            source = registered["artifact_uri"].removeprefix("file://")
            for file in ("model_card.md", "coverage_accuracy.png", "reliability.png", "confusion_worst.png"):
                try:
                    shutil.copyfile(f"{source}/{file}", folder / file)
                except OSError:
                    pass

    async def run(self) -> int:
        code = 0
        try:
            await self.setup()
            self.plan = plan_traffic(
                self.s.data_dir, self.s.task, self.s.freeform_task, train_calls=self.s.train_calls,
                freeform_calls=self.s.freeform_calls, shadow_calls=self.s.shadow_calls, small_calls=self.s.small_calls,
                drift_calls=self.s.drift_calls, drift_share=self.s.drift_share, drift_labels=self.s.drift_labels,
                seed=self.s.seed, intents=self.s.intents, regate_calls=self.s.regate_calls,
                regate_share=self.s.regate_share)
            await self.capture()
            await self.candidates()
            await self.review()
            with self.phase(5, "Snapshot → train → offline gate → shadow → shadow gate → cutover"):
                model = await self.train()
                cutover = await self.gate_and_shadow(model)
            with self.phase(6, "Small mode with fallback, then drift: intents held out of training"):
                await self.small_and_drift(cutover)
            with self.phase(7, "Retrain on a fresh snapshot → offline gate → shadow → shadow gate → small again"):
                await self.retrain_and_regate()
            self.facts["meta"]["status"] = "complete"
        except StoryEnded as exc:
            self.facts["meta"]["status"] = f"ended early: {exc}"
            self.console.print(f"[yellow]the story ends here: {exc}[/yellow]")
            code = 3
        except Exception as exc:  # noqa: BLE001 - whatever broke, everything is stopped and the report says why
            self.facts["meta"]["status"] = f"failed: {type(exc).__name__}: {exc}"
            self.console.print(f"[red]failed: {type(exc).__name__}: {exc}[/red]")
            if not isinstance(exc, StackError):
                self.console.print_exception(max_frames=8)
            code = 1
        except asyncio.CancelledError:
            self.facts["meta"]["status"] = "interrupted"
            self.console.print("[yellow]interrupted: stopping everything[/yellow]")
            code = 130
        finally:
            with self.phase(8, "Gold evaluation, stop everything, write the report"):
                if "training" in self.facts and code in (0, 3):
                    try:
                        await self.evaluate_gold(ModelRegistered.model_validate(self.facts["training"]["registered"]))
                    except Exception as exc:  # noqa: BLE001 - the report says what is missing
                        self.say(f"[yellow]gold evaluation skipped: {exc}[/yellow]")
                if (self.facts.get("retrain") or {}).get("training") and code in (0, 3):
                    try:
                        await self.evaluate_retrain()
                    except Exception as exc:  # noqa: BLE001 - the report says what is missing
                        self.say(f"[yellow]gold evaluation of the retrain skipped: {exc}[/yellow]")
                try:
                    self.collect()
                except Exception as exc:  # noqa: BLE001
                    self.say(f"[yellow]could not read everything back: {exc}[/yellow]")
                await self.teardown()
                from services.demo.report import write_report

                path = write_report(self.facts, self.s.report_dir)
                self.say(f"report: [bold]{path}[/bold]")
        return code


async def main_async(settings: DemoSettings, console: Console) -> int:
    return await run_until_signalled(Demo(settings, console).run)


def main() -> None:
    console = Console()
    settings = load_settings(DemoSettings)
    try:
        code = asyncio.run(main_async(settings, console))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
