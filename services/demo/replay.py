"""Backend services calling the router, as a real client would: the official `openai` SDK, the
task named in the X-Graduate-Task header, bounded concurrency (a busy service keeps many calls in
flight while the frontier takes 400–900 ms to answer).

Each call carries its own X-Graduate-Call-Id, so the demo can join what the client saw with what
the topics hold (captures, shadow results, disagreements, reviewed labels).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import httpx
import openai

from services.common.tasks import ParseFailure, TaskSpec
from services.demo.traffic import PlannedCall


@dataclass(frozen=True)
class CallResult:
    call: PlannedCall
    ok: bool
    latency_ms: float  # as the calling service measured it, end to end through the router
    started: float  # wall-clock seconds since the epoch
    served_by: Optional[str] = None  # small | frontier | fallback
    output: Optional[str] = None  # the answer parsed as the task's output (None: unparseable)
    confidence: Optional[float] = None
    model_version: Optional[str] = None
    fallback_reason: Optional[str] = None
    error: Optional[str] = None

    @property
    def correct(self) -> Optional[bool]:
        return None if self.call.gold is None or not self.ok else self.output == self.call.gold


def make_client(router_url: str, api_key: str, concurrency: int) -> openai.AsyncOpenAI:
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    return openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key=api_key, max_retries=2, timeout=60.0,
                              http_client=httpx.AsyncClient(limits=limits, timeout=60.0))


def parse(task: TaskSpec, content: str) -> Optional[str]:
    try:
        return task.parse_output(content)
    except ParseFailure:
        return None


async def send(client: openai.AsyncOpenAI, task: TaskSpec, call: PlannedCall) -> CallResult:
    """One chat completion through the router, with the task's own system prompt."""
    messages = [{"role": "user", "content": call.text}]
    if task.system_prompt:
        messages.insert(0, {"role": "system", "content": task.prompt()})
    started, t0 = time.time(), time.perf_counter()
    try:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, temperature=0,
            extra_headers={"X-Graduate-Task": task.name, "X-Graduate-Call-Id": call.call_id})
    except openai.APIError as exc:
        return CallResult(call, False, (time.perf_counter() - t0) * 1000, started,
                          error=f"{type(exc).__name__}: {str(exc)[:200]}")
    latency_ms = (time.perf_counter() - t0) * 1000
    facts = (completion.model_extra or {}).get("graduate") or {}
    content = (completion.choices[0].message.content or "") if completion.choices else ""
    return CallResult(call, True, latency_ms, started, served_by=facts.get("served_by"), output=parse(task, content),
                      confidence=facts.get("confidence"), model_version=facts.get("model_version"),
                      fallback_reason=facts.get("fallback_reason"))


async def replay(client: openai.AsyncOpenAI, tasks: dict[str, TaskSpec], calls: Iterable[PlannedCall], *,
                 concurrency: int, on_result: Callable[[CallResult], None] = lambda r: None,
                 stop: Optional[Callable[[], bool]] = None) -> list[CallResult]:
    """Send `calls` with at most `concurrency` in flight; `stop()` true ends the replay early."""
    queue: asyncio.Queue[PlannedCall] = asyncio.Queue()
    for call in calls:
        queue.put_nowait(call)
    results: list[CallResult] = []

    async def worker() -> None:
        while not (stop and stop()):
            try:
                call = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result = await send(client, tasks[call.task], call)
            results.append(result)
            on_result(result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results
