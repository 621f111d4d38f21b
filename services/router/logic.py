"""What the router does with one request, as plain functions over the contracts.

`route` serves a task request in its mode (frontier, shadow, small with fallback), captures every
frontier answer, and emits one RouterOutcome. The outside world (frontier, Triton, capture,
metrics) comes in through `Ports`, so unit tests pass fakes for exactly those.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, Protocol

from services.capture.client import CaptureStats
from services.common.catalog import DEADLETTER, ROUTER_OUTCOMES, TopicSpec
from services.common.contracts import CapturedCall, Contract, Mode, RouterOutcome, RoutingDecision, ServedBy
from services.common.frontier import FrontierAnswer, FrontierError, FrontierStream
from services.common.redaction import Redacted, Redactor
from services.common.tasks import ParseFailure, TaskSpec
from services.common.triton import SmallAnswer, TritonUnavailable
from services.router.metrics import NO_TASK, RouterMetrics

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # for the saved-cost estimate before any frontier call of the task was seen
EXPECTED_COMPLETION_TOKENS = 8


class Frontier(Protocol):
    async def chat(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> FrontierAnswer: ...
    async def stream(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> FrontierStream: ...


class SmallModel(Protocol):
    async def classify(self, model: str, version: str | None, texts: list[str]) -> tuple[list[SmallAnswer], float]: ...


class Capture(Protocol):
    def record_call(self, call: CapturedCall | None = None, /, **fields: Any) -> str: ...
    def defer_call(self, call_id: str, build: Callable[[], CapturedCall]) -> bool: ...
    def publish(self, spec: TopicSpec, key: str | bytes | None, value: Contract | Callable[[], Contract], *,
                dedupe: bool = False) -> bool: ...
    def stats(self) -> CaptureStats: ...


@dataclass
class Ports:
    """The router's outside world and its knobs, wired once in the app's bootstrap."""
    frontier: Frontier
    small: SmallModel
    capture: Capture
    metrics: RouterMetrics
    provider: str = "openai-compatible"
    default_model: str = "gpt-4o-mini"
    sample_rate: float = 0.05
    sample_max_in_flight: int = 32
    rng: random.Random = field(default_factory=random.Random)
    redactors: dict[str, Redactor] = field(default_factory=dict)
    background: set[asyncio.Task] = field(default_factory=set)
    mean_frontier_cost: dict[str, float] = field(default_factory=dict)

    def redactor(self, task: TaskSpec) -> Redactor:
        r = self.redactors.get(task.name)
        if r is None:
            r = self.redactors[task.name] = Redactor(task.redaction.patterns)
        return r


@dataclass(frozen=True)
class TaskCall:
    """One decoded task request: its id, task, input and the chat request to send upstream."""
    call_id: str
    task: TaskSpec
    input: str
    payload: dict[str, Any]  # the chat completions body (messages, model, sampling parameters)
    tenant: str = "default"
    headers: dict[str, str] = field(default_factory=dict)  # passed on to the frontier
    trace: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Served:
    call_id: str
    task: str
    mode: Mode
    served_by: ServedBy
    output: str  # the task output (a parsed label, or the raw answer when it does not parse)
    content: str  # the chat answer text
    latency_ms: float
    confidence: Optional[float] = None
    model_version: Optional[str] = None
    model: str = ""
    fallback_reason: Optional[str] = None
    completion: Optional[dict[str, Any]] = None  # the frontier's chat.completion body, when it answered
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Relay:
    """A frontier answer streamed to the caller as it arrives: iterate `events()` to pass each chunk on;
    once the stream has ended, `end` captures it and records its outcome (once) and `served` says what
    was served. A stream that fails mid-way raises FrontierError from `events()`; one the caller
    leaves is recorded as 499 and not captured."""
    stream: FrontierStream
    served_by: ServedBy
    end: Callable[[FrontierAnswer | FrontierError | None], Optional[Served]]
    served: Optional[Served] = None

    ended: bool = False

    async def events(self) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
        try:
            async with self.stream:
                async for event in self.stream:
                    yield event
            self._end(self.stream.answer)
        except FrontierError as exc:
            self._end(exc)
            raise
        finally:
            self._end(None)

    async def aclose(self) -> None:
        """Close the upstream stream and record the outcome if `events()` never got to the end (or to
        its start: a caller gone before the response began)."""
        await self.stream.aclose()
        self._end(None)

    def _end(self, outcome: FrontierAnswer | FrontierError | None) -> None:
        if not self.ended:
            self.ended = True
            self.served = self.end(outcome)


# -- building requests -------------------------------------------------------------------------
def predict_payload(task: TaskSpec, text: str, model: str) -> dict[str, Any]:
    """The chat request /v1/tasks/{task}/predict sends upstream: the task's prompt and the input."""
    content = json.dumps({task.input.field: text}) if task.input.source == "field" else text
    messages = [{"role": "user", "content": content}]
    if task.system_prompt:
        messages.insert(0, {"role": "system", "content": task.prompt()})
    return {"model": model, "messages": messages}


