"""The router as a real HTTP server, against the real Kafka, the real Triton and the real simulator.

Each test gets its own topic namespace; the router runs in-process under uvicorn on a free port
(its own thread and event loop), the simulator as a `graduate frontier-sim` subprocess (5–10 ms).
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from openai import AsyncOpenAI

from services.capture.client import CaptureSettings
from services.common.catalog import CALLS_CAPTURED, ROUTER_OUTCOMES, ROUTING_DECISIONS, topic_name
from services.common.contracts import CapturedCall, RouterOutcome, RoutingDecision
from services.common.frontier import FrontierSettings
from services.common.settings import CommonSettings, KafkaSettings
from services.router.app import create_app
from services.router.keys import create_key
from services.router.settings import RouterSettings
from tests.support import decode_all, produce, read_topic

pytestmark = pytest.mark.integration

TASK = "banking77-intent"
KEYWORDS = {"arrive": "card_arrival", "top up": "top_up_failed", "exchange rate": "exchange_rate"}
DEFAULT_LABEL = "card_linking"  # the keyword model's answer, at confidence 0.30, when no keyword matches
CONFIDENT_TEXT = "My new card did not arrive yet, what should I do?"
UNSURE_TEXT = "How do I change the PIN of my card?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graduate_command() -> list[str]:
    exe = Path(sys.executable).with_name("graduate")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from services.cli import main; main()"]


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    """`graduate frontier-sim` on a free port (5–10 ms latency); yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*graduate_command(), "frontier-sim", "--port", str(port), "--latency-ms", "5-10",
                                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RouterServer:
    """The router app under uvicorn in a thread of its own (its own event loop), on a free port."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        app = create_app(settings)
        config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"router-{settings.port}", daemon=True)
        metrics_port = free_port()  # /metrics has its own port, as `graduate serve router` serves it
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.metrics_server = uvicorn.Server(uvicorn.Config(app.state.metrics_app, host="127.0.0.1", port=metrics_port,
                                                            log_level="warning", access_log=False, lifespan="off"))
        self.metrics_thread = threading.Thread(target=self.metrics_server.run, name=f"metrics-{metrics_port}",
                                               daemon=True)

    def start(self, ready: bool = True) -> "RouterServer":
        self.thread.start()
        self.metrics_thread.start()
        wait_http(f"{self.url}/readyz" if ready else f"{self.url}/healthz", timeout=60)
        wait_http(self.metrics_url, timeout=60)
        return self

    def stop(self) -> None:
        self.server.should_exit = self.metrics_server.should_exit = True
        self.thread.join(60)
        self.metrics_thread.join(60)
        assert not self.thread.is_alive(), "the router did not stop"


def router_settings(tmp_path: Path, kafka: KafkaSettings, namespace: str, frontier_url: str, triton_grpc: str,
                    **overrides) -> RouterSettings:
    capture = overrides.pop("capture", CaptureSettings(reconnect_backoff_s=0.5, unhealthy_after_s=1.0))
    frontier = overrides.pop("frontier", FrontierSettings(base_url=frontier_url, timeout_s=2.0, max_retries=1,
                                                          backoff_base_s=0.05, breaker_failures=50))
    values = dict(port=free_port(), api_keys_file=tmp_path / "keys.json", small_sample_rate=0.0,
                  forward_headers=("x-sim-fault",), routing_retry_s=0.5, capture=capture, frontier=frontier,
                  common=CommonSettings(kafka=kafka, topic_namespace=namespace, var_dir=tmp_path,
                                        triton_grpc_url=triton_grpc))
    values.update(overrides)
    return RouterSettings(**values)


@pytest.fixture
def api_key(tmp_path) -> str:
    return create_key(tmp_path / "keys.json", "billing-service")


@pytest.fixture
def routers():
    """Start routers from their settings (`routers(settings, ready=True)`); stops them all afterwards."""
    servers: list[RouterServer] = []

    def launch(settings: RouterSettings, ready: bool = True) -> RouterServer:
        servers.append(RouterServer(settings))
        return servers[-1].start(ready)

    yield launch
    for server in servers:
        server.stop()


@pytest.fixture
def start_router(topics, tmp_path, kafka_settings, namespace, simulator, triton_urls, api_key, routers):
    """Start a router on this test's topics and the simulator (settings can be overridden)."""

    def start(ready: bool = True, triton_grpc: str | None = None, **overrides) -> RouterServer:
        return routers(router_settings(tmp_path, kafka_settings, namespace, simulator,
                                       triton_grpc or triton_urls["grpc"], **overrides), ready)

    return start


