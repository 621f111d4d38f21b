"""The curator worker: admits captured calls and keeps live dataset stats per task.

A batch processor (services/common/batch.py) over the captured calls: each record is admitted
(services/curator/admission.py: refusals go to the dead letters with their reason, counted in
graduate_curator_refused_total by producer) and added to its source partition's bounded `Tally`
(services/curator/logic.py): exact counts per task and split, and the distinct inputs as a hash
sample that merges across partitions, so duplicates and conflicts are found without re-keying every
call by its input through Kafka. The tally is written with the offset it reached to the state
topic, so a replay after a crash or a rebalance never counts a call twice. What was admitted also
updates the dataset topic, one record per input and captured partition (services/curator/shards.py).
GET /curator/stats/ shows this worker's partitions; /curator/review-queue/?task=T.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import Counter, Gauge

from services.common import catalog
from services.common.batch import BatchProcessor, Fold
from services.common.contracts import CapturedCall
from services.common.settings import load_settings
from services.common.streams import Emit, Item, WorkerSettings, make_app, plumbing, refusal
from services.common.tasks import load_tasks
from services.curator.admission import Admission, Refused, producer_of
from services.curator.logic import Tally, tallies_from_json, tallies_json, tally_calls, tally_stats
from services.curator.settings import CuratorSettings
from services.curator.shards import Forgotten, ShardStore, rebuild_shards, write_dataset

settings: WorkerSettings = load_settings(WorkerSettings)
curator: CuratorSettings = load_settings(CuratorSettings)
admission = Admission.of(load_tasks(settings.tasks_file))

app = make_app("curator", settings)

CALLS = Gauge("graduate_curator_calls", "curated calls and inputs on this worker's partitions", ["task", "kind"])
REFUSED = Counter("graduate_curator_refused", "captured records not admitted into the dataset (dead-lettered)",
                  ["producer", "reason"])


def curate(tallies: dict[str, Tally], items: list[Item[CapturedCall]]) -> list[Emit]:
    """Admit a partition's batch and tally what was admitted; the refused go to the dead letters."""
    admitted, offsets, refused = [], [], []
    for item in items:
        try:
            admitted.append(admission.curate(item.value, curator.holdout_fraction))
            offsets.append(item.meta.offset)
        except Refused as exc:
            REFUSED.labels(producer_of(item.value), exc.code).inc()
            refused.append(refusal(app, item, exc))
    tally_calls(tallies, admitted)
    return refused + write_dataset(shards, codec, forgotten.keys, items[0].meta.partition, list(zip(admitted, offsets)))


async def restore_dataset(partitions: set[int]) -> None:
    """Rebuild the owned shards' files from the dataset topic (services/curator/shards.py)."""
    await forgotten.ready.wait()
    shards.keep_only(set(captured.states) | partitions)
    await rebuild_shards(shards, settings.kafka, plumbing(app).codec, dataset_topic, partitions, forgotten.keys)


dataset_topic = catalog.topic_name(catalog.DATASET, settings.topic_namespace)
captured = BatchProcessor(app, catalog.CALLS_CAPTURED, CapturedCall, curate,
                          Fold(dict, tallies_json, tallies_from_json), max_records=curator.batch_size,
                          on_restore=restore_dataset, aligned=(dataset_topic,))
plumbing(app).topic(app, catalog.DATASET)  # created at start with the catalog's partitions
plumbing(app).topic(app, catalog.DATASET_FORGOTTEN)
codec = plumbing(app).codec
shards = ShardStore(Path(app.conf.datadir) / "dataset")


def tombstone_owned(key: str) -> None:
    """A key forgotten while this worker runs: tombstone it on the shards it owns (a record it wrote
    before it learnt of the deletion would otherwise stay until compaction meets a newer one)."""
    if captured.producer is not None:
        for p in list(captured.states):
            asyncio.ensure_future(captured.producer.send(dataset_topic, None, key=key.encode(), partition=p))


forgotten = Forgotten(settings.kafka, plumbing(app).codec, settings.topic_namespace, shards, on_forget=tombstone_owned)
plumbing(app).health.require("forgotten inputs", forgotten.ready.is_set)


@app.task
async def follow_forgotten() -> None:
    await forgotten.run()


def local_stats() -> dict:
    """Stats of the partitions this worker owns now."""
    return tally_stats(captured.partitions().values())


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
