"""The router's HTTP surface in-process, with fakes for the frontier, Triton and capture:
keys, size limit, encodings, validation, headers, metrics names."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from services.common.contracts import CapturedCall, RoutingDecision
from services.common.frontier import FrontierAuthError, FrontierCircuitOpen, FrontierSettings, FrontierUpstreamError
from services.common.settings import CommonSettings
from services.common.tasks import TaskRegistry
from services.router.app import create_app
from services.router.keys import create_key
from services.router.settings import RouterSettings
from tests.unit.test_router_logic import PRIVATE, TASK, FakeCapture, FakeFrontier, FakeSmall

CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "where is my card?"}]}
METRIC_NAMES = ("graduate_router_requests_total", "graduate_router_request_latency_seconds",
                "graduate_router_fallbacks_total", "graduate_router_capture_queue_depth", "graduate_router_spool_bytes",
                "graduate_router_spool_records", "graduate_router_task_mode", "graduate_router_predicted_fallback_rate",
                "graduate_router_cost_saved_usd_total")


@pytest.fixture
def keys(tmp_path):
    path = tmp_path / "keys.json"
    return {"path": path, "all": create_key(path, "svc-all"),
            "intent": create_key(path, "svc-intent", tasks=("intent",)),
            "reviewer": create_key(path, "ui", role="reviewer")}


@pytest.fixture
def world(keys, tmp_path):
    settings = RouterSettings(api_keys_file=keys["path"], max_body_bytes=2048, small_sample_rate=0.0,
                              common=CommonSettings(var_dir=tmp_path), frontier=FrontierSettings(model="default-m"))
    frontier, small, capture = FakeFrontier(), FakeSmall(), FakeCapture()
    app = create_app(settings, tasks=TaskRegistry(tasks={"intent": TASK, "private": PRIVATE}), frontier=frontier,
                     small=small, capture=capture, follow_routing=False)
    with TestClient(app) as client:
        yield {"client": client, "app": app, "frontier": frontier, "small": small, "capture": capture, "keys": keys}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def post_chat(world, body=CHAT, key="all", task="intent", **kw):
    headers = {**auth(world["keys"][key]), **({"X-Graduate-Task": task} if task else {}), **kw.pop("headers", {})}
    return world["client"].post("/v1/chat/completions", json=body, headers=headers, **kw)


def test_frontier_mode_answers_with_call_id_and_served_by_headers(world):
    r = post_chat(world)
    assert r.status_code == 200
    assert r.headers["x-graduate-served-by"] == "frontier"
    call_id = r.headers["x-graduate-call-id"]
    assert r.json()["choices"][0]["message"]["content"] == "card_arrival"
    [captured] = world["capture"].of(CapturedCall)
    assert captured.call_id == call_id and captured.tenant == "svc-all"
    payload, headers = world["frontier"].calls[0]
    assert payload["model"] == "gpt-x" and headers["X-Graduate-Task"] == "intent"


def test_metadata_task_and_graduate_metadata_is_not_passed_upstream(world):
    body = {**CHAT, "metadata": {"task": "intent", "tenant": "t1", "user_tag": "x"}, "temperature": 0}
    r = post_chat(world, body=body, task=None)
    assert r.status_code == 200 and r.headers["x-graduate-served-by"] == "frontier"
    payload, _ = world["frontier"].calls[0]
    assert payload["metadata"] == {"user_tag": "x"} and payload["temperature"] == 0
    assert world["capture"].of(CapturedCall)[0].tenant == "t1"


def test_no_task_is_proxied_and_not_captured(world):
    r = post_chat(world, body={"messages": [{"role": "user", "content": "hello"}]}, task=None)
    assert r.status_code == 200 and r.headers["x-graduate-served-by"] == "frontier"
    assert world["frontier"].calls[0][0]["model"] == "default-m"
    assert world["capture"].published == []


def test_small_mode_answers_as_a_chat_completion_and_predict(world):
    world["app"].state.table.apply("intent", RoutingDecision(task="intent", mode="small", model_version="2",
                                                             threshold=0.5, reason="r", decided_by="t"))
    r = post_chat(world)
    assert r.headers["x-graduate-served-by"] == "small"
    assert r.json()["choices"][0]["message"]["content"] == "card_linking"
    p = world["client"].post("/v1/tasks/intent/predict", json={"input": "where is my card?"},
                             headers=auth(world["keys"]["all"]))
    body = p.json()
    assert set(body) == {"output", "served_by", "confidence", "model_version", "call_id", "latency_ms"}
    assert (body["output"], body["served_by"], body["confidence"], body["model_version"]) == (
        "card_linking", "small", 0.9, "2")
    assert body["call_id"] == p.headers["x-graduate-call-id"]


def test_a_caller_supplied_call_id_is_kept(world):
    r = post_chat(world, headers={"X-Graduate-Call-Id": "retry-abc-123"})
    assert r.headers["x-graduate-call-id"] == "retry-abc-123"
    r = post_chat(world, headers={"X-Graduate-Call-Id": "bad id!"})
    assert r.headers["x-graduate-call-id"] != "bad id!"


def test_streaming_is_served_as_server_sent_events(world):
    r = post_chat(world, body={**CHAT, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("case,expect,code", [
    ("no key", 401, "missing_api_key"),
    ("bad key", 401, "invalid_api_key"),
    ("reviewer", 403, "forbidden_role"),
    ("other task", 403, "forbidden_task"),
    ("unknown task", 404, "unknown_task"),
    ("oversized", 413, "request_too_large"),
    ("oversized chunked", 413, "request_too_large"),
    ("malformed json", 400, "invalid_json"),
    ("not utf-8", 400, "invalid_encoding"),
    ("not an object", 422, "invalid_request"),
    ("no messages", 422, "invalid_request"),
    ("bad role", 422, "invalid_request"),
    ("no user message", 422, "invalid_input"),
    ("empty input", 422, "invalid_input"),
])
def test_bad_requests_are_clear_4xx_and_capture_nothing(world, case, expect, code):
    c, k = world["client"], world["keys"]
    h = {"X-Graduate-Task": "intent", **auth(k["all"]), "Content-Type": "application/json"}
    url = "/v1/chat/completions"
    if case == "no key":
        r = c.post(url, json=CHAT, headers={"X-Graduate-Task": "intent"})
    elif case == "bad key":
        r = c.post(url, json=CHAT, headers={**h, **auth("gr_nope")})
    elif case == "reviewer":
        r = c.post(url, json=CHAT, headers={**h, **auth(k["reviewer"])})
    elif case == "other task":
        r = c.post(url, json=CHAT, headers={**h, **auth(k["intent"]), "X-Graduate-Task": "private"})
    elif case == "unknown task":
        r = c.post(url, json=CHAT, headers={**h, "X-Graduate-Task": "nope"})
    elif case == "oversized":
        r = c.post(url, content=json.dumps({**CHAT, "pad": "x" * 4000}), headers=h)
    elif case == "oversized chunked":
        r = c.post(url, content=iter([b'{"pad": "', b"x" * 3000, b'"}']), headers=h)
    elif case == "malformed json":
        r = c.post(url, content=b'{"messages": [', headers=h)
    elif case == "not utf-8":
        r = c.post(url, content='{"messages": [{"role": "user", "content": "caf\xe9"}]}'.encode("latin-1"), headers=h)
    elif case == "not an object":
        r = c.post(url, content=b"[1, 2]", headers=h)
    elif case == "no messages":
        r = c.post(url, json={"model": "x"}, headers=h)
    elif case == "bad role":
        r = c.post(url, json={"messages": [{"role": "robot", "content": "x"}]}, headers=h)
    elif case == "no user message":
        r = c.post(url, json={"messages": [{"role": "system", "content": "x"}]}, headers=h)
    else:
        r = c.post(url, json={"messages": [{"role": "user", "content": "   "}]}, headers=h)
    assert r.status_code == expect, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert r.headers["x-graduate-call-id"] and r.headers["x-graduate-served-by"] == "none"
    assert world["capture"].published == [] and world["frontier"].calls == []


def test_validation_messages_name_the_field(world):
    h = {"X-Graduate-Task": "intent", **auth(world["keys"]["all"])}
    r = world["client"].post("/v1/chat/completions", json={"model": "x"}, headers=h)
    assert r.json()["error"]["param"] == "messages" and "messages" in r.json()["error"]["message"]
    r = world["client"].post("/v1/tasks/intent/predict", json={"input": ""}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "input"
    r = world["client"].post("/v1/tasks/intent/predict", json={"text": "x"}, headers=h)
    assert r.status_code == 422 and "input" in r.json()["error"]["message"]
    r = world["client"].post("/v1/tasks/nope/predict", json={"input": "x"}, headers=h)
    assert r.status_code == 404


@pytest.mark.parametrize("error,status,kind,retry_after", [
    (FrontierUpstreamError("frontier answered 500: boom", upstream_status=500), 500, "server_error", None),
    (FrontierUpstreamError("frontier answered 429: boom", upstream_status=429, retry_after=2.5), 429,
     "rate_limit_error", "3"),
    (FrontierAuthError("the frontier at http://f/v1 refused the router's own credentials (401): boom",
                       upstream_status=401), 502, "api_error", None),
    (FrontierCircuitOpen("frontier circuit breaker is open: boom", retry_after=4.2), 503, "server_error", "5"),
])
def test_frontier_failure_is_answered_as_the_provider_would_and_served_by_none(world, error, status, kind,
                                                                                 retry_after):
    world["frontier"].error = error
    for body in (CHAT, {**CHAT, "stream": True}):
        r = post_chat(world, body=body)
        assert r.status_code == status
        assert r.json()["error"]["type"] == kind and "boom" in r.json()["error"]["message"]
        assert r.headers.get("retry-after") == retry_after
        assert r.headers["x-graduate-served-by"] == "none"
    assert world["capture"].of(CapturedCall) == []
    text = TestClient(world["app"].state.metrics_app).get("/metrics").text
    assert f'graduate_router_frontier_errors_total{{code="{error.code}",task="intent"}} 2.0' in text


def test_a_streamed_frontier_answer_is_relayed_with_the_trailer_and_captured(world):
    r = post_chat(world, body={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["x-graduate-served-by"] == "frontier"
    events = [json.loads(line[6:]) for line in r.text.split("\n\n") if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "card_arrival"
    assert events[-1]["usage"]["completion_tokens"] == 4
    assert events[-1]["graduate"]["call_id"] == r.headers["x-graduate-call-id"]
    [captured] = world["capture"].of(CapturedCall)
    assert (captured.output, captured.prompt_tokens) == ("card_arrival", 100)
    upstream = world["frontier"].calls[-1][0]
    assert "stream" not in upstream and "stream_options" not in upstream  # the client sets them itself


def test_tasks_health_and_metrics(world):
    world["app"].state.table.apply("intent", RoutingDecision(task="intent", mode="small", model_version="2",
                                                             threshold=0.5, reason="r", decided_by="t",
                                                             predicted_fallback_rate=0.12))
    post_chat(world)
    c = world["client"]
    tasks = c.get("/v1/tasks", headers=auth(world["keys"]["reviewer"])).json()["tasks"]
    assert {t["task"]: (t["mode"], t["model_version"], t["threshold"]) for t in tasks} == {
        "intent": ("small", "2", 0.5), "private": ("frontier", None, None)}
    assert c.get("/v1/tasks").status_code == 401
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").json()["ready"] is True
    assert c.get("/metrics").status_code == 404  # /metrics has its own port (serve_router)
    text = TestClient(world["app"].state.metrics_app).get("/metrics").text
    for name in METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'graduate_router_requests_total{served_by="small",status="200",task="intent"} 1.0' in text
    assert 'graduate_router_task_mode{mode="small",task="intent"} 1.0' in text
    assert 'graduate_router_predicted_fallback_rate{task="intent"} 0.12' in text
    assert "graduate_router_request_latency_seconds_bucket{" in text and 'path="small"' in text


def test_middleware_is_plain_asgi_and_the_response_is_rendered_once(world, monkeypatch):
    from starlette.middleware.base import BaseHTTPMiddleware

    from services.router.routes import JSONBody

    app = world["app"]
    assert app.user_middleware and not any(issubclass(m.cls, BaseHTTPMiddleware) for m in app.user_middleware)
    rendered = []
    real = JSONBody.render
    monkeypatch.setattr(JSONBody, "render", lambda self, content: rendered.append(content) or real(self, content))
    r = world["client"].post("/v1/tasks/intent/predict", json={"input": "where is my card?"},
                             headers=auth(world["keys"]["all"]))
    assert r.status_code == 200 and r.headers["x-graduate-served-by"] == "frontier"
    assert len(rendered) == 1  # one body, encoded once; the middleware only appends headers


def test_the_hot_endpoints_are_served_by_the_fast_path_and_fastapi_still_documents_them(world, monkeypatch):
    from services.router import fast

    seen = []
    for name in ("serve_chat", "serve_predict"):
        real = getattr(fast, name)

        async def spy(*args, _real=real, _name=name):
            seen.append(_name)
            return await _real(*args)
        monkeypatch.setattr(fast, name, spy)
    assert post_chat(world).status_code == 200
    r = world["client"].post("/v1/tasks/intent/predict", json={"input": "where is my card"},
                             headers=auth(world["keys"]["all"]))
    assert r.status_code == 200 and r.json()["served_by"] == "frontier"
    assert seen == ["serve_chat", "serve_predict"]
    assert world["client"].get("/v1/chat/completions", headers=auth(world["keys"]["all"])).status_code == 405
    paths = world["app"].openapi()["paths"]
    assert "post" in paths["/v1/chat/completions"] and "post" in paths["/v1/tasks/{task}/predict"]


def test_the_fast_path_reads_the_task_and_the_key_as_fastapi_does():
    from services.router.deps import bearer_token
    from services.router.fast import predict_task

    assert predict_task("/v1/tasks/intent/predict") == "intent"
    assert predict_task("/v1/tasks//predict") is None and predict_task("/v1/tasks/a/b/predict") is None
    assert predict_task("/v1/tasks/intent/predictx") is None and predict_task("/v1/chat/completions") is None
    assert bearer_token("Bearer  k1 ") == "k1" and bearer_token("bearer k2") == "k2"
    assert bearer_token("Basic k3") == "" and bearer_token(None) == "" and bearer_token("Bearer") == ""
