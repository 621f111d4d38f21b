"""`graduate dataset forget`: remove one input from the dataset for good (a user's data).

Two writes, in this order: a `DatasetForgotten` record to the compacted forgotten topic (the
deletion, kept: the curator follows it and never takes the input in again, also when it replays
captured calls after a crash), then a tombstone under the input's key in every partition of the
dataset topic (compaction then removes its records). Snapshots leave forgotten inputs out too.
The captured calls themselves stay in the captured topic until its retention (90 days) removes
them: a delete-policy topic cannot drop single records, so retention is the backstop.
"""
from __future__ import annotations

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import DatasetForgotten
from services.common.kafka import ensure_topics, make_producer
from services.common.normalize import hash_of_input  # noqa: F401 - the CLI and tests import it from here
from services.common.settings import CommonSettings
from services.curator.dataset import record_key


async def forget_input(settings: CommonSettings, codec: Codec, task: str, digest: str, *, requested_by: str,
                       reason: str | None = None) -> int:
    """Record the deletion, then tombstone the input in every dataset partition; returns how many."""
    kafka, ns = settings.kafka, settings.topic_namespace
    await ensure_topics(kafka, ns, (catalog.DATASET, catalog.DATASET_FORGOTTEN))
    key = record_key(task, digest).encode()
    producer = make_producer(kafka, client_id=f"{kafka.client_id}-forget")
    await producer.start()
    try:
        gone = DatasetForgotten(task=task, normalised_hash=digest, requested_by=requested_by, reason=reason)
        await producer.send_and_wait(catalog.topic_name(catalog.DATASET_FORGOTTEN, ns), codec.encode(gone), key=key)
        dataset = catalog.topic_name(catalog.DATASET, ns)
        partitions = sorted(await producer.partitions_for(dataset))
        for p in partitions:
            await producer.send_and_wait(dataset, None, key=key, partition=p)
        return len(partitions)
    finally:
        await producer.stop()
