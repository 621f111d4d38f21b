"""The train labels the newest model disputes (its registration's `label_review`), on the review page
with no broker: the view keeps the newest version's list, a review by call id or input hash or a
forget takes an item off "to check", submit_review publishes the item's hash, and the pages and API."""
from __future__ import annotations

import json
import re

import pytest

from services.common import catalog
from services.common.contracts import DatasetForgotten, ModelRegistered, PairedCounts
from services.common.normalize import hash_of_input
from services.review.logic import ReviewRefused, submit_review
from services.review.view import MAX_DISPUTED, ReviewView, disputed_of
from tests.unit.test_review_app import bearer, csrf_of, sign_in_to, world  # noqa: F401 - the fixture
from tests.unit.test_review_app import keys  # noqa: F401 - the fixture
from tests.unit.test_review_view import TASK, FakePublisher, review

TRAIN = 0.0  # no holdout: every input is a train row


def row(call_id: str, text: str, label: str = "card_arrival", model: str = "card_delivery_estimate",
        task=TASK) -> dict:
    return {"call_id": call_id, "normalised_hash": hash_of_input(task, text), "input": text, "label": label,
            "frontier_label": label, "model_label": model, "label_probability": 0.02, "model_probability": 0.91}


def registered(version: str, items: list[dict] | None, task: str = "intent", disputed: int | None = None,
               **metrics) -> ModelRegistered:
    if items is not None:
        metrics["label_review"] = {"rows": 9417, "disputed": len(items) if disputed is None else disputed,
                                   "listed": len(items), "items": items}
    return ModelRegistered(task=task, version=version, base_model="minilm", snapshot_id="s1", holdout_size=10,
                           gold_reviewed=10, gold_frontier=0, small_accuracy=0.9, frontier_accuracy=0.9,
                           agreement=0.9, paired=PairedCounts(both_correct=8, small_only=1, frontier_only=1),
                           metrics_json=json.dumps(metrics), artifact_uri="file:///m", triton_model="intent")


ROWS = [row("t1", "my card still has not come"), row("t2", "when will the card get here", "card_delivery_estimate",
                                                     "card_arrival"),
        row("t3", "someone took my card", "card_arrival", "lost_or_stolen_card")]


def view_with(*models: ModelRegistered) -> ReviewView:
    view = ReviewView(TRAIN)
    for m in models:
        view.apply(catalog.MODELS, m, key=f"{m.task}/{m.version}")
    return view


def to_check(view: ReviewView, task: str = "intent") -> list[str]:
    return [d.call_id for d in view.disputed(task).to_check]


def test_a_registration_with_label_review_lists_its_items_in_order():
    view = view_with(registered("1", ROWS, disputed=612))
    d = view.disputed("intent")
    assert (d.model_version, d.disputed, d.listed) == ("1", 612, 3)
    assert to_check(view) == ["t1", "t2", "t3"]
    first = d.items[0][0]
    assert (first.label, first.model_label, first.model_probability) == ("card_arrival", "card_delivery_estimate", 0.91)
    assert catalog.MODELS in view.followed


def test_a_newer_version_replaces_the_list_and_an_older_one_read_later_changes_nothing():
    view = view_with(registered("2", ROWS[:1]), registered("10", ROWS[1:]), registered("9", ROWS[:1]))
    assert view.disputed("intent").model_version == "10" and to_check(view) == ["t2", "t3"]
    view.apply(catalog.MODELS, None, key="intent/10")  # the registration's tombstone
    assert view.disputed("intent").model_version is None and to_check(view) == []


@pytest.mark.parametrize("metrics", [{}, {"label_review": "garbled"}, {"label_review": {"items": "x"}}])
def test_a_registration_without_label_review_shows_nothing_and_clears_the_older_list(metrics):
    view = view_with(registered("1", ROWS), registered("2", None, **metrics))
    d = view.disputed("intent")
    assert d.model_version is None and d.items == [] and to_check(view) == []
    assert view.disputed("other").items == []


def test_at_most_max_disputed_items_are_kept_and_a_malformed_item_is_left_out():
    items = [row(f"t{i}", f"text {i}") for i in range(MAX_DISPUTED + 20)]
    del items[0]["model_label"]
    counts, kept = disputed_of(json.dumps({"label_review": {"disputed": 900, "listed": 520, "items": items}}))
    assert counts == (900, 520) and len(kept) == MAX_DISPUTED - 1 and "t0" not in kept


def test_a_review_naming_the_call_id_or_the_input_hash_takes_an_item_off_to_check():
    view = view_with(registered("1", ROWS))
    view.apply_review(review("t1", label="card_delivery_estimate"))
    by_hash = review("another-call-of-the-same-input", label="lost_or_stolen_card")
    view.apply_review(by_hash.model_copy(update={"normalised_hash": ROWS[2]["normalised_hash"]}))
    assert to_check(view) == ["t2"]
    reviews = {d.call_id: r for d, r in view.disputed("intent").items}
    assert reviews["t1"].label == "card_delivery_estimate" and reviews["t3"].label == "lost_or_stolen_card"
    view.apply(catalog.LABELS_REVIEWED, None, key="t1")  # the review's tombstone puts it back
    assert to_check(view) == ["t1", "t2"]


