"""The controller worker (faust): graduations started, the gate, the cutover, the watch, the demotion.

`graduate worker controller`. At start it replays the compacted routing topic, the history,
the models and the judge's stats into a `Controller` (control.py); every handler waits for that,
then decodes, asks the controller, and sends the decisions (routing topic + history), refusals
(history) and retrain requests it returns. Every `look_interval_s` it reads the captured and
reviewed topics for tasks that have no model asked for yet (graduation.py) and exports how many
reviewed holdout items each still needs (graduate_reviews_needed; after a drift, the reviews of
data captured since it). A retrain request the trainer
dead-letters (a snapshot the gate could not use) takes the task out of `training` again. Run ONE controller per namespace: a task's window
spans every partition of the router outcomes, and decisions need a single writer.
"""
from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from services.common import catalog
from services.common.contracts import (CapturedCall, DeadLetter, ModelRegistered, RetrainRequest, RouterOutcome,
                                       RoutingDecision, ShadowStats)
from services.common.settings import load_settings
from services.common.streams import (Emit, Meta, WorkerSettings, each_event, health, make_app, plumbing, send_emits,
                                     source_topic)
from services.common.tasks import load_tasks
from services.controller.control import Controller, Effects, reviews_needed
from services.controller.settings import ControllerSettings
from services.controller.store import Replayed, emits_of, read_signals, replay_state, trainer_refusal
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
app = make_app("controller", settings)
namespace = settings.topic_namespace
models = source_topic(app, catalog.MODELS, namespace)
shadow_stats = source_topic(app, catalog.SHADOW_STATS, namespace)
decisions = source_topic(app, catalog.ROUTING_DECISIONS, namespace)
outcomes = source_topic(app, catalog.ROUTER_OUTCOMES, namespace)
captured = source_topic(app, catalog.CALLS_CAPTURED, namespace)
requests = source_topic(app, catalog.RETRAIN_REQUESTS, namespace)
letters = source_topic(app, catalog.DEADLETTER, namespace)
ready = asyncio.Event()
health(app).require("routing, models and stats replay", ready.is_set)
replayed = Replayed()


@app.task
async def replay() -> None:
    while True:
        try:
            done = await replay_state(controller, settings.kafka, plumbing(app).codec, namespace)
            break
        except Exception:
            log.exception("controller: replay of the routing, models and stats topics failed; retrying")
            await asyncio.sleep(2.0)
    replayed.ends, replayed.undecodable, replayed.letter_ends = done.ends, done.undecodable, done.letter_ends
    log.info("controller: replayed %s (%d undecodable); tasks: %s", done.ends, done.undecodable,
             {t: controller.current(t).mode for t in controller.tasks() if controller.current(t)})
    ready.set()


def send(effects: Effects) -> list[Emit]:
    for d in effects.decisions:
        log.info("controller: %s -> %s (%s): %s", d.task, d.mode, d.model_version, d.reason)
    for d in effects.refusals:
        log.info("controller: %s refused: %s", d.task, d.reason)
    return emits_of(effects)


@each_event(app, decisions, RoutingDecision)
async def follow_decision(decision: RoutingDecision, meta: Meta) -> None:
    await ready.wait()
    if meta.offset >= replayed.ends.get(meta.topic, 0):
        controller.read_decision(decision)


@each_event(app, models, ModelRegistered)
async def gate_model(model: ModelRegistered, meta: Meta) -> list[Emit]:
    await ready.wait()
    return send(controller.on_model(model))


@each_event(app, shadow_stats, ShadowStats)
async def gate_shadow(stats: ShadowStats, meta: Meta) -> list[Emit]:
    await ready.wait()
    return send(controller.on_stats(stats))


@each_event(app, outcomes, RouterOutcome)
async def watch_outcome(outcome: RouterOutcome, meta: Meta) -> list[Emit]:
    await ready.wait()
    return send(controller.on_outcome(outcome))


@each_event(app, captured, CapturedCall)
async def watch_sampled(call: CapturedCall, meta: Meta) -> list[Emit]:
    await ready.wait()
    return send(controller.on_captured(call))


@each_event(app, requests, RetrainRequest)
async def follow_request(request: RetrainRequest, meta: Meta) -> list[Emit]:
    await ready.wait()
    if meta.offset < replayed.ends.get(meta.topic, 0):
        return []
    return send(controller.on_request(request))


@each_event(app, letters, DeadLetter)
async def follow_refusal(letter: DeadLetter, meta: Meta) -> list[Emit]:
    """A retrain request the trainer refused: the task leaves `training`, the history says why."""
    await ready.wait()
    refused = trainer_refusal(letter, plumbing(app).codec, namespace)
    if refused is None or meta.offset < replayed.letter_ends.get(meta.partition, 0):
        return []
    return send(controller.on_refusal(*refused))


@app.timer(control_settings.look_interval_s)
async def look_at_tasks() -> None:
    """Read the data of the tasks still waiting for a first model; start or mark their graduation."""
    if not ready.is_set():
        return
    await send_emits(app, send(controller.on_schedule()))
    waiting = {t: s for t, s in specs.items() if controller.needs_look(t)}
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
                  "reviews_needed": reviews_needed(signal)}
    return web.json(out)