def frontier_payload(call: TaskCall, redactor: Redactor) -> dict[str, Any]:
    """What the frontier sees: the original request, or its redacted text when the task forbids PII upstream."""
    if call.task.redaction.frontier_sees_original:
        return call.payload
    return {**call.payload, "messages": redactor.messages(call.payload.get("messages", []))}


# -- pure decisions ----------------------------------------------------------------------------
def small_fallback_reason(task: TaskSpec, answer: SmallAnswer, threshold: float | None) -> str | None:
    """Why the small answer is not served (None: serve it). An extraction model's LABEL is the JSON
    object of the task's fields and its CONFIDENCE its least confident field, so the threshold
    sends a request to the frontier as soon as any one field is below it."""
    if task.kind == "classification" and answer.label not in task.labels:
        return "label_not_in_task"
    if task.kind == "extraction" and parse_answer(task, answer.label)[0] is None:
        return "fields_not_in_task"
    if threshold is not None and answer.confidence < threshold:
        return "low_confidence"
    return None


def parse_answer(task: TaskSpec, content: str) -> tuple[str | None, bool]:
    try:
        return task.parse_output(content), True
    except ParseFailure:
        return None, False


def captured_call(call: TaskCall, answer: FrontierAnswer, source: str, redactor: Redactor,
                  provider: str) -> CapturedCall:
    """The capture of one frontier answer, redacted; an answer that does not parse is never a label."""
    parsed, ok = parse_answer(call.task, answer.content)
    red_input = redactor(call.input)
    red_raw = redactor(answer.content)
    red_output: Redacted | None = redactor(parsed) if parsed is not None else None
    return CapturedCall(
        call_id=call.call_id, task=call.task.name, tenant=call.tenant, input=red_input.text,
        output_raw=red_raw.text, output=red_output.text if red_output else None, parse_ok=ok,
        provider=provider, model=answer.model or str(call.payload.get("model") or ""),
        latency_ms=round(answer.latency_ms, 3), prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        cost_usd=call.task.prices.cost(answer.prompt_tokens, answer.completion_tokens),
        source=source, redacted=red_input.changed or red_raw.changed or bool(red_output and red_output.changed),
        trace=call.trace)


def estimated_frontier_cost(task: TaskSpec, text: str, observed_mean: float | None) -> float:
    """What the frontier would have cost for this request: the task's observed mean, else a token estimate."""
    if observed_mean is not None:
        return observed_mean
    prompt_tokens = (task.prompt_chars + len(text)) // CHARS_PER_TOKEN + 8
    return task.prices.cost(prompt_tokens, EXPECTED_COMPLETION_TOKENS)


def outcome_of(served: Served, decision: RoutingDecision | None, *, small_ms: float | None,
               frontier_ms: float | None, sampled: bool, status_code: int, redactor: Redactor) -> RouterOutcome:
    return RouterOutcome(
        call_id=served.call_id, task=served.task, mode=served.mode, served_by=served.served_by,
        model_version=served.model_version,
        confidence=served.confidence, threshold=decision.threshold if decision else None,
        output=redactor(served.output).text if served.output else None, fallback_reason=served.fallback_reason,
        latency_ms=round(served.latency_ms, 3), small_latency_ms=small_ms, frontier_latency_ms=frontier_ms,
        sampled=sampled, status_code=status_code)


# -- the request path --------------------------------------------------------------------------
async def route(call: TaskCall, decision: RoutingDecision | None, ports: Ports,
                stream: bool = False) -> Served | Relay:
    """Serve `call` in the mode its decision says; FrontierError when the frontier was needed and failed.
    With `stream`, a frontier answer comes back as a Relay (the small model's answer is never streamed:
    it is whole at once)."""
    start = time.perf_counter()
    mode: Mode = decision.mode if decision else "frontier"
    redactor = ports.redactor(call.task)
    if mode != "small":
        return await serve_frontier(FrontierLeg(call, decision, start, ports, redactor), stream)
    answer, small_ms, reason = await ask_small(call, decision, redactor, ports)
    if reason is None:
        return serve_small(call, decision, answer, small_ms, start, ports, redactor)
    ports.metrics.fallbacks.labels(call.task.name, reason).inc()
    return await serve_frontier(FrontierLeg(call, decision, start, ports, redactor, (reason, answer, small_ms)), stream)


