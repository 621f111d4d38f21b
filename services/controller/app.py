"""The controller worker (faust): graduations started, the gate, the cutover, the watch, the demotion.

`graduate worker controller`, as many replicas as the router outcomes have partitions. The router
keys its outcomes by task, so a task's outcomes share a partition; the replicas form one consumer
group on them and a replica decides for the tasks whose partition it holds (ownership.py): it alone
keeps their watch windows and writes their decisions, retrain requests and notes. Every replica
follows the small topics whole (routing, history, models, the judge's stats, retrain requests,
dead letters; store.ControlFollower): the replay builds the state of every task, and a record
read after it is an event for its task's owner, who asks the `Controller` (control.py) and sends
the decisions (routing topic + history), refusals (history) and retrain requests it returns. A
replica that gains a task resumes it (`Controller.resume`: the gates on what arrived meanwhile).
Sampled frontier answers (captured calls with source "sampled") are re-keyed by task into an
internal topic co-partitioned with the outcomes, so they reach the same owner. Every
`look_interval_s` it reads the captured and reviewed topics for its tasks that have no model asked
for yet (graduation.py) and exports how many reviewed holdout items each still needs
(graduate_reviews_needed; after a drift, the reviews of data captured since it). A retrain request
the trainer dead-letters (a snapshot the gate could not use) takes the task out of `training` again.
"""
from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from services.common import catalog
from services.common.catalog import topic_name
from services.common.contracts import CapturedCall, RouterOutcome
from services.common.reader import TopicReader
from services.common.settings import load_settings
from services.common.streams import (Emit, Meta, WorkerSettings, active_partitions, each_event, health, internal_topic,
                                     make_app, plumbing, send_dead_letter, send_emits, source_topic)
from services.common.tasks import load_tasks
from services.controller.control import Controller, Effects, reviews_needed
from services.controller.ownership import task_partition
from services.controller.settings import ControllerSettings
from services.controller.store import FOLLOWED, ControlFollower, emits_of, read_signals
from services.curator.settings import CuratorSettings
from services.profiler.settings import ProfilerSettings

log = logging.getLogger("graduate.controller")

settings: WorkerSettings = load_settings(WorkerSettings)
control_settings: ControllerSettings = load_settings(ControllerSettings)
specs = {name: spec for name, spec in load_tasks(settings.tasks_file).tasks.items() if spec.graduatable}
controller = Controller(control_settings, {name: spec.graduation for name, spec in specs.items()})
holdout_fraction = load_settings(CuratorSettings).holdout_fraction
profiler = load_settings(ProfilerSettings)
REVIEWS_NEEDED = Gauge("graduate_reviews_needed", "reviewed holdout items the gate still needs", ["task"])
OWNED = Gauge("graduate_controller_owned_tasks", "tasks this controller replica decides for")
app = make_app("controller", settings)
namespace = settings.topic_namespace
outcomes = source_topic(app, catalog.ROUTER_OUTCOMES, namespace)
captured = source_topic(app, catalog.CALLS_CAPTURED, namespace)
sampled = internal_topic(app, "sampled", partitions=catalog.ROUTER_OUTCOMES.partitions)
for spec in FOLLOWED:  # created at start; read by the follower, not by the group
    plumbing(app).topic(app, spec)
outcomes_name = topic_name(catalog.ROUTER_OUTCOMES, namespace)


class Ownership:
    """The tasks this replica decides for: those whose outcome partition it holds now (ownership.py)."""

    def __init__(self) -> None:
        self.partitions = 0  # of the outcomes topic, read at start
        self.resumed: set[str] = set()  # tasks taken over (resumed) and still held

    def holds(self, task: str) -> bool:
        return bool(self.partitions) and task_partition(task, self.partitions) in active_partitions(app, outcomes_name)

    async def decides(self, task: str) -> bool:
        """Whether this replica decides for `task` now; the first time, it resumes the task."""
        if not self.holds(task):
            self.resumed.discard(task)
            return False
        if task not in self.resumed:
            self.resumed.add(task)
            log.info("controller: deciding for %s", task)
            await send_effects(controller.resume(task))
        return True