@pytest.fixture(scope="module")
def small_model(triton_urls, model_repository):
    """The keyword model (tests/support_triton.py), loaded into the real Triton once for this module."""
    from tests.support_triton import load_model, unload_and_remove, write_keyword_model

    name = write_keyword_model(model_repository, KEYWORDS, DEFAULT_LABEL)
    try:
        load_model(triton_urls["http"], name)
        yield name
    finally:
        unload_and_remove(triton_urls["http"], model_repository, name)


def sdk(router: RouterServer, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0, timeout=30)


async def decide(kafka: KafkaSettings, codec, namespace: str, mode: str, **fields) -> RoutingDecision:
    decision = RoutingDecision(task=TASK, mode=mode, reason="test", decided_by="test", **fields)
    await produce(kafka, codec, topic_name(ROUTING_DECISIONS, namespace), [(TASK, decision)])
    return decision


async def predict(client: httpx.AsyncClient, text: str, **headers) -> httpx.Response:
    return await client.post(f"/v1/tasks/{TASK}/predict", json={"input": text}, headers=headers)


async def until_served_by(client: httpx.AsyncClient, text: str, served_by: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = (await predict(client, text)).json()
        if body.get("served_by") == served_by or time.monotonic() > deadline:
            assert body.get("served_by") == served_by, body
            return body
        await asyncio.sleep(0.2)


async def captured(kafka: KafkaSettings, codec, namespace: str, min_count: int = 0) -> list[CapturedCall]:
    return decode_all(codec, await read_topic(kafka, topic_name(CALLS_CAPTURED, namespace), min_count=min_count,
                                              timeout=30), CapturedCall)


async def outcomes(kafka: KafkaSettings, codec, namespace: str, min_count: int = 0) -> list[RouterOutcome]:
    return decode_all(codec, await read_topic(kafka, topic_name(ROUTER_OUTCOMES, namespace), min_count=min_count,
                                              timeout=30), RouterOutcome)


def http(router: RouterServer, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=router.url, headers=headers, timeout=30)


# -- the openai SDK against the router ---------------------------------------------------------
async def test_sdk_frontier_mode_returns_the_simulators_answer_and_captures_it_once(
        start_router, api_key, simulator, kafka_settings, codec, namespace):
    router = start_router()
    client = sdk(router, api_key)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": CONFIDENT_TEXT}],
        extra_headers={"X-Graduate-Task": TASK})
    completion = raw.parse()
    call_id = raw.headers["x-graduate-call-id"]
    assert raw.headers["x-graduate-served-by"] == "frontier"
    async with AsyncOpenAI(base_url=simulator, api_key="sim") as sim:
        direct = await sim.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": CONFIDENT_TEXT}],
            extra_headers={"X-Graduate-Task": TASK})
    answer = completion.choices[0].message.content
    assert answer == direct.choices[0].message.content  # the simulator is deterministic per input
    assert completion.model == "graduate-frontier-sim" and completion.usage.prompt_tokens > 0

    [call] = await captured(kafka_settings, codec, namespace, min_count=1)
    assert (call.call_id, call.task, call.source, call.input, call.output_raw) == (
        call_id, TASK, "frontier", CONFIDENT_TEXT, answer)
    assert call.parse_ok and call.output == answer
    assert call.model == "graduate-frontier-sim" and call.prompt_tokens > 0 and call.completion_tokens > 0
    assert call.cost_usd > 0 and call.latency_ms > 0 and call.tenant == "billing-service"
    [outcome] = await outcomes(kafka_settings, codec, namespace, min_count=1)
    assert (outcome.call_id, outcome.mode, outcome.served_by, outcome.status_code) == (
        call_id, "frontier", "frontier", 200)
    await client.close()