def serve_small(call: TaskCall, decision: RoutingDecision, answer: SmallAnswer, small_ms: float, start: float,
                ports: Ports, redactor: Redactor) -> Served:
    """The small model's answer; a sample of these also goes to the frontier, after the response."""
    task = call.task
    served = Served(call.call_id, task.name, "small", "small", answer.label, answer.label,
                    (time.perf_counter() - start) * 1000, confidence=answer.confidence,
                    model_version=decision.model_version, model=small_model_name(task, decision))
    sampled = ports.rng.random() < ports.sample_rate
    if sampled:
        schedule_sample(call, ports)
    record(served, decision, ports, redactor, small_ms=small_ms, frontier_ms=None, sampled=sampled)
    ports.metrics.child(ports.metrics.cost_saved, task.name).inc(
        estimated_frontier_cost(task, call.input, ports.mean_frontier_cost.get(task.name)))
    return served


@dataclass(frozen=True)
class FrontierLeg:
    """One call's trip to the frontier (source frontier, or fallback with the small model's reason) and
    how its answer is captured, or its failure recorded."""
    call: TaskCall
    decision: RoutingDecision | None
    start: float
    ports: Ports
    redactor: Redactor
    fallback: tuple[str, SmallAnswer | None, float | None] | None = None

    @property
    def served_by(self) -> ServedBy:
        return "fallback" if self.fallback else "frontier"

    def answered(self, answer: FrontierAnswer) -> Served:
        call, task = self.call, self.call.task
        parsed, ok = parse_answer(task, answer.content)
        capture_answer(call, answer, self.served_by, self.ports, self.redactor, parsed_ok=ok)
        served = self._served(parsed if parsed is not None else answer.content, answer.content, model=answer.model,
                              completion=answer.body, prompt_tokens=answer.prompt_tokens,
                              completion_tokens=answer.completion_tokens)
        record(served, self.decision, self.ports, self.redactor, small_ms=self._small_ms,
               frontier_ms=round(answer.latency_ms, 3), sampled=False)
        return served

    def failed(self, status_code: int, code: str) -> None:
        self.ports.metrics.frontier_errors.labels(self.call.task.name, code).inc()
        record(self._served("", ""), self.decision, self.ports, self.redactor, small_ms=self._small_ms,
               frontier_ms=None, sampled=False, status_code=status_code)

    def end(self, outcome: FrontierAnswer | FrontierError | None) -> Served | None:
        """How a streamed answer ended: whole (captured), failed, or left by the caller (None: 499)."""
        if isinstance(outcome, FrontierAnswer):
            return self.answered(outcome)
        if isinstance(outcome, FrontierError):
            self.failed(outcome.status_code, outcome.code)
        else:
            self.failed(499, "caller_left")
        return None

    @property
    def _small_ms(self) -> float | None:
        return self.fallback[2] if self.fallback else None

    def _served(self, output: str, content: str, **answer: Any) -> Served:
        mode = self.decision.mode if self.decision else "frontier"
        small_answer = self.fallback[1] if self.fallback else None
        return Served(self.call.call_id, self.call.task.name, mode, self.served_by, output, content,
                      (time.perf_counter() - self.start) * 1000,
                      confidence=small_answer.confidence if small_answer else None,
                      model_version=self.decision.model_version if self.decision and mode != "frontier" else None,
                      fallback_reason=self.fallback[0] if self.fallback else None, **answer)


async def serve_frontier(leg: FrontierLeg, stream: bool = False) -> Served | Relay:
    """The frontier's answer, captured; with `stream`, a Relay that captures it once it has ended."""
    payload = frontier_payload(leg.call, leg.redactor)
    try:
        if stream:
            return Relay(await leg.ports.frontier.stream(payload, leg.call.headers), leg.served_by, leg.end)
        answer = await leg.ports.frontier.chat(payload, leg.call.headers)
    except FrontierError as exc:
        leg.failed(exc.status_code, exc.code)
        raise
    return leg.answered(answer)


def small_model_name(task: TaskSpec, decision: RoutingDecision) -> str:
    return decision.triton_model or task.name


async def ask_small(call: TaskCall, decision: RoutingDecision, redactor: Redactor,
                    ports: Ports) -> tuple[SmallAnswer | None, float | None, str | None]:
    """(answer, latency ms, fallback reason). The small model sees the redacted input, as it was trained."""
    model = small_model_name(call.task, decision)
    try:
        answers, small_ms = await ports.small.classify(model, decision.model_version, [redactor(call.input).text])
    except TritonUnavailable as exc:
        warn_throttled(f"triton:{model}", "small model %s v%s unavailable (%s); falling back to the frontier", model,
                       decision.model_version or "latest", exc)
        return None, None, "triton_unavailable"
    answer = answers[0]
    return answer, round(small_ms, 3), small_fallback_reason(call.task, answer, decision.threshold)


