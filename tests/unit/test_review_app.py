"""The review page's HTTP surface in-process (a fake publisher, no follower): sign-in, roles and
task scopes, CSRF, escaping, the form's submit → publish → next item, the JSON API, headers."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from services.common import catalog
from services.common.contracts import RouterOutcome, ShadowStats
from services.common.normalize import hash_of_input
from services.common.settings import CommonSettings
from services.common.tasks import TaskRegistry, TaskSpec
from services.curator.settings import CuratorSettings
from services.review.app import create_app
from services.review.auth import COOKIE
from services.review.settings import ReviewSettings
from services.router.keys import create_key
from tests.unit.test_review_view import (ALL_HOLDOUT, T0, TASK, FakePublisher, capture, decision, disagreement,
                                         seeded_view)

FREEFORM = TaskSpec(name="draft", kind="freeform")
OTHER = TaskSpec(name="other", kind="classification", labels=("a", "b"))
SCRIPT = "<script>alert('x')</script>"


@pytest.fixture
def keys(tmp_path):
    path = tmp_path / "keys.json"
    return {"path": path, "ana": create_key(path, "ana", role="reviewer"),
            "other": create_key(path, "bo", role="reviewer", tasks=("other",)),
            "service": create_key(path, "svc", role="service")}


@pytest.fixture
def world(keys, tmp_path):
    settings = ReviewSettings(api_keys_file=keys["path"], common=CommonSettings(var_dir=tmp_path),
                              curator=CuratorSettings(holdout_fraction=ALL_HOLDOUT))
    view, publisher = seeded_view(), FakePublisher()
    app = create_app(settings, tasks=TaskRegistry(tasks={"intent": TASK, "draft": FREEFORM, "other": OTHER}),
                     view=view, publisher=publisher, follow=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield {"client": client, "view": view, "publisher": publisher, "keys": keys}


def sign_in(world, key="ana"):
    r = world["client"].post("/login", data={"key": world["keys"][key], "next": "/tasks/intent/queue"},
                             follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/tasks/intent/queue"
    return r


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def bearer(world, key="ana") -> dict:
    return {"Authorization": f"Bearer {world['keys'][key]}"}


def test_pages_send_a_stranger_to_the_sign_in_page_and_back(world):
    r = world["client"].get("/tasks/intent/queue?x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Ftasks%2Fintent%2Fqueue%3Fx%3D1"
    page = world["client"].get(r.headers["location"])
    assert page.status_code == 200 and 'value="/tasks/intent/queue?x=1"' in page.text
    r = sign_in(world)
    cookie = r.headers["set-cookie"]
    assert COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert world["keys"]["ana"] not in cookie
    assert world["client"].get("/tasks/intent/queue").status_code == 200


@pytest.mark.parametrize("key,status,text", [("service", 403, "role reviewer"), (None, 401, "unknown API key")])
def test_sign_in_refuses_a_service_key_and_an_unknown_one(world, key, status, text):
    r = world["client"].post("/login", data={"key": world["keys"][key] if key else "gr_nope"}, follow_redirects=False)
    assert r.status_code == status and text in r.text and COOKIE not in r.headers.get("set-cookie", "")


def test_the_queue_page_shows_the_first_item_with_both_answers_and_escapes_inputs(world):
    sign_in(world)
    html = world["client"].get("/tasks/intent/queue").text
    assert 'id="call-id">c5<' in html and "disagreement" in html
    assert 'id="frontier-answer">card_arrival<' in html and "card_delivery_estimate" in html and "0.40" in html
    assert html.count('type="radio" name="label"') == len(TASK.labels)
    assert SCRIPT not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html  # c3 in the list
    item = world["client"].get("/tasks/intent/items/c3").text
    assert SCRIPT not in item and 'id="item-input">&lt;script&gt;' in item


def test_submitting_publishes_moves_on_and_a_second_submit_replaces_the_review(world):
    sign_in(world)
    csrf = csrf_of(world["client"].get("/tasks/intent/queue").text)
    form = {"csrf": csrf, "verdict": "label", "label": "card_arrival", "note": "frontier right"}
    r = world["client"].post("/tasks/intent/items/c5/review", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/tasks/intent/queue?saved=c5"
    [sent] = world["publisher"].sent
    assert (sent.call_id, sent.label, sent.reviewer, sent.note, sent.verdict) == \
           ("c5", "card_arrival", "ana", "frontier right", "label")
    # the review names its input as the curator files it, so it applies whichever call of it was reviewed
    assert sent.normalised_hash == hash_of_input(TASK, world["view"].item("intent", "c5").input)
    page = world["client"].get(r.headers["location"]).text
    assert 'id="call-id">c2<' in page and 'id="saved"' in page
    again = world["client"].post("/tasks/intent/items/c5/review", data={**form, "label": "lost_or_stolen_card"},
                                 follow_redirects=False)
    assert again.status_code == 303 and len(world["publisher"].sent) == 2
    reviewed = world["client"].get("/tasks/intent/reviewed").text
    assert reviewed.count("<code>c5</code>") == 1 and "lost_or_stolen_card" in reviewed


def test_a_form_without_the_csrf_token_or_with_a_bad_label_publishes_nothing(world):
    sign_in(world)
    csrf = csrf_of(world["client"].get("/tasks/intent/queue").text)
    r = world["client"].post("/tasks/intent/items/c5/review", data={"verdict": "label", "label": "card_arrival"})
    assert r.status_code == 403
    r = world["client"].post("/tasks/intent/items/c5/review",
                             data={"csrf": csrf, "verdict": "label", "label": SCRIPT, "note": SCRIPT})
    assert r.status_code == 422 and "is not one of the 4 labels" in r.text and SCRIPT not in r.text
    r = world["client"].post("/tasks/intent/items/nope/review", data={"csrf": csrf, "verdict": "skip"})
    assert r.status_code == 404
    assert world["publisher"].sent == []


def test_task_scopes_roles_and_free_form_tasks(world):
    client = world["client"]
    assert client.get("/api/tasks/intent/queue", headers=bearer(world, "other")).status_code == 403
    assert client.get("/api/tasks/intent/queue", headers=bearer(world, "service")).status_code == 403
    assert client.get("/api/tasks/intent/queue").status_code == 401
    assert client.get("/api/tasks/draft/queue", headers=bearer(world)).status_code == 404
    assert [t["task"] for t in client.get("/api/tasks", headers=bearer(world, "other")).json()] == ["other"]


def test_the_json_api_lists_the_queue_and_takes_reviews(world):
    client = world["client"]
    items = client.get("/api/tasks/intent/queue", headers=bearer(world)).json()["items"]
    assert [i["call_id"] for i in items][:2] == ["c5", "c2"]
    r = client.post("/api/tasks/intent/reviews", headers=bearer(world),
                    json={"call_id": "c2", "verdict": "not_in_label_set", "note": "a fee question"})
    assert r.status_code == 200 and r.json()["verdict"] == "not_in_label_set" and r.json()["label"] is None
    queue = client.get("/api/tasks/intent/queue", headers=bearer(world)).json()["items"]
    assert "c2" not in [i["call_id"] for i in queue]
    assert client.get("/api/tasks/intent/items/c2", headers=bearer(world)).json()["review"]["reviewer"] == "ana"
    bad = client.post("/api/tasks/intent/reviews", headers=bearer(world), json={"call_id": "c1", "label": "nope"})
    assert bad.status_code == 422 and "not one of" in bad.json()["error"]
    summary = client.get("/api/tasks/intent/summary", headers=bearer(world)).json()
    assert summary["reviewed"]["total"] == 1 and summary["mode"] == "frontier"


def test_the_page_says_how_many_reviews_the_gate_needs_and_approves_a_graduation(world):
    client, publisher = world["client"], world["publisher"]
    reviewed = sum(1 for e in world["view"].dataset("intent").examples if e.reviewed)
    needed = ReviewSettings().controller.min_holdout - reviewed
    assert client.get("/api/tasks/intent/queue", headers=bearer(world)).json()["reviews_needed"] == needed > 0
    assert client.get("/api/tasks/intent/summary", headers=bearer(world)).json()["reviews_needed"] == needed
    assert client.post("/api/tasks/draft/approve", headers=bearer(world)).status_code == 404  # freeform: not graduated
    r = client.post("/api/tasks/intent/approve", headers=bearer(world))
    assert r.status_code == 200 and r.json()["kind"] == "first" and r.json()["requested_by"] == "ana"
    [request] = publisher.requests
    assert request.task == "intent" and "review page" in request.reason
    sign_in(world)
    page = client
    html = page.get("/tasks/intent").text
    assert f"{needed} more reviewed holdout items" in html and 'id="approve"' in html
    stale = page.post("/tasks/intent/approve", data={"csrf": "wrong"}, follow_redirects=False)
    assert stale.status_code == 403 and len(publisher.requests) == 1
    ok = page.post("/tasks/intent/approve", data={"csrf": csrf_of(html)}, follow_redirects=False)
    assert ok.status_code == 303 and len(publisher.requests) == 2


def test_the_task_page_shows_routing_charts_disagreements_and_history_escaped(world):
    view = world["view"]
    view.apply(catalog.ROUTING_DECISIONS, decision(reason=f"cut over {SCRIPT}"), key="intent")
    view.apply(catalog.ROUTING_HISTORY, decision(reason=f"cut over {SCRIPT}"))
    view.apply(catalog.DISAGREEMENTS, disagreement("d9", f"{SCRIPT} where is it"))
    for i in range(3):
        view.apply(catalog.SHADOW_STATS, ShadowStats(task="intent", model_version="3", compared=10 * (i + 1),
                                                     agreed=8 * (i + 1), ts=T0 + timedelta(minutes=i)))
        view.apply(catalog.ROUTER_OUTCOMES, RouterOutcome(call_id=f"o{i}", task="intent", mode="small",
                                                          served_by="fallback" if i == 0 else "small", latency_ms=1.0,
                                                          ts=T0 + timedelta(minutes=i)))
    sign_in(world)
    html = world["client"].get("/tasks/intent").text
    assert 'id="mode">small<' in html and 'id="threshold">0.70<' in html and 'id="model-version">3<' in html
    assert SCRIPT not in html and html.count("&lt;script&gt;") >= 3
    assert html.count("<polyline") == 2 and "predicted" in html
    assert 'href="/tasks/intent/items/d9"' in html
    assert "80.0 %" in html  # the agreement legend


def test_security_headers_and_static_assets(world):
    r = world["client"].get("/login")
    assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["cache-control"] == "no-store"
    js = world["client"].get("/static/review.js")
    assert js.status_code == 200 and "requestSubmit" in js.text
    assert world["client"].get("/static/review.css").status_code == 200
    assert world["client"].get("/readyz").json()["ready"] is True


def test_sign_out_ends_the_session(world):
    sign_in(world)
    csrf = csrf_of(world["client"].get("/").text)
    assert world["client"].post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert world["client"].get("/", follow_redirects=False).status_code == 303


# --- extraction: review by correcting fields ---------------------------------------------------

BOOKING_FIELDS = ("people", "time", "date")


def booking_answer(**values) -> str:
    import json

    return json.dumps({f: values.get(f) for f in BOOKING_FIELDS}, sort_keys=True)


@pytest.fixture
def booking_world(keys, tmp_path):
    from services.common.contracts import CapturedCall, Disagreement
    from services.common.tasks import FieldSpec
    from services.review.view import ReviewView

    booking = TaskSpec(name="booking", kind="extraction", fields=tuple(FieldSpec(name=f) for f in BOOKING_FIELDS))
    settings = ReviewSettings(api_keys_file=keys["path"], common=CommonSettings(var_dir=tmp_path),
                              curator=CuratorSettings(holdout_fraction=ALL_HOLDOUT))
    view, publisher = ReviewView(ALL_HOLDOUT), FakePublisher()
    frontier = booking_answer(people="2", time="7 pm")
    small = booking_answer(people="2", time="8 pm", date="friday")
    capture(view, CapturedCall(call_id="b1", task="booking", input=f"table for 2 at 7 pm {SCRIPT}",
                               output_raw=frontier, output=frontier, latency_ms=500.0, ts=T0))
    view.apply(catalog.DISAGREEMENTS, Disagreement(call_id="b1", task="booking", model_version="2",
                                                   input=f"table for 2 at 7 pm {SCRIPT}", frontier_output=frontier,
                                                   small_output=small, confidence=0.4, ts=T0,
                                                   differing_fields=["date", "time"]))
    app = create_app(settings, tasks=TaskRegistry(tasks={"booking": booking}), view=view, publisher=publisher,
                     follow=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield {"client": client, "view": view, "publisher": publisher, "keys": keys}


def test_an_extraction_item_has_one_input_per_field_prefilled_with_the_frontiers_and_differences_marked(booking_world):
    client = booking_world["client"]
    sign_in_to(booking_world, "/tasks/booking/queue")
    html = client.get("/tasks/booking/queue").text
    assert 'id="call-id">b1<' in html and SCRIPT not in html
    assert html.count('class="field-input"') == 3
    assert 'name="field.people" value="2"' in html and 'name="field.time" value="7 pm"' in html
    assert 'name="field.date" value=""' in html
    assert re.search(r'class="field-row differs" id="row-time"', html) and re.search(r'class="field-row differs" id="row-date"', html)
    assert 'class="field-row" id="row-people"' in html and html.count("tag-differs") == 2
    assert 'data-small="8 pm"' in html and 'id="label-text"' not in html


def test_correcting_fields_publishes_the_corrected_json_and_refuses_unknown_fields(booking_world):
    client, publisher = booking_world["client"], booking_world["publisher"]
    sign_in_to(booking_world, "/tasks/booking/queue")
    csrf = csrf_of(client.get("/tasks/booking/queue").text)
    bad = client.post("/tasks/booking/items/b1/review",
                      data={"csrf": csrf, "verdict": "label", "field.people": "3", "field.table": "window"})
    assert bad.status_code == 422 and "not a field of task booking: &#39;table&#39;" in bad.text
    assert 'name="field.people" value="3"' in bad.text  # what was typed is kept
    assert publisher.sent == []
    r = client.post("/tasks/booking/items/b1/review", follow_redirects=False,
                    data={"csrf": csrf, "verdict": "label", "field.people": "2", "field.time": " 8 pm ",
                          "field.date": "", "note": "the time was misheard"})
    assert r.status_code == 303
    [sent] = publisher.sent
    assert sent.label == booking_answer(people="2", time="8 pm") and sent.note == "the time was misheard"
    again = client.get("/tasks/booking/items/b1").text  # the form now shows the review's values
    assert 'name="field.time" value="8 pm"' in again
    skip = client.post("/tasks/booking/items/b1/review", follow_redirects=False,
                       data={"csrf": csrf, "verdict": "skip", "field.people": "2"})
    assert skip.status_code == 303 and publisher.sent[-1].verdict == "skip" and publisher.sent[-1].label is None


def test_the_json_api_takes_corrected_fields(booking_world):
    client, publisher = booking_world["client"], booking_world["publisher"]
    item = client.get("/api/tasks/booking/items/b1", headers=bearer(booking_world)).json()
    assert item["differing_fields"] == ["date", "time"]
    r = client.post("/api/tasks/booking/reviews", headers=bearer(booking_world),
                    json={"call_id": "b1", "fields": {"people": "2", "time": "8 pm", "date": None}})
    assert r.status_code == 200 and r.json()["label"] == booking_answer(people="2", time="8 pm")
    bad = client.post("/api/tasks/booking/reviews", headers=bearer(booking_world),
                      json={"call_id": "b1", "fields": {"persons": "2"}})
    assert bad.status_code == 422 and "not a field of task booking: 'persons'" in bad.json()["error"]
    assert len(publisher.sent) == 1


def sign_in_to(world, target: str, key: str = "ana"):
    r = world["client"].post("/login", data={"key": world["keys"][key], "next": target}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == target
    return r


def test_after_a_drift_the_page_asks_for_reviews_of_what_was_captured_since(world):
    import json

    from services.curator.logic import ts_ms
    from tests.unit.test_review_view import call

    client, view = world["client"], world["view"]
    demotion = decision("shadow", "drift: fallback rate; demoted to shadow", ts=T0 + timedelta(hours=1),
                        evidence=json.dumps({"gate": "watch", "verdict": "demoted"}))
    view.apply(catalog.ROUTING_DECISIONS, demotion, key="intent")
    view.apply(catalog.ROUTING_HISTORY, demotion)
    before_look = client.get("/api/tasks/intent/queue", headers=bearer(world)).json()
    assert before_look["reviews_needed"] == ReviewSettings().controller.min_shadow_reviewed  # none since the drift
    note = decision("shadow", "graduation collecting: waiting for data since the drift", ts=demotion.ts,
                    evidence=json.dumps({"gate": "graduation", "state": "collecting",
                                         "drift": {"since_ms": ts_ms(demotion.ts), "min_reviewed_since": 2}}))
    view.apply(catalog.ROUTING_HISTORY, note)
    launch = call("n1", "what is the exchange rate for euros", "card_arrival").model_copy(
        update={"ts": demotion.ts + timedelta(minutes=1)})
    capture(view, launch)
    queue = client.get("/api/tasks/intent/queue", headers=bearer(world)).json()
    assert queue["reviews_needed"] == 2 and queue["items"][0]["call_id"] == "n1"  # the new traffic first
    assert client.post("/api/tasks/intent/reviews", headers=bearer(world),
                       json={"call_id": "n1", "label": "card_arrival"}).status_code == 200
    assert client.post("/api/tasks/intent/reviews", headers=bearer(world),
                       json={"call_id": "c1", "label": "card_arrival"}).status_code == 200  # older: not counted
    assert client.get("/api/tasks/intent/summary", headers=bearer(world)).json()["reviews_needed"] == 1
