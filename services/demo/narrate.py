"""What both demos (Banking77's services/demo/run.py, Restaurant-8k's services/demo/extraction.py)
share: telling the story (phases, lines), reading the controller's decisions from the routing
history, waiting for the router to follow a mode, sending planned traffic with a progress bar, and
running until the first SIGINT/SIGTERM (which cancels the run; the run then stops everything).
"""
from __future__ import annotations

import asyncio
import shutil
import signal
import time
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Optional

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.common import catalog
from services.common.contracts import RoutingDecision
from services.demo import steps
from services.demo.collect import evidence
from services.demo.replay import CallResult, replay
from services.stack import alive
from services.demo.traffic import PlannedCall


class StoryEnded(Exception):
    """A service decided against going on (a gate refused): the report tells that story."""


class Narrator:
    """Mixed into a demo that has `s` (settings with task, concurrency, keep_artifacts, namespace),
    `w` (wiring), `console`, `stack`, `watch` (TopicWatch), `key`, `client`, `tasks`, `facts`,
    `results`, `t0` and a `keep_model_card()`."""

    s: Any
    w: Any
    console: Console
    stack: Any
    watch: Any
    key: str
    client: Any
    tasks: dict
    facts: dict[str, Any]
    results: dict[str, list[CallResult]]
    t0: float

    def keep_model_card(self) -> None:
        """Copy what the report keeps of the model before the run's artifacts are removed."""

    def say(self, text: str) -> None:
        self.console.print(f"  {text}")

    @contextmanager
    def phase(self, number: int, title: str):
        self.console.rule(f"[bold]{number}. {title}")
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.facts["meta"]["phases"].append({"n": number, "title": title, "seconds": round(seconds, 1)})
            self.console.print(f"  [dim]phase {number} took {seconds:.0f} s[/dim]")

    def history(self) -> list[RoutingDecision]:
        return [d for d in self.watch.records(catalog.ROUTING_HISTORY) if d.task == self.s.task]

    def decided(self, predicate: Callable[[RoutingDecision, dict], bool]) -> Callable[[], Optional[RoutingDecision]]:
        def find() -> Optional[RoutingDecision]:
            self.stack.check_alive()
            return next((d for d in self.history() if predicate(d, evidence(d))), None)
        return find

    async def router_mode(self, mode: str, version: Optional[str] = None, timeout_s: float = 60.0) -> bool:
        """Wait until the router itself serves the task in `mode` (with model `version`, when named): it
        follows the compacted routing topic."""
        headers = {"Authorization": f"Bearer {self.key}"}
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5.0) as http:
            while time.monotonic() < deadline:
                body = (await http.get(f"{self.w.router_url}/v1/tasks", headers=headers)).json()
                if any(t["task"] == self.s.task and t["mode"] == mode
                       and (version is None or t["model_version"] == version) for t in body["tasks"]):
                    return True
                await asyncio.sleep(0.3)
        return False

    async def send(self, name: str, calls: list[PlannedCall], stop: Optional[Callable[[], bool]] = None,
                   concurrency: Optional[int] = None) -> list[CallResult]:
        counts: dict[str, int] = {}
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[paths]}"))
        with Progress(*columns, console=self.console, transient=False) as progress:
            bar = progress.add_task(f"  {name}", total=len(calls), paths="")

            def seen(r: CallResult) -> None:
                key = (r.served_by or "error") if r.ok else "error"
                counts[key] = counts.get(key, 0) + 1
                progress.update(bar, advance=1, paths=" ".join(f"{k} {v}" for k, v in sorted(counts.items())))

            results = await replay(self.client, self.tasks, calls, concurrency=concurrency or self.s.concurrency,
                                   on_result=seen, stop=stop)
        self.results.setdefault(name, []).extend(results)
        errors = [r for r in results if not r.ok]
        if errors:
            self.say(f"[yellow]{len(errors)} call(s) failed[/yellow], e.g. {errors[0].error}")
        return results

    # -- the end of a run ---------------------------------------------------------------------
    async def clean_up(self) -> None:
        """Remove this run's topics and bulky artifacts (the report keeps what matters), unless kept."""
        if self.s.keep_artifacts:
            return
        from trainer import triton_repo

        try:
            await asyncio.to_thread(triton_repo.unload_model, self.w.triton_http, self.w.triton_model)
        except Exception:  # noqa: BLE001 - Triton may be gone already; the files go either way
            pass
        shutil.rmtree(self.w.model_repository / self.w.triton_model, ignore_errors=True)
        shutil.rmtree(self.w.var_dir / "trainer" / "runs" / self.w.triton_model, ignore_errors=True)
        for folder in (self.w.var_dir / "faust").glob(f"{self.w.namespace}*"):
            shutil.rmtree(folder, ignore_errors=True)
        if self.s.namespace is None:  # a namespace of this run alone: its topics go with it
            await asyncio.wait_for(steps.delete_namespace(self.w.kafka, self.w.namespace), 30)

    async def teardown(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.watch is not None:
            await self.watch.stop()
        self.keep_model_card()
        stopped = await asyncio.to_thread(self.stack.stop_services)
        try:
            await self.clean_up()
        except Exception as exc:  # noqa: BLE001 - cleaning must not hide the run's own outcome
            self.say(f"[yellow]clean-up incomplete: {exc}[/yellow]")
        stopped += await asyncio.to_thread(self.stack.stop_backbone)
        pids = [pid for pid in self.stack.started_pids if alive(pid)]
        self.facts["meta"] |= {"stopped": stopped, "left_running": pids, "pids": self.stack.started_pids,
                               "wall_s": round(time.time() - self.t0, 1)}
        self.say(f"stopped: {', '.join(stopped) or 'nothing'}")


async def run_until_signalled(run: Callable[[], Awaitable[int]]) -> int:
    """Run a demo; the first SIGINT/SIGTERM cancels it (it then stops everything), later ones wait for that."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    signalled: list[int] = []

    def stop(sig: int) -> None:
        if not signalled:
            task.cancel()
        signalled.append(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    return await run()
