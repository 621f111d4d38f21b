"""Closed by default, documented completely: /docs, /redoc and /openapi.json are off or behind the
key, /metrics is not on the API port, and the OpenAPI document has the request bodies, the bearer
scheme and the task header, so schemathesis exercises the chat body over real HTTP (uvicorn, with
fakes for the frontier, Triton and capture) with no 5xx and no conformance failure."""
from __future__ import annotations

import socket
from collections import Counter
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st

from services.common.frontier import FrontierSettings
from services.common.settings import CommonSettings
from services.common.tasks import TaskRegistry
from services.router.app import create_app
from services.router.keys import create_key
from services.router.settings import RouterSettings
from tests.unit.test_router_logic import PRIVATE, TASK, FakeCapture, FakeFrontier, FakeSmall

TASKS = TaskRegistry(tasks={"intent": TASK, "private": PRIVATE})


def make_app(tmp_path, **overrides):
    path = tmp_path / "keys.json"
    key = create_key(path, "svc")
    settings = RouterSettings(api_keys_file=path, small_sample_rate=0.0, common=CommonSettings(var_dir=tmp_path),
                              frontier=FrontierSettings(model="default-m"), **overrides)
    app = create_app(settings, tasks=TASKS, frontier=FakeFrontier(), small=FakeSmall(), capture=FakeCapture(),
                     follow_routing=False)
    return app, {"Authorization": f"Bearer {key}"}


def test_docs_are_behind_the_key_by_default(tmp_path):
    app, auth = make_app(tmp_path)
    with TestClient(app) as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/metrics").status_code == 404
        r = c.get("/openapi.json")
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        assert c.get("/openapi.json", headers=auth).status_code == 200


def test_docs_off_and_open(tmp_path):
    off, auth = make_app(tmp_path / "off", docs="off")
    with TestClient(off) as c:
        assert c.get("/openapi.json", headers=auth).status_code == 404
    opened, _ = make_app(tmp_path / "open", docs="open")
    with TestClient(opened) as c:
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200


def test_the_document_is_complete(tmp_path):
    app, auth = make_app(tmp_path)
    with TestClient(app) as c:
        doc = c.get("/openapi.json", headers=auth).json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    assert "requestBody" in doc["paths"]["/v1/tasks/{task}/predict"]["post"]
    body = doc["components"]["schemas"]["ChatRequest"]["properties"]
    assert body["temperature"]["anyOf"][0]["maximum"] == 2 and body["n"]["anyOf"][0]["maximum"] == 1
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": chat_scheme_description(doc)}
    assert chat["security"] == [{"apiKey": []}]
    assert any(p["in"] == "header" and p["name"] == "x-graduate-task" for p in chat["parameters"])
    assert {"400", "401", "403", "404", "413", "422", "502", "503", "504"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]


def chat_scheme_description(doc: dict) -> str:
    return doc["components"]["securitySchemes"]["apiKey"]["description"]


# -- schemathesis ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    app, auth = make_app(tmp_path)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield url, auth, httpx.get(url + "/openapi.json", headers=auth).json()
    finally:
        server.should_exit = True
        thread.join(30)


def test_schemathesis_finds_no_5xx_and_no_conformance_failure(served):
    import schemathesis
    from schemathesis import GenerationMode
    # Left out, with a reason: a task reads its input from the LAST user message, as non-blank text
    # (or a JSON field of it), which a JSON schema cannot say; such bodies get a 422 naming the
    # problem, which the other checks still hold to the document.
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    url, auth, doc = served
    schema = schemathesis.openapi.from_dict(doc)
    sent, failures = [], []
    for operation in [r.ok() for r in schema.get_all_operations()]:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), task=st.sampled_from(["intent", None]))
            def check(case, task):
                headers = dict(auth)
                if task and operation.path == "/v1/chat/completions":
                    headers["x-graduate-task"] = task
                try:
                    response = case.call_and_validate(base_url=url, headers=headers, timeout=30,
                                                      excluded_checks=[positive_data_acceptance])
                except Exception as exc:  # a failed check: keep going, report them all
                    failures.append(f"{mode.value} {operation.method.upper()} {operation.path}: {exc}"[:600])
                    return
                sent.append(response.status_code)

            try:
                check()
            except Unsatisfiable:  # nothing to break in a route without parameters (negative mode)
                assert mode == GenerationMode.NEGATIVE, operation.path
    print(f"schemathesis: {len(sent)} requests, statuses {sorted(Counter(sent).items())}")
    assert not failures, "\n".join(failures[:10])
    assert sent and not [s for s in sent if s >= 500]
    assert any(s == 200 for s in sent) and any(400 <= s < 500 for s in sent)