_last_warned: dict[str, float] = {}
WARN_EVERY_S = 10.0


def warn_throttled(key: str, message: str, *args: Any) -> None:
    """A warning at most every WARN_EVERY_S per key: an outage must not flood the log once per request."""
    now = time.monotonic()
    if now - _last_warned.get(key, float("-inf")) >= WARN_EVERY_S:
        _last_warned[key] = now
        log.warning(message, *args)


def capture_answer(call: TaskCall, answer: FrontierAnswer, source: str, ports: Ports, redactor: Redactor, *,
                   parsed_ok: bool) -> None:
    """Capture a frontier answer; never raises into the request. The CapturedCall is built (parsed,
    redacted, priced) and encoded in the capture's sender thread, not on the request's path."""
    try:
        ports.capture.defer_call(call.call_id, functools.partial(captured_call, call, answer, source, redactor,
                                                                 ports.provider))
    except Exception:  # capture never fails a request; the log says why
        log.exception("capture of %s failed", call.call_id)
        return
    if not parsed_ok:
        ports.metrics.parse_failures.labels(call.task.name).inc()
    mean = ports.mean_frontier_cost.get(call.task.name)
    cost = call.task.prices.cost(answer.prompt_tokens, answer.completion_tokens)
    ports.mean_frontier_cost[call.task.name] = cost if mean is None else 0.95 * mean + 0.05 * cost


def record(served: Served, decision: RoutingDecision | None, ports: Ports, redactor: Redactor, *,
           small_ms: float | None, frontier_ms: float | None, sampled: bool, status_code: int = 200) -> None:
    """The request's RouterOutcome and latency (path = served_by); never raises into the request.
    graduate_router_requests_total is counted for every response by the app's middleware."""
    ports.metrics.child(ports.metrics.latency, served.task, served.served_by).observe(served.latency_ms / 1000)
    try:  # built (and redacted, encoded) in the capture's sender thread, not on the request's path
        # keyed by task: a task's outcomes share a partition, so one controller replica watches it
        ports.capture.publish(ROUTER_OUTCOMES, served.task, functools.partial(
            outcome_of, served, decision, small_ms=small_ms, frontier_ms=frontier_ms, sampled=sampled,
            status_code=status_code, redactor=redactor))
    except Exception:
        log.exception("router outcome of %s failed", served.call_id)


def schedule_sample(call: TaskCall, ports: Ports) -> None:
    """Send a served small-mode request to the frontier too, after the response (continuous evaluation)."""
    if len(ports.background) >= ports.sample_max_in_flight:
        ports.metrics.samples.labels(call.task.name, "skipped_busy").inc()
        return
    task = asyncio.get_running_loop().create_task(sample(call, ports))
    ports.background.add(task)
    task.add_done_callback(ports.background.discard)


async def sample(call: TaskCall, ports: Ports) -> None:
    redactor = ports.redactor(call.task)
    try:
        answer = await ports.frontier.chat(frontier_payload(call, redactor), call.headers)
    except FrontierError as exc:
        ports.metrics.samples.labels(call.task.name, "frontier_error").inc()
        ports.metrics.frontier_errors.labels(call.task.name, exc.code).inc()
        log.info("sampled frontier call for %s failed: %s", call.call_id, exc)
        return
    _, ok = parse_answer(call.task, answer.content)
    capture_answer(call, answer, "sampled", ports, redactor, parsed_ok=ok)
    ports.metrics.samples.labels(call.task.name, "captured").inc()


async def proxy(payload: dict[str, Any], headers: dict[str, str], ports: Ports,
                stream: bool = False) -> FrontierAnswer | Relay:
    """A request with no task: passed to the frontier as it is (streamed when asked), not captured."""
    def end(outcome: FrontierAnswer | FrontierError | None) -> None:
        if isinstance(outcome, FrontierError):
            ports.metrics.frontier_errors.labels(NO_TASK, outcome.code).inc()

    try:
        if stream:
            return Relay(await ports.frontier.stream(payload, headers), "frontier", end)
        return await ports.frontier.chat(payload, headers)
    except FrontierError as exc:
        end(exc)
        raise


def dead_letters(capture: Capture):
    """A callable that publishes a DeadLetter through capture (for the routing follower)."""
    def publish(letter) -> None:
        capture.publish(DEADLETTER, letter.key, letter)
    return publish
