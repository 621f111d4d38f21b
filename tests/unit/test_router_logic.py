"""The router's request path with fakes for the outside world (frontier, Triton, capture)."""
from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
import pytest

from services.capture.client import CaptureStats
from services.common.catalog import CALLS_CAPTURED
from services.common.contracts import CapturedCall, RouterOutcome, RoutingDecision
from services.common.frontier import CircuitBreaker, FrontierAnswer, FrontierStream, FrontierTimeout
from services.common.tasks import TaskSpec
from services.common.triton import SmallAnswer, TritonUnavailable
from services.router.logic import (
    Ports,
    Relay,
    Served,
    TaskCall,
    estimated_frontier_cost,
    predict_payload,
    route,
    small_fallback_reason,
)
from services.router.metrics import RouterMetrics
from services.router.wire import completion_body, relay_events, sse_events

LABELS = ("card_arrival", "card_linking", "top_up_failed")
TASK = TaskSpec(name="intent", kind="classification", labels=LABELS, system_prompt="Pick one of: {labels}")
PRIVATE = TaskSpec(name="private", kind="classification", labels=LABELS,
                   redaction={"frontier_sees_original": False, "patterns": {"ticket": r"TCK-\d+"}})


def stream_events(content: str, usage: bool = True, drop_after: int | None = None, usage_in_choice: bool = False):
    """A provider's streamed answer: the content in 3-character chunks, finish_reason, usage; or a
    connection dropped after `drop_after` chunks."""
    head = {"id": "s1", "object": "chat.completion.chunk", "created": 1, "model": "frontier-1"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"content": content[i:i + 3]}, "finish_reason": None}]}
              for i in range(0, len(content), 3)]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:  # OpenAI sends usage with no choices; the LiteLLM proxy with one empty choice
        empty = [{"index": 0, "delta": {}}] if usage_in_choice else []
        chunks.append({**head, "choices": empty, "usage": {"prompt_tokens": 100, "completion_tokens": 4,
                                                            "total_tokens": 104}})

    async def body():
        for i, chunk in enumerate(chunks):
            if drop_after is not None and i == drop_after:
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    return body()