async def test_sdk_lists_the_tasks_as_models_and_gets_a_4xx_for_bad_parameters(start_router, api_key):
    import openai

    router = start_router()
    client = sdk(router, api_key)
    try:
        models = [m.id async for m in client.models.list()]
        assert TASK in models and models == sorted(models)
        with pytest.raises(openai.UnprocessableEntityError, match="one choice"):
            await client.chat.completions.create(model="gpt-4o-mini", n=2, extra_headers={"X-Graduate-Task": TASK},
                                                 messages=[{"role": "user", "content": CONFIDENT_TEXT}])
        with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
            await client.chat.completions.create(model="gpt-4o-mini", temperature="hot",  # type: ignore[arg-type]
                                                 messages=[{"role": "user", "content": CONFIDENT_TEXT}])
    finally:
        await client.close()


async def test_sdk_without_a_task_is_proxied_and_not_captured(start_router, api_key, kafka_settings, codec, namespace):
    router = start_router()
    client = sdk(router, api_key)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there, how are you?"}])
    assert raw.parse().choices[0].message.content
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": CONFIDENT_TEXT}], stream=True,
        extra_headers={"X-Graduate-Task": TASK})
    streamed = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert streamed[0] and streamed[-1] is None
    calls = await captured(kafka_settings, codec, namespace, min_count=1)
    assert [c.task for c in calls] == [TASK]  # only the streamed task request
    await client.close()


async def test_small_mode_fallback_and_live_decisions(start_router, api_key, small_model, kafka_settings, codec,
                                                       namespace):
    router = start_router()
    client = sdk(router, api_key)
    async with http(router, api_key) as h:
        assert (await predict(h, CONFIDENT_TEXT)).json()["served_by"] == "frontier"

        # A new decision changes behaviour without a restart.
        await decide(kafka_settings, codec, namespace, "small", model_version="1", threshold=0.5,
                     triton_model=small_model, predicted_fallback_rate=0.25)
        body = await until_served_by(h, CONFIDENT_TEXT, "small")
        assert (body["output"], body["model_version"]) == ("card_arrival", "1")
        assert body["confidence"] == pytest.approx(0.95)

        # The openai SDK gets the small model's label as a normal chat completion.
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": CONFIDENT_TEXT}],
            extra_headers={"X-Graduate-Task": TASK})
        assert raw.headers["x-graduate-served-by"] == "small"
        assert raw.parse().choices[0].message.content == "card_arrival"
        small_call_id = raw.headers["x-graduate-call-id"]

        # Below the threshold: the frontier answers, and the response says why.
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": UNSURE_TEXT}],
            extra_headers={"X-Graduate-Task": TASK})
        completion = raw.parse()
        assert raw.headers["x-graduate-served-by"] == "fallback"
        assert completion.model_extra["graduate"]["fallback_reason"] == "low_confidence"
        assert completion.model_extra["graduate"]["confidence"] == pytest.approx(0.30)
        fallback_call_id = raw.headers["x-graduate-call-id"]

        tasks = (await h.get("/v1/tasks")).json()["tasks"]
        row = next(t for t in tasks if t["task"] == TASK)
        assert (row["mode"], row["model_version"], row["threshold"], row["triton_model"]) == (
            "small", "1", 0.5, small_model)
        metrics = (await h.get(router.metrics_url)).text
        assert f'graduate_router_fallbacks_total{{reason="low_confidence",task="{TASK}"}} 1.0' in metrics
        assert f'graduate_router_task_mode{{mode="small",task="{TASK}"}} 1.0' in metrics

        # And back: shadow is served by the frontier again.
        await decide(kafka_settings, codec, namespace, "shadow", model_version="1", triton_model=small_model)
        await until_served_by(h, CONFIDENT_TEXT, "frontier")

    calls = {c.call_id: c for c in await captured(kafka_settings, codec, namespace, min_count=4)}
    assert small_call_id not in calls  # a small answer is not a frontier answer: nothing captured
    assert calls[fallback_call_id].source == "fallback"
    outs = {o.call_id: o for o in await outcomes(kafka_settings, codec, namespace)}
    assert (outs[fallback_call_id].served_by, outs[fallback_call_id].fallback_reason) == ("fallback", "low_confidence")
    assert outs[small_call_id].served_by == "small" and outs[small_call_id].small_latency_ms > 0
    await client.close()


