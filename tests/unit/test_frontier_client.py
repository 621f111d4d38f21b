"""The frontier client over a scripted transport: retries, Retry-After, budget, breaker, error mapping, streams."""
from __future__ import annotations

import json
import random

import httpx
import pytest

from services.common.frontier import (
    CircuitBreaker,
    FrontierAuthError,
    FrontierBadResponse,
    FrontierCircuitOpen,
    FrontierClient,
    FrontierDisconnected,
    FrontierSettings,
    FrontierTimeout,
    FrontierUnreachable,
    FrontierUpstreamError,
    backoff_s,
    reset_s,
    retry_after_header,
    retry_after_s,
)

COMPLETION = {"id": "c1", "object": "chat.completion", "model": "m-1",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "card_arrival"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}}


class Script:
    """Answers requests from a list of responses or exceptions; records what it was sent."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        return step


def ok() -> httpx.Response:
    return httpx.Response(200, json=COMPLETION)


def client(script: Script, sleeps: list, **overrides) -> FrontierClient:
    values = dict(base_url="http://frontier.test/v1", api_key="sk-test", model="default-model", max_retries=3,
                  backoff_base_s=0.1, backoff_max_s=1.0, retry_budget_s=10, breaker_failures=3, breaker_cooldown_s=5)
    settings = FrontierSettings(**{**values, **overrides})

    async def sleep(s: float) -> None:
        sleeps.append(s)

    return FrontierClient(settings, transport=httpx.MockTransport(script), rng=random.Random(1), sleep=sleep)


async def test_success_returns_content_usage_and_sends_key_and_default_model():
    script, sleeps = Script(ok()), []
    c = client(script, sleeps)
    answer = await c.chat({"messages": [{"role": "user", "content": "hi"}]}, {"X-Graduate-Task": "t"})
    await c.aclose()
    assert (answer.content, answer.model, answer.prompt_tokens, answer.completion_tokens) == (
        "card_arrival", "m-1", 40, 3)
    assert answer.attempts == 1 and answer.latency_ms > 0
    sent = script.requests[0]
    assert sent.url.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.headers["x-graduate-task"] == "t"
    assert json.loads(sent.content) == {"messages": [{"role": "user", "content": "hi"}], "stream": False,
                                        "model": "default-model"}


async def test_429_honours_retry_after_then_succeeds():
    script, sleeps = Script(httpx.Response(429, headers={"Retry-After": "2"}), ok()), []
    c = client(script, sleeps)
    answer = await c.chat({"messages": []})
    await c.aclose()
    assert answer.attempts == 2
    assert sleeps == [2.0]


async def test_connect_errors_are_retried_with_jittered_backoff():
    script = Script(httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.ConnectError("refused"), ok())
    sleeps: list = []
    c = client(script, sleeps)
    answer = await c.chat({"messages": []})
    await c.aclose()
    assert answer.attempts == 4
    assert len(sleeps) == 3
    assert all(0 <= s <= min(1.0, 0.1 * 2 ** i) for i, s in enumerate(sleeps))


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
async def test_5xx_is_not_retried_and_answered_as_that_5xx(status):
    script, sleeps = Script(httpx.Response(status, text="boom")), []
    c = client(script, sleeps)
    with pytest.raises(FrontierUpstreamError) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert (err.value.status_code, err.value.error_type, err.value.upstream_status) == (status, "server_error", status)
    assert err.value.attempts == 1 and len(script.requests) == 1 and "boom" in str(err.value)
    assert c.breaker.consecutive == 1


async def test_503_with_retry_after_is_retried_and_passes_retry_after_when_it_gives_up():
    script, sleeps = Script(httpx.Response(503, headers={"Retry-After": "1"})), []
    c = client(script, sleeps, max_retries=1)
    with pytest.raises(FrontierUpstreamError) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert sleeps == [1.0] and len(script.requests) == 2
    assert (err.value.status_code, err.value.retry_after) == (503, 1.0)


async def test_429_without_retry_after_is_a_429_at_once_with_a_derived_retry_after():
    script = Script(httpx.Response(429, headers={"x-ratelimit-reset-requests": "1m30s",
                                                 "x-ratelimit-reset-tokens": "250ms"}))
    c = client(script, [])
    with pytest.raises(FrontierUpstreamError) as err:
        await c.chat({"messages": []})
    assert (err.value.status_code, err.value.error_type, err.value.code) == (429, "rate_limit_error",
                                                                               "rate_limit_exceeded")
    assert err.value.retry_after == 90.0 and len(script.requests) == 1
    assert c.breaker.consecutive == 0  # the caller's quota, not a failing provider
    script.steps = [httpx.Response(429)]
    with pytest.raises(FrontierUpstreamError) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert err.value.retry_after == 1.0


async def test_retry_after_beyond_the_budget_fails_at_once_and_passes_it_on():
    script, sleeps = Script(httpx.Response(429, headers={"Retry-After": "60"})), []
    c = client(script, sleeps)
    with pytest.raises(FrontierUpstreamError) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert sleeps == [] and len(script.requests) == 1
    assert (err.value.status_code, err.value.retry_after) == (429, 60.0)


async def test_retry_after_ms_is_read_first():
    script, sleeps = Script(httpx.Response(429, headers={"retry-after-ms": "250", "Retry-After": "9"}), ok()), []
    c = client(script, sleeps)
    assert (await c.chat({"messages": []})).attempts == 2
    await c.aclose()
    assert sleeps == [0.25]


async def test_the_upstreams_own_time_counts_against_the_budget():
    now = [0.0]

    def slow_429(request):
        now[0] += 9.5  # the provider (or a gateway retrying on its own) took 9.5 s to say 429
        return httpx.Response(429, headers={"Retry-After": "1"})

    settings = FrontierSettings(base_url="http://frontier.test/v1", max_retries=5, retry_budget_s=10)

    async def sleep(s):
        now[0] += s

    c = FrontierClient(settings, transport=httpx.MockTransport(slow_429), sleep=sleep, clock=lambda: now[0])
    with pytest.raises(FrontierUpstreamError) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert err.value.attempts == 1 and now[0] == 9.5  # 9.5 s spent + the 1 s it asks for would pass 10 s


@pytest.mark.parametrize("drop", [httpx.RemoteProtocolError("Server disconnected without sending a response"),
                                  httpx.ReadError("connection reset")])
async def test_a_post_is_never_retried_after_the_connection_dropped_mid_request(drop):
    script, sleeps = Script(drop, ok()), []
    c = client(script, sleeps)
    with pytest.raises(FrontierDisconnected) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert len(script.requests) == 1 and sleeps == []
    assert err.value.status_code == 502 and "not retried" in str(err.value)


@pytest.mark.parametrize("response", [
    httpx.Response(401, json={"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}),
    httpx.Response(403, json={"error": {"message": "project has no access"}}),
    httpx.Response(400, json={"error": {"message": "API key not valid. Please pass a valid API key."}}),
])
async def test_the_routers_own_bad_key_is_a_502_naming_the_frontier_and_trips_the_breaker(response):
    script = Script(response)
    c = client(script, [], breaker_failures=2)
    for _ in range(2):
        with pytest.raises(FrontierAuthError) as err:
            await c.chat({"messages": []})
        assert err.value.status_code == 502 and err.value.code == "frontier_auth_error"
        assert "http://frontier.test/v1" in str(err.value) and "GRADUATE_FRONTIER_API_KEY" in str(err.value)
    with pytest.raises(FrontierCircuitOpen) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert len(script.requests) == 2 and 0 < err.value.retry_after <= 5


def test_reset_and_retry_after_header_forms():
    assert (reset_s("1s"), reset_s("6m0s"), reset_s("20ms"), reset_s("2.5"), reset_s("soon")) == (
        1.0, 360.0, 0.02, 2.5, None)
    assert (retry_after_header(0.2), retry_after_header(1.0), retry_after_header(1.01)) == ("1", "1", "2")


async def test_unreachable_is_502_after_the_retries():
    script, sleeps = Script(httpx.ConnectError("refused")), []
    c = client(script, sleeps, max_retries=1)
    with pytest.raises(FrontierUnreachable) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert err.value.status_code == 502 and len(script.requests) == 2


async def test_read_timeout_is_504_and_not_retried():
    script, sleeps = Script(httpx.ReadTimeout("slow")), []
    c = client(script, sleeps)
    with pytest.raises(FrontierTimeout) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert err.value.status_code == 504 and err.value.error_type == "timeout_error" and len(script.requests) == 1


@pytest.mark.parametrize("response", [
    httpx.Response(200, content=b'{"id": "x", "choi'),
    httpx.Response(200, json={"id": "x", "choices": []}),
    httpx.Response(200, json={"choices": [{"message": {"content": None}}]}),
])
async def test_garbage_is_502(response):
    c = client(Script(response), [])
    with pytest.raises(FrontierBadResponse) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert err.value.status_code == 502


async def test_caller_errors_pass_through_and_do_not_trip_the_breaker():
    script = Script(httpx.Response(400, json={"error": {"message": "bad temperature"}}))
    c = client(script, [])
    for _ in range(5):
        with pytest.raises(FrontierUpstreamError) as err:
            await c.chat({"messages": []})
        assert err.value.status_code == 400 and "bad temperature" in str(err.value)
    await c.aclose()
    assert c.breaker.state == "closed" and len(script.requests) == 5


async def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown():
    now = [0.0]
    script = Script(httpx.Response(500))
    settings = FrontierSettings(base_url="http://frontier.test/v1", max_retries=0, breaker_failures=3,
                                breaker_cooldown_s=5)

    async def sleep(s):
        pass

    c = FrontierClient(settings, transport=httpx.MockTransport(script), sleep=sleep, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(FrontierUpstreamError):
            await c.chat({"messages": []})
    with pytest.raises(FrontierCircuitOpen) as err:
        await c.chat({"messages": []})
    assert err.value.status_code == 503 and len(script.requests) == 3
    now[0] = 6.0  # half-open: one probe; it fails, so the breaker opens again
    with pytest.raises(FrontierUpstreamError):
        await c.chat({"messages": []})
    with pytest.raises(FrontierCircuitOpen):
        await c.chat({"messages": []})
    now[0] = 12.0
    script.steps = [ok()]
    assert (await c.chat({"messages": []})).content == "card_arrival"
    assert c.breaker.state == "closed"
    await c.aclose()


def test_breaker_lets_one_probe_through_when_half_open():
    now = [0.0]
    b = CircuitBreaker(failures=1, cooldown_s=1, clock=lambda: now[0])
    b.record_failure()
    assert not b.allow()
    now[0] = 1.5
    assert b.allow() and not b.allow()
    b.record_success()
    assert b.allow() and b.state == "closed"


def test_retry_after_forms():
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_backoff_is_capped():
    rng = random.Random(0)
    assert all(0 <= backoff_s(10, 0.5, 2.0, rng) <= 2.0 for _ in range(100))


def test_placeholder_keys_are_refused():
    with pytest.raises(ValueError, match="placeholder"):
        FrontierSettings(api_key="changeme")


# -- streamed answers --------------------------------------------------------------------------
def sse(*chunks, done: bool = True) -> bytes:
    events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + (["data: [DONE]\n\n"] if done else [])
    return "".join(events).encode()


def chunk(content=None, finish=None, usage=None, choices=True) -> dict:
    body = {"id": "s1", "object": "chat.completion.chunk", "created": 1, "model": "m-1"}
    body["choices"] = [{"index": 0, "delta": {} if content is None else {"content": content},
                        "finish_reason": finish}] if choices else []
    if usage:
        body["usage"] = usage
    return body


STREAM = (chunk("card_"), chunk("arrival"), chunk(finish="stop"),
          chunk(choices=False, usage={"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}))


def event_stream(body) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


async def test_stream_passes_each_event_as_sent_and_assembles_the_answer_with_the_upstreams_usage():
    script = Script(event_stream(b": keep-alive\n\n" + sse(*STREAM)))
    c = client(script, [])
    async with await c.stream({"messages": [], "stream_options": {"include_usage": False}}) as s:
        events = [(data, ch) async for data, ch in s]
    await c.aclose()
    assert [json.loads(d) for d, _ in events] == list(STREAM) and [ch for _, ch in events] == list(STREAM)
    answer = s.answer
    assert (answer.content, answer.model, answer.prompt_tokens, answer.completion_tokens) == (
        "card_arrival", "m-1", 40, 3)
    assert answer.first_chunk_ms is not None and answer.first_chunk_ms <= answer.latency_ms
    sent = json.loads(script.requests[0].content)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert c.breaker.state == "closed" and c.breaker.consecutive == 0


async def test_stream_errors_before_the_first_byte_are_raised_by_stream_itself():
    c = client(Script(httpx.Response(429, headers={"Retry-After": "30"})), [])
    with pytest.raises(FrontierUpstreamError) as err:
        await c.stream({"messages": []})
    assert err.value.status_code == 429
    c2 = client(Script(ok()), [])  # a provider that ignores stream=true
    with pytest.raises(FrontierBadResponse, match="text/event-stream"):
        await c2.stream({"messages": []})
    await c.aclose()
    await c2.aclose()


async def test_a_stream_dropped_mid_answer_raises_disconnected_and_counts_against_the_provider():
    async def body():
        yield sse(STREAM[0], done=False)
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    script = Script(event_stream(body()))
    c = client(script, [])
    seen = []
    with pytest.raises(FrontierDisconnected):
        async with await c.stream({"messages": []}) as s:
            async for data, ch in s:
                seen.append(ch)
    await c.aclose()
    assert seen == [STREAM[0]] and s.answer is None and len(script.requests) == 1
    assert c.breaker.consecutive == 1


async def test_a_stream_that_ends_without_finishing_is_not_an_answer():
    c = client(Script(event_stream(sse(STREAM[0], done=False))), [])
    with pytest.raises(FrontierDisconnected, match="ended before"):
        async with await c.stream({"messages": []}) as s:
            async for _ in s:
                pass
    await c.aclose()


async def test_an_error_event_mid_stream_raises():
    c = client(Script(event_stream(sse(STREAM[0], {"error": {"message": "overloaded"}}))), [])
    with pytest.raises(FrontierUpstreamError, match="overloaded"):
        async with await c.stream({"messages": []}) as s:
            async for _ in s:
                pass
    await c.aclose()


async def test_a_stream_the_caller_leaves_neither_succeeds_nor_fails_the_provider():
    c = client(Script(event_stream(sse(*STREAM))), [], breaker_failures=1)
    c.breaker.record_failure()
    c.breaker.opened_at = -100.0  # half-open: this stream is the probe
    async with await c.stream({"messages": []}) as s:
        async for _ in s:
            break
    await c.aclose()
    assert c.breaker.allow()  # the probe was released, not counted
