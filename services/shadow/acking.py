"""faust agents that acknowledge an event only after its results were handed to the producer.

Why not plain `async for event in stream`, `take()` or `take_events()`: each of them acks the
events it yielded in a `finally`, which also runs when the agent is cancelled mid-event (SIGTERM
stops a worker by cancelling its agents) or when the loop body raises. The consumer then commits
what is acked on its way down, so an event whose result was never produced would be committed
and lost. These agents read a `noack` stream (or `noack_take` for batches) and call
`stream.ack(event)` explicitly after the results were sent — a cancelled event stays unacked and
is read again after the restart. Sends are buffered; faust flushes the producer before every
offset commit, so "acked" always means "results written, then committed" (at-least-once).
Everything else (dead letters, metrics) is services.common.streams'.

These agents turn off faust's `stream_wait_empty`: with it, a stop or a rebalance waits for
every unacked event to be acked before the agents are cancelled, so a batch that waits for
Triton would hold the shutdown (and a rebalance) until Triton is back. Without it, faust
commits what is acked and cancels the rest, which is read again by whoever owns the partition
next (at-least-once; the judge dedupes by call_id).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from services.common.streams import (
    PROCESSED, PROCESSING_SECONDS, Emit, Item, Meta, call_handler, meta_of, plumbing, send_dead_letter, send_emits,
)

Decoder = Callable[[Any], Any]
EventHandler = Callable[[Any, Meta], "Awaitable[Any] | Any"]
BatchHandler = Callable[[list[Item]], "Awaitable[Any] | Any"]


def acked_agent(app: faust.App, topic: Any, decode: Decoder, handler: EventHandler, *, name: str) -> Any:
    """One event at a time: decode, `handler(value, meta)` → Emits, send, then ack.

    What cannot be decoded or handled goes to the dead-letter topic (and is acked)."""
    label = plumbing(app).processor
    app.conf.stream_wait_empty = False

    async def agent(stream):
        quiet = stream.noack()
        async for event in quiet.events():
            meta = meta_of(event)
            started = time.perf_counter()
            try:
                emits = await call_handler(handler, decode(event.value), meta)
                await send_emits(app, emits)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await send_dead_letter(app, meta, event.value, exc)
            else:
                PROCESSED.labels(label).inc()
            PROCESSING_SECONDS.labels(label).observe(time.perf_counter() - started)
            await quiet.ack(event)  # deliberately not in a finally: a cancelled event stays unacked

    return app.agent(topic, name=name, concurrency=1)(agent)


def acked_batch_agent(app: faust.App, topic: Any, decode: Decoder, handler: BatchHandler, *,
                      size: int, within: float, name: str) -> Any:
    """Micro-batches from `noack_take(size, within)`: decode each (undecodable → dead letter),
    `handler(items)` → Emits, send, then ack the whole batch.

    The handler should retry what is transient itself; if it raises, every item of the batch is
    dead-lettered with the reason (and acked)."""
    label = plumbing(app).processor
    app.conf.stream_wait_empty = False

    async def agent(stream):
        async for events in stream.noack_take(size, within=within):
            started = time.perf_counter()
            items: list[Item] = []
            raws: list[Any] = []
            for event in events:
                meta = meta_of(event)
                try:
                    items.append(Item(decode(event.value), meta))
                    raws.append(event.value)
                except Exception as exc:
                    await send_dead_letter(app, meta, event.value, exc)
            if items:
                try:
                    emits: list[Emit] = await call_handler(handler, items)
                    await send_emits(app, emits)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    for item, raw in zip(items, raws):
                        await send_dead_letter(app, item.meta, raw, exc)
                else:
                    PROCESSED.labels(label).inc(len(items))
            PROCESSING_SECONDS.labels(label).observe(time.perf_counter() - started)
            for event in events:  # only now: the batch's results are in the producer's hands
                await stream.ack(event)

    return app.agent(topic, name=name, concurrency=1)(agent)
