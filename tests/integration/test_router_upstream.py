"""The router in front of a real OpenAI-compatible server that graduate does not write: the LiteLLM
proxy (PyPI `litellm[proxy]`, in .venv-upstream from `make upstream`) with mocked answers, a 429, a
500, and a streamed answer that waits for the test (tests/upstream/). Asserts with the openai SDK,
on events and order, not on clocks."""
from __future__ import annotations

import os
import subprocess
import uuid

import httpx
import openai
import pytest

from services.common.frontier import FrontierSettings
from services.common.settings import REPO_ROOT
from tests.integration.test_router import (
    TASK,
    RouterServer,
    api_key,  # noqa: F401 - a fixture, shared
    captured,
    free_port,
    outcomes,
    router_settings,
    routers,  # noqa: F401 - a fixture, shared
    sdk,
    wait_http,
)

pytestmark = pytest.mark.integration

UPSTREAM = REPO_ROOT / "tests" / "upstream"
LITELLM = REPO_ROOT / ".venv-upstream" / "bin" / "litellm"
MASTER_KEY = "sk-graduate-upstream-test"  # tests/upstream/litellm_config.yaml
INPUT = "My new card did not arrive yet, what should I do?"


@pytest.fixture(scope="module")
def litellm(tmp_path_factory):
    """The LiteLLM proxy on a free port; yields (base URL, the folder its gates open in)."""
    if not LITELLM.exists():
        pytest.fail(f"{LITELLM} is missing: run `make upstream` (make test does)")
    port, gates = free_port(), tmp_path_factory.mktemp("gates")
    log = tmp_path_factory.mktemp("litellm") / "litellm.log"
    env = {**os.environ, "GRADUATE_TEST_GATE_DIR": str(gates), "LITELLM_TELEMETRY": "False",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_PROXY": "127.0.0.1,localhost"}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(LITELLM), "--config", "litellm_config.yaml", "--host", "127.0.0.1", "--port",
                                 str(port), "--num_workers", "1"], cwd=UPSTREAM, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}/v1", gates
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def start_router(topics, tmp_path, kafka_settings, namespace, litellm, triton_urls, api_key, routers):
    """Start a router on this test's topics with LiteLLM as its frontier (its key can be overridden)."""

    def start(key: str = MASTER_KEY, **frontier) -> RouterServer:
        settings = FrontierSettings(**{"base_url": litellm[0], "api_key": key, "timeout_s": 30.0, "max_retries": 1,
                                       "backoff_base_s": 0.05, "breaker_failures": 50, **frontier})
        return routers(router_settings(tmp_path, kafka_settings, namespace, litellm[0], triton_urls["grpc"],
                                       frontier=settings))

    return start


@pytest.fixture
async def clients():
    """openai SDK clients on a router (no retries of their own), closed after the test."""
    made: list[openai.AsyncOpenAI] = []

    def make(router: RouterServer, key: str) -> openai.AsyncOpenAI:
        made.append(sdk(router, key))
        return made[-1]

    yield make
    for client in made:
        await client.close()


def task_header() -> dict:
    return {"X-Graduate-Task": TASK}


