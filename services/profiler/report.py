"""Candidates from a replay of the captured calls and router outcomes (what `graduate candidates` shows)."""
from __future__ import annotations

import asyncio
import logging

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import CapturedCall, RouterOutcome
from services.common.settings import CommonSettings
from services.common.reader import replay_topic
from services.common.tasks import TaskSpec, load_tasks
from services.profiler.logic import Candidate, assess, profile_calls, rank
from services.profiler.settings import ProfilerSettings

log = logging.getLogger(__name__)


def task_specs(settings: CommonSettings) -> dict[str, TaskSpec]:
    """The task specs by name (they decide how each task's narrowness is judged); none when the
    file cannot be read (every task is then judged as a classification)."""
    try:
        return dict(load_tasks(settings.tasks_file).tasks)
    except Exception as exc:  # noqa: BLE001 - the ranking still works, by value
        log.warning("profiler: cannot read the task specs in %s (%s); tasks are judged by output values",
                    settings.tasks_file, exc)
        return {}


async def compute_candidates(settings: CommonSettings, profiler: ProfilerSettings,
                             codec: Codec | None = None) -> list[Candidate]:
    """Read both topics to their current end and rank every task seen."""
    codec = codec or Codec(settings.schema_registry_url)
    calls, outcomes = await asyncio.gather(
        replay_topic(settings.kafka, codec, catalog.CALLS_CAPTURED, settings.topic_namespace, CapturedCall),
        replay_topic(settings.kafka, codec, catalog.ROUTER_OUTCOMES, settings.topic_namespace, RouterOutcome))
    profiles = await asyncio.to_thread(profile_calls, (i.value for i in calls.records), (i.value for i in outcomes.records))
    specs = task_specs(settings)
    return rank([assess(p, profiler.thresholds(), profiler.costs(), window_days=profiler.window_days,
                        min_span_hours=profiler.min_span_hours, spec=specs.get(p.task)) for p in profiles.values()])
