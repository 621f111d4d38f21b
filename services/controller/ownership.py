"""Which controller replica decides for which task: the one that owns the task's outcome partition.

The router keys `graduate.router.outcomes` by task, so all of a task's outcomes land in one
partition, `task_partition(task, n)` (the Kafka default partitioner: murmur2 of the key, as every
client computes it). The controllers form one consumer group on that topic; a replica owns the
tasks whose partition it is assigned, keeps watch windows only for them and is their only writer
of decisions, retrain requests and notes. More tasks spread over more partitions and replicas.
"""
from __future__ import annotations

from aiokafka.partitioner import murmur2


def task_partition(task: str, partitions: int) -> int:
    """The partition a record keyed by `task` goes to among `partitions` (Kafka's default partitioner)."""
    return (murmur2(task.encode()) & 0x7FFFFFFF) % partitions