async def test_plain_and_streamed_answers_pass_through_and_are_captured_once_with_the_upstreams_tokens(
        start_router, clients, api_key, litellm, kafka_settings, codec, namespace):
    router = start_router()
    client = clients(router, api_key)
    plain = await client.chat.completions.with_raw_response.create(
        model="mock-intent", messages=[{"role": "user", "content": INPUT}], extra_headers=task_header())
    answer = plain.parse()
    assert answer.choices[0].message.content == "card_arrival"
    assert plain.headers["x-graduate-served-by"] == "frontier"
    gate = litellm[1] / f"gate-{uuid.uuid4().hex}"
    stream = await client.chat.completions.create(
        model="gated", messages=[{"role": "user", "content": f"{INPUT} {gate.name}"}], stream=True,
        stream_options={"include_usage": True}, extra_headers=task_header())
    first = await stream.__anext__()
    # the upstream cannot finish before the gate opens (it fails the stream after 30 s instead), so a
    # first chunk here was passed through, not buffered until the end
    assert first.choices[0].delta.content == "card_" and not gate.exists()
    gate.touch()
    rest = [chunk async for chunk in stream]
    assert first.choices[0].delta.content + "".join(
        c.choices[0].delta.content or "" for c in rest if c.choices) == "card_arrival"
    last = rest[-1]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (17, 2)  # tests/upstream/gated_handler.py
    trailer = last.model_extra["graduate"]
    assert trailer["served_by"] == "frontier" and trailer["call_id"]
    assert all("graduate" not in (c.model_extra or {}) for c in [first, *rest[:-1]])
    calls = await captured(kafka_settings, codec, namespace, min_count=2)
    by_id = {c.call_id: c for c in calls}
    assert len(calls) == 2 and set(by_id) == {answer.graduate["call_id"], trailer["call_id"]}  # once each
    plain_call, streamed_call = by_id[answer.graduate["call_id"]], by_id[trailer["call_id"]]
    assert (plain_call.output, plain_call.prompt_tokens, plain_call.completion_tokens) == (
        "card_arrival", answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert (streamed_call.output, streamed_call.prompt_tokens, streamed_call.completion_tokens) == (
        "card_arrival", 17, 2)


async def test_upstream_errors_reach_the_sdk_as_the_provider_meant_them(start_router, clients, api_key, kafka_settings,
                                                                        codec, namespace):
    router = start_router()
    client = clients(router, api_key)
    failed = []
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="mock-rate-limited", stream=stream, extra_headers=task_header(),
                                                 messages=[{"role": "user", "content": INPUT}])
        r = limited.value.response
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.headers["x-graduate-served-by"] == "none" and limited.value.type == "rate_limit_error"
        with pytest.raises(openai.InternalServerError) as broken:
            await client.chat.completions.create(model="mock-broken", messages=[{"role": "user", "content": INPUT}],
                                                 stream=stream, extra_headers=task_header())
        assert broken.value.status_code == 500 and "mock internal server error" in broken.value.message
        assert broken.value.response.headers["x-graduate-served-by"] == "none"
        failed += [e.value.response.headers["x-graduate-call-id"] for e in (limited, broken)]
    with pytest.raises(openai.InternalServerError) as overloaded:  # LiteLLM's failing stream: 529 before any chunk
        await client.chat.completions.create(model="mock-stream-broken", stream=True, extra_headers=task_header(),
                                             messages=[{"role": "user", "content": INPUT}])
    assert overloaded.value.status_code == 529 and overloaded.value.type == "server_error"
    failed.append(overloaded.value.response.headers["x-graduate-call-id"])
    marker = (await client.chat.completions.create(model="mock-intent", messages=[{"role": "user", "content": INPUT}],
                                                   extra_headers=task_header())).graduate["call_id"]
    assert [c.call_id for c in await captured(kafka_settings, codec, namespace, min_count=1)] == [marker]
    outs = {o.call_id: o.status_code for o in await outcomes(kafka_settings, codec, namespace, min_count=6)}
    assert [outs[c] for c in failed] == [429, 500, 429, 500, 529]


async def test_the_routers_own_wrong_key_is_a_502_naming_the_frontier_then_the_breaker_opens(
        start_router, clients, api_key, litellm):
    router = start_router(key="sk-not-the-proxys-key", breaker_failures=2, breaker_cooldown_s=30)
    client = clients(router, api_key)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(model="mock-intent", messages=[{"role": "user", "content": INPUT}],
                                                 extra_headers=task_header())
        assert refused.value.status_code == 502 and refused.value.code == "frontier_auth_error"
        assert litellm[0] in refused.value.message and "GRADUATE_FRONTIER_API_KEY" in refused.value.message
    with pytest.raises(openai.InternalServerError) as open_circuit:
        await client.chat.completions.create(model="mock-intent", messages=[{"role": "user", "content": INPUT}],
                                             extra_headers=task_header())
    r = open_circuit.value.response
    assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= 30
    assert r.headers["x-graduate-served-by"] == "none"
    metrics = httpx.get(router.metrics_url, timeout=10).text
    assert f'graduate_router_frontier_errors_total{{code="frontier_auth_error",task="{TASK}"}} 2.0' in metrics


async def test_an_upstream_slower_than_the_timeout_is_a_504_timeout_error(start_router, clients, api_key):
    router = start_router(timeout_s=0.3)  # mock-slow answers after 1 s (tests/upstream/litellm_config.yaml)
    client = clients(router, api_key)
    with pytest.raises(openai.InternalServerError) as slow:
        await client.chat.completions.create(model="mock-slow", messages=[{"role": "user", "content": INPUT}],
                                             extra_headers=task_header())
    assert slow.value.status_code == 504 and slow.value.code == "frontier_timeout"
    assert slow.value.type == "timeout_error" and slow.value.response.headers["x-graduate-served-by"] == "none"
