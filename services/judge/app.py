"""The judge worker (faust): shadow results against the frontier and reviewed labels.

Shadow results and reviewed labels are re-keyed by task onto the judge's internal topic, so
every record of a task (and all its model versions) lives on one worker: its statistics are
complete there, and a label meets its call's results whatever order they arrive in. The state
(one record per call_id: its verdicts per model version and its review) is kept in memory and
written to the judge's own compacted state topic (services/judge/store.py), to the partition of
the by-task event; it is read back after every assignment before anything is judged. A result
seen before (same call_id and version) changes nothing, so a replay after a crash counts nothing
twice. A disagreement is published (and its delivery awaited) before the state records the call,
so a recorded call's disagreement is never missing; a crash between the two re-publishes it
under the same key (at-least-once).

Statistics: ShadowStats per task/version on the compacted stats topic, when they changed (at
most every `stats_interval_s`) and all of them every `stats_refresh_s`.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from services.common import catalog
from services.common.contracts import ReviewedLabel, ShadowResult
from services.common.settings import load_settings
from services.common.streams import Emit, Meta, WorkerSettings, each_event, health, internal_topic, make_app, \
    plumbing, send_dead_letter, send_emits, source_topic
from services.judge.logic import Group, JudgeState, disagreement_of
from services.judge.settings import JudgeSettings
from services.judge.store import StateStore, encode_record
from services.common.routing_state import RoutingFollower

log = logging.getLogger(__name__)

settings: WorkerSettings = load_settings(WorkerSettings)
judge: JudgeSettings = load_settings(JudgeSettings)

app = make_app("judge", settings, partitions=judge.partitions)
codec = plumbing(app).codec
results = source_topic(app, catalog.SHADOW_RESULTS, settings.topic_namespace)
labels = source_topic(app, catalog.LABELS_REVIEWED, settings.topic_namespace)
by_task = internal_topic(app, "by-task", partitions=judge.partitions)
state_topic = internal_topic(app, "state", partitions=judge.partitions, config={"cleanup.policy": "compact"})
store = StateStore(settings.kafka, state_topic.get_topic_name())
JUDGED = Counter("graduate_judge_events", "events the judge applied", ["kind", "outcome"])
AGREEMENT = Gauge("graduate_judge_agreement", "share of shadow answers that agree with the gold label "
                  "(reviewed, else frontier), per task and model version", ["task", "model_version"])


@dataclass
class Judge:
    """This worker's state for the by-task partitions it owns; reloaded after each assignment."""

    state: JudgeState
    owned: set[int] = field(default_factory=set)
    dirty: set[Group] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int = 0


routing = RoutingFollower(settings.kafka, codec, settings.topic_namespace,
                          on_poison=lambda meta, raw, exc: send_dead_letter(app, meta, raw, exc))
current = Judge(JudgeState(threshold_of=routing.state.threshold_for))
health(app).require("routing replay", routing.ready.is_set)
health(app).require("judge state", current.ready.is_set)


def thresholds_changed() -> None:
    current.dirty |= current.state.refresh_thresholds()


routing.on_change = thresholds_changed


@app.task
async def follow_routing() -> None:
    await routing.run()


async def load_state(generation: int, owned: set[int]) -> None:
    delay = 0.5
    while True:
        try:
            await app.producer.flush()  # this worker's own state writes first
            records = await store.load(owned)
            break
        except Exception as exc:  # Kafka away: keep trying, nothing is judged meanwhile
            log.warning("judge: cannot load state of partitions %s (%s); retrying in %.1f s", sorted(owned), exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)
    if generation != current.generation:
        return  # another assignment came meanwhile
    state = JudgeState.load(records, threshold_of=routing.state.threshold_for)
    current.state, current.owned, current.dirty = state, owned, set(state.groups())
    current.ready.set()
    log.info("judge: loaded %d records in %d groups for partitions %s", len(records), len(state.groups()),
             sorted(owned))


@app.on_partitions_revoked.connect
async def on_revoked(sender, revoked, **kwargs) -> None:  # noqa: ARG001
    current.ready.clear()


@app.on_partitions_assigned.connect
async def on_assigned(sender, assigned, **kwargs) -> None:  # noqa: ARG001
    current.ready.clear()
    current.generation += 1
    owned = {tp.partition for tp in assigned if tp.topic == by_task.get_topic_name()}
    asyncio.ensure_future(load_state(current.generation, owned))


def to_task(value: ShadowResult | ReviewedLabel, meta: Meta) -> Emit:  # noqa: ARG001
    return Emit(by_task, value.task, value)


each_event(app, results, ShadowResult, name="judge.results_by_task")(to_task)
each_event(app, labels, ReviewedLabel, name="judge.labels_by_task")(to_task)


@each_event(app, by_task, (ShadowResult, ReviewedLabel), name="judge.judge")
async def judge_one(value: ShadowResult | ReviewedLabel, meta: Meta) -> None:
    await routing.ready.wait()
    await current.ready.wait()
    if meta.partition not in current.owned:
        return  # revoked while this event waited: its new owner reads it again
    state = current.state
    if isinstance(value, ShadowResult):
        if state.seen(value.call_id, value.model_version):
            JUDGED.labels("result", "duplicate").inc()
            return
        disagreement = disagreement_of(value, state.reviews.get(value.call_id))
        if disagreement is not None:
            topic = plumbing(app).topic(app, catalog.DISAGREEMENTS)
            delivered = await topic.send(key=value.call_id.encode(), value=codec.encode(disagreement))
            await delivered
        state.apply_result(value)
        current.dirty.add((value.task, value.model_version))
        JUDGED.labels("result", "new").inc()
    else:
        changed = state.apply_review(value)
        current.dirty |= changed
        JUDGED.labels("review", "graded" if changed else "held").inc()
    record = state.record(value.call_id)
    empty = not record["results"] and record["review"] is None
    await state_topic.send(key=value.call_id.encode(), value=encode_record(None if empty else record),
                           partition=meta.partition)


async def publish(groups) -> None:
    stats = [current.state.stats(group) for group in sorted(groups)]
    await send_emits(app, [Emit(catalog.SHADOW_STATS, f"{s.task}/{s.model_version}", s) for s in stats])
    for s in stats:
        if s.compared:
            AGREEMENT.labels(s.task, s.model_version).set(s.agreed / s.compared)


@app.timer(judge.stats_interval_s)
async def publish_changed() -> None:
    if current.dirty and current.ready.is_set():
        groups, current.dirty = current.dirty, set()
        await publish(groups)


@app.timer(judge.stats_refresh_s)
async def publish_all() -> None:
    if current.ready.is_set():
        await publish(current.state.groups())


@app.page("/judge/stats/")
async def stats_view(web, request):
    task = request.query.get("task")
    return web.json([current.state.stats(g).model_dump(mode="json") for g in current.state.groups()
                     if task is None or g[0] == task])