def test_a_forgotten_input_leaves_the_list_whichever_is_read_first():
    forget = DatasetForgotten(task="intent", normalised_hash=ROWS[0]["normalised_hash"], requested_by="ana",
                              reason="gdpr")
    view = view_with(registered("1", ROWS))
    view.apply(catalog.DATASET_FORGOTTEN, forget)
    assert to_check(view) == ["t2", "t3"] and view.item("intent", "t1") is None
    later = ReviewView(TRAIN)
    later.apply(catalog.DATASET_FORGOTTEN, forget)
    later.apply(catalog.MODELS, registered("1", ROWS), key="intent/1")
    assert to_check(later) == ["t2", "t3"]


async def test_submit_review_takes_a_disputed_call_and_publishes_its_input_hash():
    view, publisher = view_with(registered("1", ROWS)), FakePublisher()
    r = await submit_review(view, publisher, TASK, "t2", "label", "card_arrival", None, "ana")
    assert publisher.sent == [r] and r.call_id == "t2" and r.normalised_hash == ROWS[1]["normalised_hash"]
    assert to_check(view) == ["t1", "t3"]
    with pytest.raises(ReviewRefused) as refused:
        await submit_review(view, publisher, TASK, "t9", "label", "card_arrival", None, "ana")
    assert refused.value.status == 404 and len(publisher.sent) == 1


def test_the_task_page_links_the_disputed_queue_which_shows_both_labels_and_takes_a_review(world):  # noqa: F811
    view, client = world["view"], world["client"]
    train = [row("t1", "the card is late <b>again</b>"), row("t2", "card taken from me", model="lost_or_stolen_card")]
    view.apply(catalog.MODELS, registered("4", train), key="intent/4")
    sign_in_to(world, "/tasks/intent")
    page = client.get("/tasks/intent")
    assert "2 train labels the model v4 disputes" in page.text and 'href="/tasks/intent/disputed"' in page.text
    queue = client.get("/tasks/intent/disputed")
    assert queue.status_code == 200 and 'id="call-id">t1<' in queue.text
    assert "&lt;b&gt;again&lt;/b&gt;" in queue.text and "trained on (the frontier" in queue.text
    assert re.search(r'id="small-answer">card_delivery_estimate <span class="muted">probability 0\.91', queue.text)
    r = client.post("/tasks/intent/items/t1/review", data={"label": "card_delivery_estimate", "verdict": "label",
                                                           "csrf": csrf_of(queue.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/tasks/intent/disputed?saved=t1"
    sent = world["publisher"].sent[-1]
    assert (sent.call_id, sent.label, sent.normalised_hash) == ("t1", "card_delivery_estimate",
                                                                 train[0]["normalised_hash"])
    assert 'id="call-id">t2<' in client.get(r.headers["location"]).text


def test_the_json_api_lists_disputed_labels_with_reviews_and_the_summary_counts_them(world):  # noqa: F811
    view, client = world["view"], world["client"]
    assert client.get("/api/tasks/intent/disputed", headers=bearer(world)).json()["items"] == []
    view.apply(catalog.MODELS, registered("4", ROWS, disputed=40), key="intent/4")
    r = client.post("/api/tasks/intent/reviews", headers=bearer(world),
                    json={"call_id": "t3", "label": "lost_or_stolen_card"})
    assert r.status_code == 200 and r.json()["normalised_hash"] == ROWS[2]["normalised_hash"]
    body = client.get("/api/tasks/intent/disputed", headers=bearer(world)).json()
    assert {k: body[k] for k in ("model_version", "disputed", "listed", "to_check")} == \
        {"model_version": "4", "disputed": 40, "listed": 3, "to_check": 2}
    assert [i["call_id"] for i in body["items"]] == ["t1", "t2", "t3"]
    assert body["items"][0]["review"] is None and body["items"][2]["review"]["label"] == "lost_or_stolen_card"
    summary = client.get("/api/tasks/intent/summary", headers=bearer(world)).json()
    assert summary["disputed_to_check"] == 2
    assert client.get("/api/tasks/intent/disputed").status_code == 401
    assert client.get("/api/tasks/intent/disputed", headers=bearer(world, "other")).status_code == 403
    assert client.post("/api/tasks/intent/reviews", headers=bearer(world),
                       json={"call_id": "nope", "label": "card_arrival"}).status_code == 404


async def test_the_demo_reviewer_checks_the_disputed_labels_with_the_gold_through_the_api(world):  # noqa: F811
    import httpx

    from services.demo.loop import check_disputed

    app = world["client"].app
    listed = [row("t1", "card late"), row("t2", "card taken", "card_arrival", "lost_or_stolen_card"),
              row("t3", "what is the weather", "card_arrival", "card_arrival"), row("t4", "no gold for me")]
    model = registered("4", listed, disputed=9)
    world["view"].apply(catalog.MODELS, model, key="intent/4")
    gold = {"card late": "card_arrival", "card taken": "lost_or_stolen_card", "what is the weather": "weather"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                 headers=bearer(world)) as http:
        facts = await check_disputed(http, TASK, gold, model, wait_s=0)
        assert facts == {"model_version": "4", "disputed": 9, "listed": 4, "checked": 3, "frontier_wrong": 2,
                         "model_right": 1}
        sent = {r.call_id: (r.verdict, r.label) for r in world["publisher"].sent}
        assert sent == {"t1": ("label", "card_arrival"), "t2": ("label", "lost_or_stolen_card"),
                        "t3": ("not_in_label_set", None)}
        older = registered("3", None)  # no label_review: nothing to check, no waiting
        assert (await check_disputed(http, TASK, gold, older, wait_s=60))["checked"] == 0
    assert len(world["publisher"].sent) == 3