async def test_sampled_small_traffic_is_captured_as_sampled(start_router, api_key, small_model, kafka_settings,
                                                            codec, namespace):
    router = start_router(small_sample_rate=1.0)
    await decide(kafka_settings, codec, namespace, "small", model_version="1", threshold=0.5, triton_model=small_model)
    async with http(router, api_key) as h:
        body = await until_served_by(h, CONFIDENT_TEXT, "small")
    calls = await captured(kafka_settings, codec, namespace, min_count=1)
    sampled = [c for c in calls if c.call_id == body["call_id"]]
    assert [c.source for c in sampled] == ["sampled"]


# -- Triton away -------------------------------------------------------------------------------
async def test_triton_unreachable_every_request_is_served_by_the_frontier(start_router, api_key, kafka_settings,
                                                                          codec, namespace):
    router = start_router(triton_grpc=f"127.0.0.1:{free_port()}")  # nothing listens there
    await decide(kafka_settings, codec, namespace, "small", model_version="1", threshold=0.5)
    async with http(router, api_key) as h:
        await until_served_by(h, CONFIDENT_TEXT, "fallback")
        bodies = [(await predict(h, f"{CONFIDENT_TEXT} #{i}")) for i in range(5)]
        assert all(b.status_code == 200 and b.json()["served_by"] == "fallback" for b in bodies)
        metrics = (await h.get(router.metrics_url)).text
    assert f'graduate_router_fallbacks_total{{reason="triton_unavailable",task="{TASK}"}}' in metrics
    outs = await outcomes(kafka_settings, codec, namespace, min_count=6)
    assert {o.fallback_reason for o in outs} == {"triton_unavailable"}


async def test_a_model_triton_has_not_loaded_falls_back(start_router, api_key, kafka_settings, codec, namespace):
    router = start_router()
    await decide(kafka_settings, codec, namespace, "small", model_version="1", threshold=0.5,
                 triton_model="graduate-never-loaded")
    async with http(router, api_key) as h:
        body = await until_served_by(h, CONFIDENT_TEXT, "fallback")
    [outcome] = [o for o in await outcomes(kafka_settings, codec, namespace, min_count=1)
                 if o.call_id == body["call_id"]]
    assert outcome.fallback_reason == "triton_unavailable"


# -- the frontier failing ----------------------------------------------------------------------
@pytest.mark.parametrize("fault,status,code", [("500", 500, "frontier_upstream_error"),
                                               ("429", 429, "rate_limit_exceeded"),
                                               ("garbage", 502, "frontier_bad_response"),
                                               ("timeout", 504, "frontier_timeout")])
async def test_frontier_failure_is_answered_as_the_provider_would_and_nothing_is_captured(start_router, api_key, kafka_settings, codec,
                                                                      namespace, fault, status, code):
    router = start_router()
    async with http(router, api_key) as h:
        r = await predict(h, CONFIDENT_TEXT, **{"X-Sim-Fault": fault})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
        assert r.headers["x-graduate-served-by"] == "none"
        assert r.headers.get("retry-after") == ("1" if fault == "429" else None)  # the simulator's Retry-After: 1
        failed_id = r.headers["x-graduate-call-id"]
        marker = (await predict(h, CONFIDENT_TEXT)).json()["call_id"]
    calls = await captured(kafka_settings, codec, namespace, min_count=1)
    assert [c.call_id for c in calls] == [marker]
    outs = {o.call_id: o for o in await outcomes(kafka_settings, codec, namespace, min_count=2)}
    assert outs[failed_id].status_code == status


