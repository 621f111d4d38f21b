"""The controller worker (faust): the gate, the cutover, the fallback-rate watch, the demotion.

`graduate worker controller`. At start it replays the compacted routing topic, the history,
the models and the judge's stats into a `Controller` (control.py); every handler waits for that,
then decodes, asks the controller, and sends the decisions (routing topic + history), refusals
(history) and retrain requests it returns. Run ONE controller per namespace: a task's window
spans every partition of the router outcomes, and decisions need a single writer.
"""
from __future__ import annotations

import asyncio
import logging

from services.common import catalog
from services.common.contracts import CapturedCall, ModelRegistered, RouterOutcome, RoutingDecision, ShadowStats
from services.common.settings import load_settings
from services.common.streams import Emit, Meta, WorkerSettings, each_event, health, make_app, plumbing, source_topic
from services.controller.control import Controller, Effects
from services.controller.settings import ControllerSettings
from services.controller.store import Replayed, emits_of, replay_state

log = logging.getLogger("graduate.controller")

settings: WorkerSettings = load_settings(WorkerSettings)
controller = Controller(load_settings(ControllerSettings))
app = make_app("controller", settings)
namespace = settings.topic_namespace
models = source_topic(app, catalog.MODELS, namespace)
shadow_stats = source_topic(app, catalog.SHADOW_STATS, namespace)
decisions = source_topic(app, catalog.ROUTING_DECISIONS, namespace)
outcomes = source_topic(app, catalog.ROUTER_OUTCOMES, namespace)
captured = source_topic(app, catalog.CALLS_CAPTURED, namespace)
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
    replayed.ends, replayed.undecodable = done.ends, done.undecodable
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


@app.page("/controller/state/")
async def state_view(web, request):  # noqa: ARG001
    return web.json({t: d.model_dump(mode="json") for t in controller.tasks() if (d := controller.current(t))})
