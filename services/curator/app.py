"""The curator worker (faust): keeps the live dataset state that snapshots are taken from.

Two micro-batched stages: `curate` admits each captured call (services/curator/admission.py:
refusals go to the dead letters with their reason, counted in graduate_curator_refused_total by
producer) and re-keys each captured call by its normalised input (an
internal topic), so duplicates and conflicts meet in one partition; `track_inputs` writes the
effect, table `calls`: "<task>:<normalised hash>:<call_id>" -> {ts, label (None when the answer
did not parse), split, partition}. Every write is blind (no read-modify-write), keyed by call_id, so a
redelivery after a crash or a rebalance overwrites a call with itself: nothing lost, nothing
counted twice. GET /curator/stats/ shows this worker's partitions; /curator/review-queue/?task=T.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge

from services.common import catalog
from services.common.contracts import CapturedCall
from services.common.settings import load_settings
from services.common.streams import (Emit, Item, WorkerSettings, active_partitions, by_partition, each_batch, for_partition,
                                     internal_topic, json_table, make_app, refusal, source_topic)
from services.common.tasks import load_tasks
from services.curator.admission import Admission, Refused, producer_of
from services.curator.logic import call_entry, call_key, curate_call, table_stats
from services.curator.settings import CuratorSettings

settings: WorkerSettings = load_settings(WorkerSettings)
curator: CuratorSettings = load_settings(CuratorSettings)
admission = Admission.of(load_tasks(settings.tasks_file))

app = make_app("curator", settings)
captured = source_topic(app, catalog.CALLS_CAPTURED, settings.topic_namespace)
by_input = internal_topic(app, "by-input")
calls = json_table(app, "calls", sources=[by_input])

CALLS = Gauge("graduate_curator_calls", "curated calls and inputs on this worker's partitions", ["task", "kind"])
REFUSED = Counter("graduate_curator_refused", "captured records not admitted into the dataset (dead-lettered)",
                  ["producer", "reason"])


@each_batch(app, captured, CapturedCall, size=curator.batch_size, within=curator.batch_within_s)
def curate(items: list[Item[CapturedCall]]) -> list[Emit]:
    return [admit_one(item) for item in items]


def admit_one(item: Item[CapturedCall]) -> Emit:
    """Re-key an admitted call by its normalised input; a refused one goes to the dead letters."""
    try:
        call = admission.admit(item.value)
    except Refused as exc:
        REFUSED.labels(producer_of(item.value), exc.code).inc()
        return refusal(app, item, exc)
    c = curate_call(call, curator.holdout_fraction)
    return Emit(by_input, f"{c.task}:{c.normalised_hash}", call)


@each_batch(app, by_input, CapturedCall, size=curator.batch_size, within=curator.batch_within_s)
def track_inputs(items: list[Item[CapturedCall]]) -> None:
    for partition, group in by_partition(items).items():
        with for_partition(partition):
            for item in group:
                c = curate_call(item.value, curator.holdout_fraction)
                calls[call_key(c)] = call_entry(c) | {"partition": partition}


def local_stats() -> dict:
    """Stats of the partitions this worker owns now (the table also holds standby copies)."""
    owned = active_partitions(app, by_input.get_topic_name())
    return table_stats([(k, v) for k, v in list(calls.items()) if v.get("partition") in owned])


@app.timer(curator.stats_interval_s)
async def publish_stats() -> None:
    for task, s in local_stats().items():
        for kind, n in s.items():
            CALLS.labels(task, kind).set(n)


@app.page("/curator/stats/")
async def stats_view(web, request):
    return web.json(local_stats())


@app.page("/curator/review-queue/")
async def review_queue_view(web, request):
    from services.curator.snapshot import review_queue

    task = request.query.get("task")
    if not task:
        return web.json({"error": "query parameter task is required"}, status=400)
    items = await review_queue(settings, task, holdout_fraction=curator.holdout_fraction,
                               limit=int(request.query.get("limit", curator.review_limit)),
                               low_confidence=curator.review_low_confidence)
    return web.json([i.as_dict() for i in items])
