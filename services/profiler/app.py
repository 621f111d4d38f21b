"""The profiler worker: a live profile per task from captured calls and router outcomes.

Two batch processors (services/common/batch.py), one per source topic. Each keeps, per source
partition, a bounded `Profile` per task (counts, a latency histogram with 5 % buckets, capped
distinct outputs and field values, a hash sample of the inputs; services/profiler/logic.py) and
writes it with the offset it reached to its state topic, so a replay after a crash or a rebalance
never counts a call twice. GET /profiler/candidates/ ranks the tasks from the partitions this
worker owns; `graduate candidates` computes the same from the whole topic.
"""
from __future__ import annotations

from prometheus_client import Gauge

from services.common import catalog
from services.common.batch import BatchProcessor, Fold
from services.common.contracts import CapturedCall, RouterOutcome
from services.common.settings import load_settings
from services.common.streams import Emit, Item, WorkerSettings, make_app, refusal
from services.profiler.logic import (Profile, assess, fold_call_summaries, fold_outcomes, merge_profiles,
                                     profiles_from_json, profiles_json, rank, summarise_call)
from services.profiler.report import task_specs
from services.profiler.settings import ProfilerSettings

settings: WorkerSettings = load_settings(WorkerSettings)
profiler: ProfilerSettings = load_settings(ProfilerSettings)
specs = task_specs(settings)  # an extraction task is judged by the structure of its answers

app = make_app("profiler", settings)
STATE = Fold(dict, profiles_json, profiles_from_json)

CALLS_PER_DAY = Gauge("graduate_profiler_calls_per_day", "requests per day (this worker's partitions)", ["task"])


def profile_calls(profiles: dict[str, Profile], items: list[Item[CapturedCall]]) -> list[Emit]:
    """Fold a partition's batch of captured calls; a call that cannot be summarised is dead-lettered."""
    summaries, refused = [], []
    for item in items:
        try:
            summaries.append((item.value.task, summarise_call(item.value)))
        except Exception as exc:  # noqa: BLE001 - one bad call must not stop its batch
            refused.append(refusal(app, item, exc))
    fold_call_summaries(profiles, summaries)
    return refused


def profile_outcomes(profiles: dict[str, Profile], items: list[Item[RouterOutcome]]) -> None:
    fold_outcomes(profiles, (i.value for i in items))


calls = BatchProcessor(app, catalog.CALLS_CAPTURED, CapturedCall, profile_calls, STATE,
                       max_records=profiler.worker_batch_size)
outcomes = BatchProcessor(app, catalog.ROUTER_OUTCOMES, RouterOutcome, profile_outcomes, STATE,
                          max_records=profiler.worker_batch_size)


def local_profiles() -> dict[str, Profile]:
    """Profiles of the partitions this worker owns now."""
    return merge_profiles([*calls.partitions().values(), *outcomes.partitions().values()])


def local_candidates():
    return rank([assess(p, profiler.thresholds(), profiler.costs(), window_days=profiler.window_days,
                        min_span_hours=profiler.min_span_hours, spec=specs.get(p.task))
                 for p in local_profiles().values()])


@app.timer(settings.worker_lag_interval_s * 2)
async def publish_profile_gauges() -> None:
    for c in local_candidates():
        CALLS_PER_DAY.labels(c.task).set(c.measures.calls_per_day)


@app.page("/profiler/candidates/")
async def candidates_view(web, request):
    return web.json([c.as_dict() for c in local_candidates()])