ownership = Ownership()


async def send_effects(effects: Effects) -> None:
    await send_emits(app, send(effects))


follower = ControlFollower(settings.kafka, plumbing(app).codec, namespace, controller, ownership.holds, send_effects,
                           on_poison=lambda meta, raw, exc: send_dead_letter(app, meta, raw, exc))
health(app).require("routing, models and stats replay", follower.ready.is_set)


@app.task
async def follow() -> None:
    while not ownership.partitions:  # how many partitions the tasks hash over
        try:
            async with TopicReader(settings.kafka, outcomes_name, last=0) as reader:
                ownership.partitions = len(reader.spans)
        except Exception as exc:  # noqa: BLE001 - Kafka away at start: try again
            log.warning("controller: cannot read %s's partitions (%s); retrying", outcomes_name, exc)
        if not ownership.partitions:
            await asyncio.sleep(2.0)
    await follower.run()


@app.timer(1.0)
async def resume_held() -> None:
    """Take over the tasks of newly held partitions once the state is replayed; let go of the others."""
    if not follower.ready.is_set():
        return
    for task in sorted(set(controller.tasks()) | set(specs) | ownership.resumed):
        await ownership.decides(task)
    OWNED.set(len(ownership.resumed))


def send(effects: Effects) -> list[Emit]:
    for d in effects.decisions:
        log.info("controller: %s -> %s (%s): %s", d.task, d.mode, d.model_version, d.reason)
    for d in effects.refusals:
        log.info("controller: %s refused: %s", d.task, d.reason)
    return emits_of(effects)


@each_event(app, outcomes, RouterOutcome)
async def watch_outcome(outcome: RouterOutcome, meta: Meta) -> list[Emit]:
    await follower.ready.wait()
    if not await ownership.decides(outcome.task):  # not keyed by task (an old router), or moved elsewhere
        return []
    return send(controller.on_outcome(outcome))


@each_event(app, captured, CapturedCall)
async def rekey_sampled(call: CapturedCall, meta: Meta) -> list[Emit]:
    """A sampled frontier answer, to its task's owner (the sampled topic is co-partitioned with the outcomes)."""
    return [Emit(sampled, call.task, call)] if call.source == "sampled" else []


@each_event(app, sampled, CapturedCall)
async def watch_sampled(call: CapturedCall, meta: Meta) -> list[Emit]:
    await follower.ready.wait()
    if not await ownership.decides(call.task):
        return []
    return send(controller.on_captured(call))


@app.timer(control_settings.look_interval_s)
async def look_at_tasks() -> None:
    """Read the data of the tasks still waiting for a first model; start or mark their graduation."""
    if not follower.ready.is_set():
        return
    mine = set(ownership.resumed)
    await send_emits(app, send(controller.on_schedule(tasks=mine)))
    waiting = {t: s for t, s in specs.items() if t in mine and controller.needs_look(t)}
    if not waiting:
        return
    try:
        since = {t: ts for t in waiting if (ts := controller.drift_since(t)) is not None}
        signals = await read_signals(settings, plumbing(app).codec, waiting, profiler, holdout_fraction,
                                     control_settings, since)
    except Exception:
        log.exception("controller: reading the captured and reviewed topics failed; next look in %ss",
                      control_settings.look_interval_s)
        return
    for signal in signals:
        REVIEWS_NEEDED.labels(signal.task).set(signal.drift.reviews_needed if signal.drift
                                               else signal.readiness.reviews_needed)
        await send_emits(app, send(controller.on_signal(signal)))


@app.page("/controller/state/")
async def state_view(web, request):  # noqa: ARG001
    out = {}
    for t in sorted(set(controller.tasks()) | set(specs)):
        d, g, signal = controller.current(t), controller.graduation(t), controller.signals.get(t)
        out[t] = {"decision": d.model_dump(mode="json") if d else None, "graduation": g.state, "reason": g.reason,
                  "reviews_needed": reviews_needed(signal), "decided_here": t in ownership.resumed}
    return web.json(out)
