"""Run a micro-batch of captured calls through their small models, retrying while Triton is away.

A batch is planned into Triton requests (grouped by model, at most `max_request` texts each, at
most `max_in_flight` at once). A request that fails because Triton is unavailable (down,
timed out, model not loaded) is retried with backoff until it succeeds — the batch is not
acknowledged meanwhile, so nothing is skipped; answers already received are kept. The routing
state is read again on every attempt: a call whose task left shadow mode meanwhile is dropped,
one whose model changed runs on the new one. A request Triton rejects as invalid would fail
forever, so its calls are returned as failures (the worker dead-letters them).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import Counter, Histogram

from services.common.contracts import CapturedCall, ShadowResult
from services.common.triton import SmallAnswer, TritonUnavailable
from services.shadow.logic import RoutingState, ShadowPolicy, ShadowTarget, backoff_delays, plan_requests, \
    select_target, shadow_result

log = logging.getLogger(__name__)

RETRIES = Counter("graduate_shadow_triton_retries", "Triton requests retried because Triton was unavailable")
SHADOWED = Counter("graduate_shadow_results", "shadow results produced", ["task", "model_version"])
NOT_SHADOWED = Counter("graduate_shadow_not_shadowed", "captured calls not shadowed (mode, source, no model)")
REQUEST_SECONDS = Histogram("graduate_shadow_triton_request_seconds", "one Triton request (a micro-batch part)",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class Classifier(Protocol):
    async def classify(self, model: str, version: str | None, texts: list[str],
                       fields: Sequence[str] | None = None) -> tuple[list[SmallAnswer], float]: ...


def is_transient(exc: TritonUnavailable) -> bool:
    """Worth retrying: anything but Triton saying the request itself is invalid."""
    return "INVALID_ARGUMENT" not in str(exc)


class ShadowRunner:
    def __init__(self, client: Classifier, routing: RoutingState, policy: ShadowPolicy, *, max_request: int = 32,
                 max_in_flight: int = 4, backoff_initial_s: float = 0.5, backoff_max_s: float = 15.0) -> None:
        self.client = client
        self.routing = routing
        self.policy = policy
        self.max_request = max_request
        self.in_flight = asyncio.Semaphore(max_in_flight)
        self.backoff = (backoff_initial_s, backoff_max_s)

    async def _request(self, target: ShadowTarget, texts: list[str]) -> tuple[list[SmallAnswer], float]:
        async with self.in_flight:
            if target.fields:  # an extraction model: its per-field confidences too
                answers, ms = await self.client.classify(target.triton_model, target.triton_version, texts,
                                                         fields=target.fields)
            else:
                answers, ms = await self.client.classify(target.triton_model, target.triton_version, texts)
        REQUEST_SECONDS.observe(ms / 1000)
        if len(answers) != len(texts):
            raise ValueError(f"{target.triton_model} answered {len(answers)} of {len(texts)} texts")
        return answers, ms

    async def shadow(self, calls: Sequence[CapturedCall]) -> tuple[list[ShadowResult], list[tuple[int, Exception]]]:
        """The results for the calls that are shadowed, and (position, error) of calls that failed for good."""
        done: dict[int, tuple[ShadowTarget, SmallAnswer, float]] = {}
        failed: dict[int, Exception] = {}
        delays = backoff_delays(self.backoff[0], 2.0, self.backoff[1])
        while True:
            targets = [select_target(c, self.routing, self.policy) for c in calls]
            pending = [None if t is None or i in failed or (i in done and done[i][0] == t) else t
                       for i, t in enumerate(targets)]
            plan = plan_requests(pending, self.max_request)
            outcomes = await asyncio.gather(
                *(self._request(target, [calls[i].input for i in positions]) for target, positions in plan),
                return_exceptions=True)
            unavailable: list[TritonUnavailable] = []
            for (target, positions), outcome in zip(plan, outcomes):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                if isinstance(outcome, TritonUnavailable) and is_transient(outcome):
                    unavailable.append(outcome)
                elif isinstance(outcome, Exception):
                    failed.update((i, outcome) for i in positions)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    answers, ms = outcome
                    done.update((i, (target, answer, ms)) for i, answer in zip(positions, answers))
            if not unavailable:
                break
            delay = next(delays)
            RETRIES.inc(len(unavailable))
            log.warning("shadow: Triton unavailable (%s); %d calls wait, retrying in %.1f s",
                        unavailable[0], sum(len(p) for (_, p), o in zip(plan, outcomes) if o in unavailable), delay)
            await asyncio.sleep(delay)
        results = []
        for i, target in enumerate(targets):
            if target is not None and i in done and done[i][0] == target:
                _, answer, ms = done[i]
                results.append(shadow_result(calls[i], target, answer, ms))
                SHADOWED.labels(target.task, target.model_version).inc()
            elif target is None:
                NOT_SHADOWED.inc()
        return results, sorted(failed.items())
