"""The frontier client over a scripted transport: retries, Retry-After, budget, breaker, error mapping."""
from __future__ import annotations

import json
import random

import httpx
import pytest

from services.common.frontier import (
    CircuitBreaker,
    FrontierBadResponse,
    FrontierCircuitOpen,
    FrontierClient,
    FrontierSettings,
    FrontierTimeout,
    FrontierUnreachable,
    FrontierUpstreamError,
    backoff_s,
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


async def test_5xx_and_connect_errors_are_retried_with_jittered_backoff():
    script = Script(httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(500), ok())
    sleeps: list = []
    c = client(script, sleeps)
    answer = await c.chat({"messages": []})
    await c.aclose()
    assert answer.attempts == 4
    assert len(sleeps) == 3
    assert all(0 <= s <= min(1.0, 0.1 * 2 ** i) for i, s in enumerate(sleeps))


async def test_retries_exhausted_is_502_with_the_upstream_status():
    script, sleeps = Script(httpx.Response(500, text="boom")), []
    c = client(script, sleeps)
    with pytest.raises(FrontierUpstreamError) as err:
        await c.chat({"messages": []})
    await c.aclose()
    assert err.value.status_code == 502 and err.value.upstream_status == 500
    assert err.value.attempts == 4 and "boom" in str(err.value)


async def test_retry_after_beyond_the_budget_fails_at_once():
    script, sleeps = Script(httpx.Response(429, headers={"Retry-After": "60"})), []
    c = client(script, sleeps)
    with pytest.raises(FrontierUpstreamError):
        await c.chat({"messages": []})
    await c.aclose()
    assert sleeps == [] and len(script.requests) == 1


async def test_unreachable_is_502():
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
    assert err.value.status_code == 504 and len(script.requests) == 1


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
