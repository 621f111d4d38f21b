"""Candidates from the profiler's per-partition profiles plus the calls it has not taken in yet
(what `graduate candidates` shows).

The profiler worker checkpoints, per source partition, a bounded `Profile` per task and the offset
it reached (services/common/batch.py state topics). The report reads the last of those records per
partition, then replays only what lies beyond them in the captured calls and router outcomes, and
merges the two: the same figures as a replay of the whole topics (the profiles are mergeable sums),
with work proportional to the profiler's lag. A partition the profiler never checkpointed (no
worker has run) is replayed from its start, as before.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.common import catalog
from services.common.batch import read_state_record, state_topic
from services.common.catalog import TopicSpec
from services.common.codec import Codec
from services.common.contracts import CapturedCall, RouterOutcome
from services.common.reader import TopicReader, replay_topic
from services.common.settings import CommonSettings, KafkaSettings
from services.common.tasks import TaskSpec, load_tasks
from services.profiler.logic import Candidate, Profile, assess, merge_profiles, profile_calls, profiles_from_json, rank
from services.profiler.settings import ProfilerSettings

log = logging.getLogger(__name__)
PROFILER = "profiler"  # the worker's app name: its state topics are named after it


def task_specs(settings: CommonSettings) -> dict[str, TaskSpec]:
    """The task specs by name (they decide how each task's narrowness is judged); none when the
    file cannot be read (every task is then judged as a classification)."""
    try:
        return dict(load_tasks(settings.tasks_file).tasks)
    except Exception as exc:  # noqa: BLE001 - the ranking still works, by value
        log.warning("profiler: cannot read the task specs in %s (%s); tasks are judged by output values",
                    settings.tasks_file, exc)
        return {}


async def checkpoints(kafka: KafkaSettings, namespace: str, source: TopicSpec) -> dict[int, tuple[int, dict]]:
    """The profiler's last checkpoint per partition of `source`: (next offset, profiles JSON); none
    for a partition it never checkpointed, nor when its state topic does not exist."""
    out: dict[int, tuple[int, dict]] = {}
    async with TopicReader(kafka, state_topic(PROFILER, namespace, source), last=1,
                           client_id=f"{kafka.client_id}-candidates") as reader:
        async for records in reader:
            next_offset, state = read_state_record(records[-1].value)
            if next_offset is not None and state is not None:
                out[records[-1].partition] = (next_offset, state)
    return out


@dataclass(frozen=True)
class Profiles:
    """Profiles per task, and how many records the report had to replay beyond the checkpoints."""

    by_task: dict[str, Profile]
    replayed_calls: int
    replayed_outcomes: int


async def read_profiles(settings: CommonSettings, codec: Codec) -> Profiles:
    kafka, ns = settings.kafka, settings.topic_namespace
    saved_calls, saved_outcomes = await asyncio.gather(checkpoints(kafka, ns, catalog.CALLS_CAPTURED),
                                                       checkpoints(kafka, ns, catalog.ROUTER_OUTCOMES))
    calls, outcomes = await asyncio.gather(
        replay_topic(kafka, codec, catalog.CALLS_CAPTURED, ns, CapturedCall,
                     positions={p: o for p, (o, _) in saved_calls.items()}),
        replay_topic(kafka, codec, catalog.ROUTER_OUTCOMES, ns, RouterOutcome,
                     positions={p: o for p, (o, _) in saved_outcomes.items()}))
    tail = await asyncio.to_thread(profile_calls, (i.value for i in calls.records),
                                   (i.value for i in outcomes.records))
    saved = [profiles_from_json(s) for _, s in (*saved_calls.values(), *saved_outcomes.values())]
    return Profiles(merge_profiles([*saved, tail]), len(calls.records), len(outcomes.records))


async def compute_candidates(settings: CommonSettings, profiler: ProfilerSettings,
                             codec: Codec | None = None) -> list[Candidate]:
    """Rank every task seen, from the profiler's checkpoints and the records beyond them."""
    profiles = await read_profiles(settings, codec or Codec(settings.schema_registry_url))
    specs = task_specs(settings)
    return rank([assess(p, profiler.thresholds(), profiler.costs(), window_days=profiler.window_days,
                        min_span_hours=profiler.min_span_hours, spec=specs.get(p.task))
                 for p in profiles.by_task.values()])
