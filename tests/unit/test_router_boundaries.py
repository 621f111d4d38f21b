"""Every bad request gets a 4xx that says what is wrong (in-process router, fakes for the outside
world): nesting, invalid Unicode, non-finite and huge numbers, sampling parameters, n > 1;
/v1/models lists the tasks as the OpenAI API lists models."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.common.frontier import FrontierSettings
from services.common.settings import CommonSettings
from services.common.tasks import TaskRegistry
from services.router.app import create_app
from services.router.keys import create_key
from services.router.settings import RouterSettings
from tests.unit.test_router_logic import PRIVATE, TASK, FakeCapture, FakeFrontier, FakeSmall

CHAT = '{"messages": [{"role": "user", "content": "where is my card?"}]%s}'


@pytest.fixture
def world(tmp_path):
    path = tmp_path / "keys.json"
    keys = {"all": create_key(path, "svc-all"), "intent": create_key(path, "svc-intent", tasks=("intent",))}
    settings = RouterSettings(api_keys_file=path, small_sample_rate=0.0, common=CommonSettings(var_dir=tmp_path),
                              frontier=FrontierSettings(model="default-m"))
    frontier = FakeFrontier()
    app = create_app(settings, tasks=TaskRegistry(tasks={"intent": TASK, "private": PRIVATE}), frontier=frontier,
                     small=FakeSmall(), capture=FakeCapture(), follow_routing=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield {"client": client, "keys": keys, "frontier": frontier}


def post(world, raw: str | bytes, key: str = "all", task: str | None = "intent"):
    headers = {"Authorization": f"Bearer {world['keys'][key]}", "Content-Type": "application/json",
               **({"X-Graduate-Task": task} if task else {})}
    return world["client"].post("/v1/chat/completions", content=raw, headers=headers)


def refused(r, status: int, code: str, *words: str) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    for w in words:
        assert w in error["message"], error["message"]
    return error["message"]


@pytest.mark.parametrize("depth", [65, 1000, 10_000, 100_000])
def test_deep_nesting_is_400_not_500(world, depth):
    r = post(world, CHAT % (', "metadata": {"x": ' + "[" * depth + "]" * depth + "}"))
    refused(r, 400, "invalid_json", "nested deeper than 64")
    assert world["frontier"].calls == []


def test_ordinary_nesting_passes(world):
    assert post(world, CHAT % (', "metadata": {"x": ' + "[" * 40 + "]" * 40 + "}")).status_code == 200


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\ud83d"])
def test_a_lone_surrogate_is_400_and_never_forwarded(world, escape):
    r = post(world, '{"messages": [{"role": "user", "content": "hi %s"}]}' % escape)
    refused(r, 400, "invalid_unicode", "lone surrogate", "messages[0].content")
    assert world["frontier"].calls == []


def test_a_surrogate_pair_is_text(world):
    assert post(world, '{"messages": [{"role": "user", "content": "card \\ud83d\\udcb3"}]}').status_code == 200


@pytest.mark.parametrize("number,words", [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"),
                                          ("1e999999", "range of a double"), ("9" * 20, "64-bit"),
                                          ("1" * 5000, "more than 20 digits")])
def test_non_finite_and_huge_numbers_are_400(world, number, words):
    refused(post(world, CHAT % f', "temperature": {number}'), 400, "invalid_number", words)
    assert world["frontier"].calls == []


@pytest.mark.parametrize("field,value", [("temperature", '"hot"'), ("temperature", "2.5"), ("top_p", "-0.1"),
                                         ("n", "0"), ("n", "1.5"), ("max_tokens", "0"), ("presence_penalty", "3"),
                                         ("stop", '["a","b","c","d","e"]'), ("logit_bias", '{"50256": -101}'),
                                         ("top_logprobs", "21"), ("stream", '"yes"'), ("seed", '"7"')])
def test_sampling_parameters_are_checked_against_the_openai_schema(world, field, value):
    r = post(world, CHAT % f', "{field}": {value}')
    message = refused(r, 422, "invalid_request", field)
    assert r.json()["error"]["param"].startswith(field), message


def test_good_sampling_parameters_are_passed_upstream(world):
    r = post(world, CHAT % ', "temperature": 0.2, "top_p": 1, "max_tokens": 5, "seed": 7, "stop": ["\\n"]')
    assert r.status_code == 200, r.text
    payload, _ = world["frontier"].calls[0]
    assert payload["temperature"] == 0.2 and payload["seed"] == 7 and payload["stop"] == ["\n"]


@pytest.mark.parametrize("task", ["intent", None])
def test_n_above_one_is_refused_and_one_is_served(world, task):
    refused(post(world, CHAT % ', "n": 2', task=task), 422, "invalid_request", "n=2", "one choice")
    r = post(world, CHAT % ', "n": 1', task=task)
    assert r.status_code == 200 and len(r.json()["choices"]) == 1


def test_models_lists_the_tasks_a_key_may_use(world):
    client, keys = world["client"], world["keys"]
    listed = client.get("/v1/models", headers={"Authorization": f"Bearer {keys['all']}"}).json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["intent", "private"]
    assert all(m["object"] == "model" and m["owned_by"] == "graduate" for m in listed["data"])
    only = client.get("/v1/models", headers={"Authorization": f"Bearer {keys['intent']}"}).json()
    assert [m["id"] for m in only["data"]] == ["intent"]
    one = client.get("/v1/models/intent", headers={"Authorization": f"Bearer {keys['intent']}"})
    assert one.status_code == 200 and one.json()["id"] == "intent"
    assert client.get("/v1/models/private", headers={"Authorization": f"Bearer {keys['intent']}"}).status_code == 404
    assert client.get("/v1/models").status_code == 401
