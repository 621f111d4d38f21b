"""A worker for the acknowledgement tests: it echoes captured calls, but holds some up forever.

`python -m tests.integration.holdup_app`, configured like any worker (GRADUATE_* settings), plus
GRADUATE_TEST_MODE=event|batch (`each_event` or `each_batch`) and GRADUATE_TEST_HOLD=<prefix>:
a handler given a call whose call_id starts with the prefix logs "holding <call_id>" and awaits
an event nobody sets, so SIGTERM cancels it mid-handler. The effect of a call is its echo on the
app's internal topic `<app id>-echo`, keyed by call_id.
"""
from __future__ import annotations

import asyncio
import logging
import os

from services.common import catalog
from services.common.contracts import CapturedCall
from services.common.settings import load_settings
from services.common.streams import (Emit, Item, Meta, WorkerSettings, each_batch, each_event, internal_topic,
                                     make_app, source_topic)

log = logging.getLogger("graduate.holdup")

MODE = os.environ.get("GRADUATE_TEST_MODE", "event")
HOLD = os.environ.get("GRADUATE_TEST_HOLD", "")

settings: WorkerSettings = load_settings(WorkerSettings)
app = make_app("holdup", settings)
captured = source_topic(app, catalog.CALLS_CAPTURED, settings.topic_namespace)
echo = internal_topic(app, "echo")


async def hold_if_told(call: CapturedCall) -> None:
    if HOLD and call.call_id.startswith(HOLD):
        log.warning("holding %s", call.call_id)
        await asyncio.Event().wait()  # never set


if MODE == "event":
    @each_event(app, captured, CapturedCall)
    async def echo_one(call: CapturedCall, meta: Meta) -> Emit:  # noqa: ARG001
        await hold_if_told(call)
        return Emit(echo, call.call_id, call)
else:
    @each_batch(app, captured, CapturedCall, size=20, within=0.5)
    async def echo_many(items: list[Item[CapturedCall]]) -> list[Emit]:
        for item in items:
            await hold_if_told(item.value)
        return [Emit(echo, i.value.call_id, i.value) for i in items]


if __name__ == "__main__":
    import faust

    from services.common.streams import ensure_app_topics

    asyncio.run(ensure_app_topics(app))
    faust.Worker(app, loglevel=settings.worker_log_level, redirect_stdouts=False).execute_from_commandline()