class FakeFrontier:
    """chat() answers at once; stream() is the real FrontierStream over a scripted event stream."""

    def __init__(self, content: str = "card_arrival", error: Exception | None = None, delay: float = 0.0,
                 usage: bool = True, drop_after: int | None = None, usage_in_choice: bool = False):
        self.content, self.error, self.delay = content, error, delay
        self.usage, self.drop_after, self.usage_in_choice = usage, drop_after, usage_in_choice
        self.calls: list[tuple[dict, dict]] = []
        self.breaker = CircuitBreaker(5, 1.0)

    async def stream(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> FrontierStream:
        self.calls.append((payload, headers or {}))
        if self.error:
            raise self.error
        response = httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=stream_events(self.content, self.usage, self.drop_after,
                                                       self.usage_in_choice))
        return FrontierStream(response, self.breaker, time.perf_counter(), 1, 30.0)

    async def chat(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> FrontierAnswer:
        self.calls.append((payload, headers or {}))
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        body = {"id": "x", "object": "chat.completion", "model": "frontier-1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                             "finish_reason": "stop"}]}
        return FrontierAnswer(body=body, content=self.content, model="frontier-1", latency_ms=12.0,
                              prompt_tokens=100, completion_tokens=4, attempts=1)


class FakeSmall:
    def __init__(self, label: str = "card_linking", confidence: float = 0.9, error: Exception | None = None):
        self.label, self.confidence, self.error = label, confidence, error
        self.calls: list[tuple[str, str | None, list[str]]] = []

    async def classify(self, model: str, version: str | None, texts: list[str]):
        self.calls.append((model, version, texts))
        if self.error:
            raise self.error
        return [SmallAnswer(self.label, self.confidence)], 1.5


class FakeCapture:
    def __init__(self):
        self.published: list[tuple[str, str, Any]] = []

    def record_call(self, call: CapturedCall | None = None, /, **fields: Any) -> str:
        self.publish(CALLS_CAPTURED, call.call_id, call)
        return call.call_id

    def defer_call(self, call_id: str, build) -> bool:
        return self.publish(CALLS_CAPTURED, call_id, build)

    def publish(self, spec, key, value, *, dedupe: bool = False) -> bool:
        if callable(value):  # as the real client does, in its sender thread
            value = value()
        self.published.append((spec.name, key, value))
        return True

    def stats(self) -> CaptureStats:
        return CaptureStats(state="connected")

    def of(self, model: type) -> list:
        return [v for _, _, v in self.published if isinstance(v, model)]


def ports(frontier=None, small=None, sample_rate: float = 0.0) -> Ports:
    return Ports(frontier=frontier or FakeFrontier(), small=small or FakeSmall(), capture=FakeCapture(),
                 metrics=RouterMetrics(), sample_rate=sample_rate, rng=random.Random(7))


def call(task: TaskSpec = TASK, text: str = "where is my card?", call_id: str = "c-1") -> TaskCall:
    return TaskCall(call_id=call_id, task=task, input=text, payload=predict_payload(task, text, "gpt-x"),
                    tenant="svc", headers={"X-Graduate-Task": task.name}, trace={"caller": "svc"})


def small(threshold: float | None = 0.6, **kw) -> RoutingDecision:
    return RoutingDecision(task="intent", mode="small", model_version="3", threshold=threshold, reason="gate passed",
                           decided_by="controller", triton_model=kw.get("triton_model"))


def metric(p: Ports, name: str, **labels) -> float:
    return p.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_no_decision_is_frontier_and_captured():
    p = ports()
    served = await route(call(), None, p)
    assert (served.served_by, served.output, served.mode) == ("frontier", "card_arrival", "frontier")
    [captured] = p.capture.of(CapturedCall)
    assert (captured.call_id, captured.source, captured.output, captured.parse_ok) == (
        "c-1", "frontier", "card_arrival", True)
    assert (captured.prompt_tokens, captured.completion_tokens, captured.model) == (100, 4, "frontier-1")
    assert captured.cost_usd == pytest.approx(TASK.prices.cost(100, 4))
    [outcome] = p.capture.of(RouterOutcome)
    assert (outcome.served_by, outcome.mode, outcome.frontier_latency_ms, outcome.status_code) == (
        "frontier", "frontier", 12.0, 200)
    assert p.small.calls == []


async def test_shadow_is_served_by_the_frontier():
    p = ports()
    d = small().model_copy(update={"mode": "shadow"})
    served = await route(call(), d, p)
    assert served.served_by == "frontier" and p.small.calls == []
    assert p.capture.of(RouterOutcome)[0].mode == "shadow"


async def test_small_mode_serves_a_confident_answer_without_the_frontier():
    p = ports()
    served = await route(call(), small(triton_model="intent-onnx"), p)
    assert (served.served_by, served.output, served.confidence, served.model_version) == (
        "small", "card_linking", 0.9, "3")
    assert p.small.calls == [("intent-onnx", "3", ["where is my card?"])]
    assert p.frontier.calls == [] and p.capture.of(CapturedCall) == []
    [outcome] = p.capture.of(RouterOutcome)
    assert (outcome.served_by, outcome.small_latency_ms, outcome.threshold) == ("small", 1.5, 0.6)
    assert metric(p, "graduate_router_cost_saved_usd_total", task="intent") > 0


async def test_model_name_defaults_to_the_task():
    p = ports()
    await route(call(), small(), p)
    assert p.small.calls[0][0] == "intent"


@pytest.mark.parametrize("small_model,reason", [
    (FakeSmall(confidence=0.4), "low_confidence"),
    (FakeSmall(label="not_a_label"), "label_not_in_task"),
    (FakeSmall(error=TritonUnavailable("UNAVAILABLE: connection refused")), "triton_unavailable"),
])
async def test_fallback_goes_to_the_frontier_with_the_reason(small_model, reason):
    p = ports(small=small_model)
    served = await route(call(), small(), p)
    assert (served.served_by, served.fallback_reason, served.output) == ("fallback", reason, "card_arrival")
    [captured] = p.capture.of(CapturedCall)
    assert captured.source == "fallback"
    [outcome] = p.capture.of(RouterOutcome)
    assert (outcome.served_by, outcome.fallback_reason) == ("fallback", reason)
    assert metric(p, "graduate_router_fallbacks_total", task="intent", reason=reason) == 1


async def test_frontier_failure_raises_captures_nothing_and_records_the_status():
    p = ports(frontier=FakeFrontier(error=FrontierTimeout("slow")))
    with pytest.raises(FrontierTimeout):
        await route(call(), None, p)
    assert p.capture.of(CapturedCall) == []
    [outcome] = p.capture.of(RouterOutcome)
    assert outcome.status_code == 504 and outcome.output is None


async def test_a_parse_failure_is_captured_flagged_never_as_a_label():
    p = ports(frontier=FakeFrontier(content="I think it's about cards"))
    served = await route(call(), None, p)
    [captured] = p.capture.of(CapturedCall)
    assert (captured.parse_ok, captured.output, captured.output_raw) == (False, None, "I think it's about cards")
    assert served.output == "I think it's about cards"
    assert metric(p, "graduate_router_frontier_parse_failures_total", task="intent") == 1


async def test_sampled_small_traffic_goes_to_the_frontier_off_the_hot_path():
    p = ports(frontier=FakeFrontier(delay=0.2), sample_rate=1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    served = await route(call(), small(), p)
    assert loop.time() - start < 0.1, "the caller waited for the sampled frontier call"
    assert served.served_by == "small" and p.capture.of(CapturedCall) == []
    assert p.capture.of(RouterOutcome)[0].sampled is True
    await asyncio.gather(*p.background)
    [captured] = p.capture.of(CapturedCall)
    assert (captured.source, captured.call_id) == ("sampled", "c-1")


async def test_no_sampling_at_rate_zero():
    p = ports(sample_rate=0.0)
    for i in range(20):
        await route(call(call_id=f"c-{i}"), small(), p)
    assert p.frontier.calls == [] and not p.background


async def test_pii_never_reaches_the_capture_and_the_frontier_sees_what_the_task_allows():
    text = "I'm jane@example.com, card 4111 1111 1111 1111, phone +44 7700 900123, TCK-991"
    open_p = ports()
    await route(call(text=text), None, open_p)
    assert open_p.frontier.calls[0][0]["messages"][-1]["content"] == text  # frontier_sees_original: true
    closed_p = ports()
    await route(call(task=PRIVATE, text=text), None, closed_p)
    sent = closed_p.frontier.calls[0][0]["messages"][-1]["content"]
    assert sent == "I'm <EMAIL>, card <CARD>, phone <PHONE>, <TICKET>"
    for p in (open_p, closed_p):
        [captured] = p.capture.of(CapturedCall)
        assert captured.redacted and "jane@" not in captured.input and "4111" not in captured.input
        assert "7700" not in captured.input


async def test_the_small_model_sees_the_redacted_input():
    p = ports()
    await route(call(text="mail x@y.io about my card"), small(), p)
    assert p.small.calls[0][2] == ["mail <EMAIL> about my card"]


def test_fallback_reason_rules():
    assert small_fallback_reason(TASK, SmallAnswer("card_arrival", 0.6), 0.6) is None  # at the threshold: kept
    assert small_fallback_reason(TASK, SmallAnswer("card_arrival", 0.59), 0.6) == "low_confidence"
    assert small_fallback_reason(TASK, SmallAnswer("card_arrival", 0.1), None) is None


def test_saved_cost_uses_the_observed_mean_first():
    assert estimated_frontier_cost(TASK, "x", 0.002) == 0.002
    assert 0 < estimated_frontier_cost(TASK, "x" * 400, None) < 0.01


def test_predict_payload_uses_the_task_prompt():
    payload = predict_payload(TASK, "hello", "gpt-x")
    assert payload == {"model": "gpt-x", "messages": [
        {"role": "system", "content": "Pick one of: card_arrival, card_linking, top_up_failed"},
        {"role": "user", "content": "hello"}]}
    field_task = TaskSpec(name="f", kind="classification", labels=LABELS, input={"from": "field", "field": "body"})
    assert field_task.extract_input(predict_payload(field_task, "hello", "m")["messages"]) == "hello"


async def test_a_small_answer_is_a_normal_chat_completion_and_streams():
    p = ports()
    served = await route(call(), small(), p)
    body = completion_body(served)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "card_linking", "refusal": None}
    assert body["graduate"]["served_by"] == "small"
    events = sse_events(body, include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n" and b'"content": "card_linking"' in events[0]


async def relayed(relay, include_usage: bool = False) -> list[dict]:
    events = [e async for e in relay_events(relay, "c-1", include_usage)]
    return [json.loads(e[6:]) if e != b"data: [DONE]\n\n" else "[DONE]" for e in events]


@pytest.mark.parametrize("usage_in_choice", [False, True])
async def test_a_streamed_frontier_answer_is_relayed_then_captured_once_with_the_upstreams_usage(usage_in_choice):
    p = ports(frontier=FakeFrontier(usage_in_choice=usage_in_choice))
    relay = await route(call(), None, p, stream=True)
    assert isinstance(relay, Relay) and relay.served_by == "frontier"
    assert p.capture.of(CapturedCall) == []  # nothing captured before the stream has ended
    events = await relayed(relay)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "card_arrival"
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "stop" and "usage" not in last  # the caller did not ask for usage
    assert last["graduate"] == {"call_id": "c-1", "served_by": "frontier", "confidence": None, "model_version": None,
                                "fallback_reason": None}
    assert all("graduate" not in e for e in events[:-2])
    [captured] = p.capture.of(CapturedCall)
    assert (captured.output, captured.prompt_tokens, captured.completion_tokens, captured.source) == (
        "card_arrival", 100, 4, "frontier")
    [outcome] = p.capture.of(RouterOutcome)
    assert outcome.status_code == 200 and outcome.frontier_latency_ms is not None


@pytest.mark.parametrize("usage_in_choice", [False, True])
async def test_a_streamed_fallback_carries_usage_when_asked_and_the_trailer_on_the_usage_chunk(usage_in_choice):
    p = ports(small=FakeSmall(confidence=0.2), frontier=FakeFrontier(usage_in_choice=usage_in_choice))
    relay = await route(call(), small(), p, stream=True)
    events = await relayed(relay, include_usage=True)
    assert events[-2]["usage"]["prompt_tokens"] == 100 and not any(
        c["delta"] for c in events[-2]["choices"])
    assert events[-2]["graduate"]["served_by"] == "fallback" and events[-2]["graduate"]["confidence"] == 0.2
    assert events[-3]["choices"][0]["finish_reason"] == "stop" and "graduate" not in events[-3]
    [captured] = p.capture.of(CapturedCall)
    assert captured.source == "fallback"


async def test_a_stream_dropped_mid_way_ends_with_an_error_event_and_captures_nothing():
    p = ports(frontier=FakeFrontier(drop_after=2))
    relay = await route(call(), None, p, stream=True)
    events = await relayed(relay)
    assert [e["choices"][0]["delta"]["content"] for e in events[:2]] == ["car", "d_a"]
    assert events[-1]["error"]["code"] == "frontier_disconnected" and "[DONE]" not in events
    assert p.capture.of(CapturedCall) == []
    [outcome] = p.capture.of(RouterOutcome)
    assert outcome.status_code == 502
    assert metric(p, "graduate_router_frontier_errors_total", task="intent", code="frontier_disconnected") == 1


async def test_a_stream_the_caller_leaves_is_recorded_as_499_and_not_captured():
    p = ports()
    relay = await route(call(), None, p, stream=True)
    events = relay_events(relay, "c-1", False)
    await events.__anext__()
    await events.aclose()
    assert p.capture.of(CapturedCall) == []
    [outcome] = p.capture.of(RouterOutcome)
    assert outcome.status_code == 499


async def test_the_small_path_is_not_streamed_from_the_frontier():
    p = ports()
    served = await route(call(), small(), p, stream=True)
    assert isinstance(served, Served) and served.served_by == "small" and p.frontier.calls == []


async def test_a_relay_never_started_is_closed_and_recorded_once():
    p = ports()
    relay = await route(call(), None, p, stream=True)
    await relay.aclose()  # the caller left before the response began
    await relay.aclose()
    assert relay.stream._resp.is_closed and p.capture.of(CapturedCall) == []
    assert [o.status_code for o in p.capture.of(RouterOutcome)] == [499]
