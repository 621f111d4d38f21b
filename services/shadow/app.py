"""The shadow worker (faust): the small model on captured frontier calls, off the hot path.

Reads `calls.captured` in micro-batches, runs the calls of tasks in shadow mode (and the
sampled share of small mode) through Triton and publishes one ShadowResult per call, keyed by
call_id. The routing state comes from the compacted routing and models topics, read whole by
every worker before the first batch is handled. For an extraction model the result also carries
the per-field confidences (Triton's FIELD_CONFIDENCE, named by the registration's fields or else
the task spec's).

Acknowledgement (see services/common/streams.py, `each_batch`): a batch's events are acked only
after its results were handed to the producer, and faust flushes the producer before it commits,
so a committed offset always has its result written. While Triton is unavailable the batch retries
with backoff and stays unacked: a crash or SIGTERM then replays it (the judge dedupes by call_id).
"""
from __future__ import annotations

import logging

from services.common import catalog
from services.common.contracts import CapturedCall
from services.common.settings import load_settings
from services.common.tasks import load_tasks
from services.common.streams import (Emit, Item, WorkerSettings, each_batch, health, make_app, plumbing,
                                     send_dead_letter, source_topic)
from services.common.triton import SmallModelClient
from services.common.routing_state import RoutingFollower
from services.shadow.runner import ShadowRunner
from services.shadow.settings import ShadowSettings

log = logging.getLogger(__name__)

settings: WorkerSettings = load_settings(WorkerSettings)
shadow: ShadowSettings = load_settings(ShadowSettings)

app = make_app("shadow", settings)
codec = plumbing(app).codec
captured = source_topic(app, catalog.CALLS_CAPTURED, settings.topic_namespace)
routing = RoutingFollower(settings.kafka, codec, settings.topic_namespace,
                          on_poison=lambda meta, raw, exc: send_dead_letter(app, meta, raw, exc))
health(app).require("routing replay", routing.ready.is_set)
try:  # extraction tasks' field names, for models whose registration the worker has not seen
    routing.state.task_fields = {name: tuple(f.name for f in spec.fields)
                                 for name, spec in load_tasks(settings.tasks_file).tasks.items()
                                 if spec.kind == "extraction"}
except Exception as exc:  # noqa: BLE001 - registrations still name the fields
    log.warning("shadow: cannot read the task specs in %s (%s); field names come from registrations only",
                settings.tasks_file, exc)
_runner: ShadowRunner | None = None


def runner() -> ShadowRunner:
    """Built on first use: the gRPC client must be created inside the worker's event loop."""
    global _runner
    if _runner is None:
        client = SmallModelClient(settings.triton_grpc_url, timeout_s=shadow.triton_timeout_s)
        _runner = ShadowRunner(client, routing.state, shadow.policy(), max_request=shadow.max_request,
                               max_in_flight=shadow.max_in_flight, backoff_initial_s=shadow.backoff_initial_s,
                               backoff_max_s=shadow.backoff_max_s)
    return _runner


@app.task
async def follow_routing() -> None:
    await routing.run()


@each_batch(app, captured, CapturedCall, size=shadow.batch_size, within=shadow.batch_within_s,
            name="shadow.shadow_calls")
async def shadow_batch(items: list[Item[CapturedCall]]) -> list[Emit]:
    await routing.ready.wait()
    results, failed = await runner().shadow([item.value for item in items])
    for i, exc in failed:
        await send_dead_letter(app, items[i].meta, codec.encode(items[i].value), exc)
    return [Emit(catalog.SHADOW_RESULTS, r.call_id, r) for r in results]


@app.page("/shadow/routing/")
async def routing_view(web, request):  # noqa: ARG001
    return web.json({"ready": routing.ready.is_set(),
                     "tasks": {t: d.model_dump(mode="json") for t, d in routing.state.decisions.items()}})
