"""The profiler worker (faust): a live profile per task from captured calls and router outcomes.

Effect: table `summaries`: "call|<call_id>" or "outcome|<call_id>" -> [task, partition, the
small record the profile needs (`summarise_call` / `summarise_outcome`)], written blind (no
read-modify-write) and keyed by call_id, so a redelivery after a crash or a rebalance rewrites
the same record: every call counts once. Profiles are folded from the records of the partitions
this worker owns when asked: GET /profiler/candidates/ ranks the tasks; `graduate candidates`
computes the same from the whole topic.
"""
from __future__ import annotations

from prometheus_client import Gauge

from services.common import catalog
from services.common.contracts import CapturedCall, RouterOutcome
from services.common.settings import load_settings
from services.common.streams import (Item, WorkerSettings, active_partitions, by_partition, each_batch, for_partition,
                                     json_table, make_app, source_topic)
from services.profiler.logic import Profile, assess, rank, summarise_call, summarise_outcome
from services.profiler.report import task_specs
from services.profiler.settings import ProfilerSettings

settings: WorkerSettings = load_settings(WorkerSettings)
profiler: ProfilerSettings = load_settings(ProfilerSettings)
specs = task_specs(settings)  # an extraction task is judged by the structure of its answers

app = make_app("profiler", settings)
captured = source_topic(app, catalog.CALLS_CAPTURED, settings.topic_namespace)
outcomes = source_topic(app, catalog.ROUTER_OUTCOMES, settings.topic_namespace)
summaries = json_table(app, "summaries", sources=[captured, outcomes])

CALLS_PER_DAY = Gauge("graduate_profiler_calls_per_day", "requests per day (this worker's partitions)", ["task"])


@each_batch(app, captured, CapturedCall, size=profiler.worker_batch_size, within=profiler.worker_batch_within_s)
def profile_calls(items: list[Item[CapturedCall]]) -> None:
    for partition, group in by_partition(items).items():
        with for_partition(partition):
            for i in group:
                summaries[f"call|{i.value.call_id}"] = [i.value.task, partition, summarise_call(i.value)]


@each_batch(app, outcomes, RouterOutcome, size=profiler.worker_batch_size, within=profiler.worker_batch_within_s)
def profile_outcomes(items: list[Item[RouterOutcome]]) -> None:
    for partition, group in by_partition(items).items():
        with for_partition(partition):
            for i in group:
                summaries[f"outcome|{i.value.call_id}"] = [i.value.task, partition, summarise_outcome(i.value)]


def local_profiles() -> dict[str, Profile]:
    """Profiles of the partitions this worker owns now (the table also holds standby copies)."""
    owned = {"call": active_partitions(app, captured.get_topic_name()),
             "outcome": active_partitions(app, outcomes.get_topic_name())}
    out: dict[str, Profile] = {}
    for key, (task, partition, record) in list(summaries.items()):
        kind = key.split("|", 1)[0]
        if partition not in owned[kind]:
            continue
        p = out.setdefault(task, Profile(task))
        p.add_call_summary(record) if kind == "call" else p.add_outcome_summary(record)
    return out


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