# -- bad input ---------------------------------------------------------------------------------
async def test_bad_input_is_a_clear_4xx_and_never_captured(start_router, api_key, kafka_settings, codec, namespace,
                                                            tmp_path):
    other_key = create_key(tmp_path / "keys.json", "other", tasks=("draft-reply",))  # before the start: the
    router = start_router(max_body_bytes=4096)  # keys file is checked every GRADUATE_ROUTER_KEYS_CHECK_S
    chat = {"model": "m", "messages": [{"role": "user", "content": CONFIDENT_TEXT}]}
    task = {"X-Graduate-Task": TASK, "Content-Type": "application/json"}
    cases = {
        "no key": (401, dict(json=chat, headers=task), None),
        "invalid key": (401, dict(json=chat, headers=task), "gr_not-a-key"),
        "key for another task": (403, dict(json=chat, headers=task), other_key),
        "oversized": (413, dict(json={**chat, "pad": "x" * 8000}, headers=task), api_key),
        "malformed JSON": (400, dict(content=b'{"messages": [{"role": "user"', headers=task), api_key),
        "unknown task": (404, dict(json=chat, headers={"X-Graduate-Task": "no-such-task"}), api_key),
        "empty input": (422, dict(json={"messages": [{"role": "user", "content": " "}]}, headers=task), api_key),
        "no messages": (422, dict(json={"model": "m"}, headers=task), api_key),
        "non-UTF-8": (400, dict(content='{"messages": [{"role": "user", "content": "d\xe9bit"}]}'.encode("latin-1"),
                                headers=task), api_key),
    }
    for name, (status, request, key) in cases.items():
        async with http(router, key) as h:
            r = await h.post("/v1/chat/completions", **request)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        assert r.json()["error"]["message"], name
        assert r.headers["x-graduate-call-id"], name
    async with http(router, api_key) as h:
        r = await h.post(f"/v1/tasks/{TASK}/predict", json={"input": ""})
        assert r.status_code == 422 and r.json()["error"]["param"] == "input"
        marker = (await predict(h, CONFIDENT_TEXT)).json()["call_id"]
    calls = await captured(kafka_settings, codec, namespace, min_count=1)
    assert [c.call_id for c in calls] == [marker]
    assert [o.call_id for o in await outcomes(kafka_settings, codec, namespace, min_count=1)] == [marker]


# -- redaction ---------------------------------------------------------------------------------
PLANTED = ["jane.doe@example.com", "a.b+bank@mail.co.uk", "+44 7700 900123", "(555) 123-4567",
           "4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"]


async def test_planted_pii_never_reaches_the_captured_topic(start_router, api_key, kafka_settings, codec, namespace):
    router = start_router()
    texts = [f"My card did not arrive, I am {PLANTED[0]}, call {PLANTED[2]} or use card {PLANTED[4]}",
             f"top up failed with {PLANTED[5]}; reach me at {PLANTED[1]} or {PLANTED[3]}",
             f"exchange rate for card {PLANTED[6]}?"]
    client = sdk(router, api_key)
    for text in texts:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}],
                                             extra_headers={"X-Graduate-Task": TASK})
        # draft-reply: the frontier may not see the original, and its answer quotes what it was sent
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}],
                                             extra_headers={"X-Graduate-Task": "draft-reply"})
    await client.close()
    raw = await read_topic(kafka_settings, topic_name(CALLS_CAPTURED, namespace), min_count=6, timeout=30)
    raw += await read_topic(kafka_settings, topic_name(ROUTER_OUTCOMES, namespace), min_count=6, timeout=30)
    assert len(raw) == 12
    blob = b"\n".join(r.value for r in raw)
    for value in PLANTED:
        assert value.encode() not in blob, value
    calls = decode_all(codec, raw[:6], CapturedCall)
    assert all(c.redacted for c in calls)
    assert any("<EMAIL>" in c.input and "<CARD>" in c.input and "<PHONE>" in c.input for c in calls)

