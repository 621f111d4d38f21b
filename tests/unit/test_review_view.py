"""The review page's state and rules with no broker: the queue (the curator's, less skipped
inputs), compacted-review semantics, items, series; review checks; sessions; chart geometry."""
from __future__ import annotations

import itertools
import weakref
from datetime import datetime, timedelta, timezone

import pytest

from services.common import catalog
from services.common.contracts import (CapturedCall, DatasetForgotten, Disagreement, ReviewedLabel, RouterOutcome,
                                       RoutingDecision, ShadowResult, ShadowStats)
from services.curator.dataset import apply_call, record_key, to_record
from services.curator.logic import curate_call
from services.common.tasks import FieldSpec, TaskSpec
from services.review.auth import AuthError, Sessions, authenticate, check_csrf, safe_next
from services.review.charts import thin, time_chart
from services.review.logic import ReviewRefused, make_review, submit_review
from services.review.view import ReviewView
from services.router.keys import KeyStore, create_key

LABELS = ("card_arrival", "card_delivery_estimate", "lost_or_stolen_card", "top_up_failed")
TASK = TaskSpec(name="intent", kind="classification", labels=LABELS)
EXTRACT = TaskSpec(name="fields", kind="extraction", fields=(FieldSpec(name="city", required=True),))
ALL_HOLDOUT = 0.999999  # split_of() puts every test input in the holdout
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def call(call_id: str, text: str, label: str | None = "card_arrival", task: str = "intent") -> CapturedCall:
    return CapturedCall(call_id=call_id, task=task, input=text, output_raw=label or "??", output=label,
                        parse_ok=label is not None, latency_ms=100.0, ts=T0)


_SHARDS: "weakref.WeakKeyDictionary[ReviewView, dict]" = weakref.WeakKeyDictionary()
_OFFSETS = itertools.count()


def capture(view: ReviewView, c: CapturedCall, shard: int = 0) -> None:
    """`c` as the curator files it: folded into its input's record on captured partition `shard`
    (services/curator/dataset.py), which the view reads from partition `shard` of the dataset topic."""
    entries = _SHARDS.setdefault(view, {})
    curated = curate_call(c, view.holdout_fraction)
    key = record_key(curated.task, curated.normalised_hash)
    entry = apply_call(entries.get((shard, key)), curated, next(_OFFSETS), shard)
    if entry is not None:
        entries[(shard, key)] = entry
        view.apply(catalog.DATASET, to_record(entry), key=key, partition=shard)


def review(call_id: str, verdict: str = "label", label: str | None = "card_arrival", reviewer: str = "ana",
           note: str | None = None, task: str = "intent") -> ReviewedLabel:
    return ReviewedLabel(call_id=call_id, task=task, verdict=verdict, label=label if verdict == "label" else None,
                         reviewer=reviewer, note=note)


def disagreement(call_id: str, text: str, small: str = "card_delivery_estimate", confidence: float = 0.55,
                 frontier: str = "card_arrival") -> Disagreement:
    return Disagreement(call_id=call_id, task="intent", model_version="3", input=text, frontier_output=frontier,
                        small_output=small, confidence=confidence, ts=T0)


def shadow(call_id: str, text: str, small: str, confidence: float, frontier: str = "card_arrival") -> ShadowResult:
    return ShadowResult(call_id=call_id, task="intent", model_version="3", output=small, confidence=confidence,
                        latency_ms=3.0, input=text, frontier_output=frontier)


def decision(mode: str = "small", reason: str = "gate passed", ts: datetime = T0, **kw) -> RoutingDecision:
    return RoutingDecision(task="intent", mode=mode, model_version="3", threshold=0.7, reason=reason,
                           decided_by="controller", ts=ts, predicted_fallback_rate=0.2, **kw)


def seeded_view(fraction: float = ALL_HOLDOUT) -> ReviewView:
    """Five holdout calls: one disagreement, one low-confidence and one confident shadow result, two plain."""
    view = ReviewView(fraction)
    texts = {"c1": "my card has not arrived", "c2": "how long does delivery take",
             "c3": "<script>alert('x')</script> card stolen", "c4": "top up failed again",
             "c5": "where is my new card"}
    labels = {"c1": "card_arrival", "c2": "card_delivery_estimate", "c3": "lost_or_stolen_card",
              "c4": "top_up_failed", "c5": "card_arrival"}
    for cid, text in texts.items():
        capture(view, call(cid, text, labels[cid]))
    view.apply(catalog.DISAGREEMENTS, disagreement("c5", texts["c5"], confidence=0.4))
    view.apply(catalog.SHADOW_RESULTS, shadow("c2", texts["c2"], "card_delivery_estimate", 0.3,
                                              frontier="card_delivery_estimate"))
    view.apply(catalog.SHADOW_RESULTS, shadow("c4", texts["c4"], "top_up_failed", 0.95, frontier="top_up_failed"))
    return view


def queue_ids(view: ReviewView, limit: int = 50) -> list[str]:
    return [i.call_id for i in view.queue("intent", limit=limit, low_confidence=0.6)]


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[ReviewedLabel] = []
        self.requests: list = []

    async def request_model(self, request) -> None:
        self.requests.append(request)

    async def publish(self, r: ReviewedLabel) -> tuple[int, int]:
        self.sent.append(r)
        return 0, len(self.sent) - 1


# --- the queue ------------------------------------------------------------------------------

def test_queue_puts_disagreements_then_low_confidence_then_a_stratified_sample():
    view = seeded_view()
    items = view.queue("intent", limit=50, low_confidence=0.6)
    assert [i.call_id for i in items[:2]] == ["c5", "c2"]
    assert [i.reason for i in items] == ["disagreement", "low_confidence", "sample", "sample", "sample"]
    assert {i.call_id for i in items[2:]} == {"c1", "c3", "c4"}
    first = items[0]
    assert (first.frontier_label, first.small_output, first.confidence, first.model_version) == \
           ("card_arrival", "card_delivery_estimate", 0.4, "3")
    c4 = next(i for i in items if i.call_id == "c4")
    assert (c4.small_output, c4.confidence) == ("top_up_failed", 0.95)  # a sample item still shows the small answer


def test_a_review_takes_the_item_out_and_a_second_one_replaces_it_without_a_duplicate():
    view = seeded_view()
    view.apply(catalog.LABELS_REVIEWED, review("c5", label="card_arrival"), partition=1, offset=10)
    assert "c5" not in queue_ids(view)
    view.apply(catalog.LABELS_REVIEWED, review("c5", label="lost_or_stolen_card", reviewer="bo"), partition=1,
               offset=11)
    assert [r.label for r in view.reviews("intent")] == ["lost_or_stolen_card"]
    assert view.review_counts("intent") == {"label": 1, "not_in_label_set": 0, "skip": 0, "total": 1}
    assert view.item("intent", "c5").review.reviewer == "bo"
    assert view.gold_labels("intent")["lost_or_stolen_card"] == 2


@pytest.mark.parametrize("verdict", ["skip", "not_in_label_set"])
def test_skip_and_not_in_label_set_also_leave_the_queue(verdict):
    view = seeded_view()
    view.apply(catalog.LABELS_REVIEWED, review("c1", verdict=verdict))
    assert "c1" not in queue_ids(view)
    assert len(queue_ids(view)) == 4


def test_a_tombstone_puts_the_item_back_and_an_older_record_does_not_undo_a_newer_one():
    view = seeded_view()
    view.apply(catalog.LABELS_REVIEWED, review("c1", label="top_up_failed"), partition=2, offset=7)
    view.apply(catalog.LABELS_REVIEWED, review("c1", label="card_arrival"), partition=2, offset=5)  # read late
    assert view.latest_review("intent", "c1").label == "top_up_failed"
    view.apply(catalog.LABELS_REVIEWED, None, key="c1", partition=2, offset=8)
    assert view.latest_review("intent", "c1") is None and "c1" in queue_ids(view)


def test_the_same_input_twice_is_one_item_and_its_review_covers_both_calls():
    view = seeded_view()
    capture(view, call("c1b", "  MY card has not   arrived "), shard=3)  # another partition: merged
    assert len(queue_ids(view)) == 5
    view.apply(catalog.LABELS_REVIEWED, review("c1b"))
    assert not {"c1", "c1b"} & set(queue_ids(view))


def test_the_queue_is_read_from_dataset_records_merged_across_shards():
    view = seeded_view()
    capture(view, call("c1-later", "my card has NOT arrived", "card_delivery_estimate"), shard=5)
    items = {i.call_id: i for i in view.queue("intent", limit=50, low_confidence=0.6)}
    assert "c1" not in items and items["c1-later"].frontier_label == "card_delivery_estimate"  # the kept call
    t = view.task("intent")
    digest = t.by_call["c1"]
    assert set(t.holdout[digest]) == {0, 5} and t.inputs[digest].calls == 2 and t.inputs[digest].conflict
    assert view.item("intent", "c1").input == "my card has NOT arrived"  # an earlier call shows its input


def test_the_page_follows_the_dataset_topic_not_the_captured_calls():
    followed = {s.name for s in ReviewView(0.15).followed}
    assert {catalog.DATASET.name, catalog.DATASET_FORGOTTEN.name} <= followed
    assert catalog.CALLS_CAPTURED.name not in followed


def test_train_inputs_are_not_kept():
    view = ReviewView(0.0)  # every input trains
    capture(view, call("t1", "card never came"))
    t = view.task("intent")
    assert (t.holdout, t.inputs, t.by_call, t.holdout_calls) == ({}, {}, {}, 0) and queue_ids(view) == []


def test_a_forgotten_input_leaves_for_good_and_a_tombstone_removes_one_shard():
    view = seeded_view()
    capture(view, call("c1b", "my card has not arrived"), shard=2)
    digest = view.task("intent").by_call["c1"]
    key = f"intent/{digest}"
    view.apply(catalog.DATASET, None, key=key, partition=2)  # the tombstone of one shard's record
    assert set(view.task("intent").holdout[digest]) == {0} and "c1" in queue_ids(view)
    view.apply(catalog.DATASET_FORGOTTEN, DatasetForgotten(task="intent", normalised_hash=digest, requested_by="ops"))
    assert "c1" not in queue_ids(view) and view.item("intent", "c1") is None
    capture(view, call("c1c", "my card has not arrived"), shard=4)  # a record written before the curator knew
    assert not {"c1", "c1c"} & set(queue_ids(view)) and digest not in view.task("intent").inputs
    assert view.task("intent").holdout_calls == 4


def test_a_review_naming_the_input_covers_a_call_the_records_no_longer_list():
    view = seeded_view()
    digest = view.task("intent").by_call["c1"]
    old = review("c1-long-ago", label="top_up_failed").model_copy(update={"normalised_hash": digest})
    view.apply(catalog.LABELS_REVIEWED, old, partition=0, offset=1)
    assert "c1" not in queue_ids(view) and view.gold_labels("intent")["top_up_failed"] == 2
    skipped = review("c3-long-ago", verdict="skip").model_copy(
        update={"normalised_hash": view.task("intent").by_call["c3"]})
    view.apply(catalog.LABELS_REVIEWED, skipped, partition=0, offset=2)
    assert "c3" not in queue_ids(view)


def test_the_limit_and_the_cache_follow_changes():
    view = seeded_view()
    assert queue_ids(view, limit=2) == ["c5", "c2"]
    view.apply(catalog.LABELS_REVIEWED, review("c5"))
    assert queue_ids(view, limit=2) == ["c2", queue_ids(view)[1]]


def test_an_item_outside_the_holdout_is_known_from_its_disagreement():
    view = ReviewView(0.0)  # every input trains: the queue is empty, a disagreement is still reviewable
    capture(view, call("t1", "card never came"))
    view.apply(catalog.DISAGREEMENTS, disagreement("t1", "card never came"))
    assert queue_ids(view) == []
    item = view.item("intent", "t1")
    assert (item.reason, item.input, item.small_output) == ("disagreement", "card never came", "card_delivery_estimate")
    assert view.item("intent", "nope") is None


def test_task_state_series_history_and_decisions():
    view = ReviewView(ALL_HOLDOUT, outcome_bucket_s=60)
    d1, d2 = decision("shadow", "shadow started"), decision("small", "cut over", ts=T0 + timedelta(hours=1))
    for d in (d1, d2, d2):  # a replayed history record is kept once
        view.apply(catalog.ROUTING_HISTORY, d)
    view.apply(catalog.ROUTING_DECISIONS, d2, key="intent")
    assert [h.reason for h in view.task("intent").history] == ["shadow started", "cut over"]
    assert view.task("intent").decision.mode == "small"
    view.apply(catalog.ROUTING_DECISIONS, None, key="intent")
    assert view.task("intent").decision is None
    for i, agreed in enumerate((80, 90)):
        view.apply(catalog.SHADOW_STATS, ShadowStats(task="intent", model_version="3", compared=100, agreed=agreed,
                                                     ts=T0 + timedelta(minutes=i)))
    assert [round(v, 2) for _, v in view.agreement_series("intent")["3"]] == [0.8, 0.9]
    for i, served in enumerate(["small", "fallback", "small", "fallback"]):
        view.apply(catalog.ROUTER_OUTCOMES, RouterOutcome(call_id=f"o{i}", task="intent", mode="small",
                                                          served_by=served, latency_ms=1.0,
                                                          ts=T0 + timedelta(seconds=30 * i)))
    view.apply(catalog.ROUTER_OUTCOMES, RouterOutcome(call_id="f", task="intent", mode="frontier", served_by="frontier",
                                                      latency_ms=1.0, ts=T0))
    assert [(rate, n) for _, rate, n in view.fallback_series("intent")] == [(0.5, 2), (0.5, 2)]


def test_label_counts_and_parse_failures():
    view = seeded_view()
    capture(view, call("bad", "??", None))
    capture(view, call("c1c", "my card has not arrived"), shard=1)  # a repeat of c1: one more call, not an input
    t = view.task("intent")
    assert (t.holdout_calls, t.parse_failures, t.frontier_labels["card_arrival"]) == (7, 1, 2)


# --- what a reviewer may submit -------------------------------------------------------------

def test_make_review_checks_the_label_against_the_task():
    r = make_review(TASK, "c1", "label", "  CARD_ARRIVAL ", "  looks right  ", "ana")
    assert (r.label, r.note, r.reviewer, r.verdict) == ("card_arrival", "looks right", "ana", "label")
    assert make_review(TASK, "c1", "not_in_label_set", "card_arrival", "", "ana").label is None
    for verdict, label, note in (("label", "nope", None), ("label", "", None), ("maybe", "card_arrival", None),
                                 ("label", "card_arrival", "x" * 2001)):
        with pytest.raises(ReviewRefused):
            make_review(TASK, "c1", verdict, label, note, "ana")


def test_make_review_of_an_extraction_task_normalises_the_json():
    assert make_review(EXTRACT, "e1", "label", '{"city": "Oslo"}', None, "ana").label == '{"city": "Oslo"}'
    with pytest.raises(ReviewRefused):
        make_review(EXTRACT, "e1", "label", '{"town": "Oslo"}', None, "ana")


BOOKING = TaskSpec(name="booking", kind="extraction",
                   fields=(FieldSpec(name="people"), FieldSpec(name="time"), FieldSpec(name="first_name"),
                           FieldSpec(name="guests", type="integer")))


def test_an_extraction_review_from_corrected_fields_is_the_canonical_json():
    from services.review.logic import label_from_fields

    r = make_review(BOOKING, "b1", "label", None, None, "ana",
                    fields={"people": " 2 ", "time": "7  pm", "first_name": "", "guests": "3"})
    assert r.label == '{"first_name": null, "guests": 3, "people": "2", "time": "7 pm"}'
    assert label_from_fields(BOOKING, {"time": "8 pm"}) == \
        '{"first_name": null, "guests": null, "people": null, "time": "8 pm"}'  # fields not given are null
    assert make_review(BOOKING, "b1", "skip", None, None, "ana", fields={"nope": "x"}).label is None


@pytest.mark.parametrize("fields,label,message", [
    ({"people": "2", "table": "5"}, None, "not a field of task booking: 'table'; its fields are people, time"),
    ({"guests": "two"}, None, "field guests: 'two' is not a whole number"),
    ({"people": True}, None, "field people: a value is text"),
    ({"people": "x" * 501}, None, "field people: 501 characters"),
    ({"people": "2"}, '{"people": "2"}', "not both"),
])
def test_an_extraction_review_refuses_unknown_fields_and_bad_values(fields, label, message):
    with pytest.raises(ReviewRefused, match=message) as refused:
        make_review(BOOKING, "b1", "label", label, None, "ana", fields=fields)
    assert refused.value.status == 422


def test_fields_are_refused_for_a_classification_task():
    with pytest.raises(ReviewRefused, match="classification: review it with a label"):
        make_review(TASK, "c1", "label", None, None, "ana", fields={"people": "2"})


async def test_submit_review_publishes_and_applies_and_refuses_unknown_calls():
    view, publisher = seeded_view(), FakePublisher()
    r = await submit_review(view, publisher, TASK, "c1", "label", "top_up_failed", None, "ana")
    assert publisher.sent == [r] and view.latest_review("intent", "c1") == r
    with pytest.raises(ReviewRefused) as refused:
        await submit_review(view, publisher, TASK, "unknown", "skip", None, None, "ana")
    assert refused.value.status == 404 and len(publisher.sent) == 1


# --- who may review -------------------------------------------------------------------------

def test_sessions_expire_and_auth_needs_a_reviewer_key(tmp_path):
    path = tmp_path / "keys.json"
    reviewer, service = create_key(path, "ana", role="reviewer"), create_key(path, "svc")
    keys, now = KeyStore(path), [0.0]
    sessions = Sessions(60, clock=lambda: now[0])
    sid, session = sessions.create(reviewer)
    assert authenticate(keys, sessions, None, sid).name == "ana"
    assert authenticate(keys, sessions, f"Bearer {reviewer}", None).session is None
    with pytest.raises(AuthError) as e:
        authenticate(keys, sessions, f"Bearer {service}", None)
    assert e.value.status == 403
    with pytest.raises(AuthError) as e:
        check_csrf(authenticate(keys, sessions, None, sid), "wrong")
    assert e.value.status == 403
    check_csrf(authenticate(keys, sessions, None, sid), session.csrf)
    now[0] = 61
    with pytest.raises(AuthError) as e:
        authenticate(keys, sessions, None, sid)
    assert e.value.status == 401


@pytest.mark.parametrize("target,expected", [("/tasks/a/queue?x=1", "/tasks/a/queue?x=1"), ("//evil.example/", "/"),
                                             ("https://evil.example/", "/"), ("/\\evil", "/"), (None, "/")])
def test_safe_next_stays_on_this_site(target, expected):
    assert safe_next(target) == expected


# --- charts ---------------------------------------------------------------------------------

def test_time_chart_puts_points_inside_the_plot():
    pts = [(T0 + timedelta(minutes=i), v) for i, v in enumerate((0.0, 0.5, 1.0, 1.7))]
    chart = time_chart({"v3": pts}, width=600, height=200, reference=0.2, reference_label="predicted")
    [line] = chart.lines
    coords = [tuple(map(float, p.split(","))) for p in line.points.split()]
    assert coords[0] == (chart.left, chart.bottom) and coords[2][1] == chart.top
    assert coords[3][1] == chart.top  # clamped
    assert all(chart.left <= x <= chart.right for x, _ in coords)
    assert chart.reference[1] == "predicted" and line.last_value == 1.7
    assert time_chart({"v": []}).empty and not time_chart({"v": pts[:1]}).empty
    assert len(thin([(T0, 0.0)] * 1000, most=100)) == 100


def test_the_fallback_series_merges_minutes_into_at_most_max_points_bins():
    view = ReviewView(ALL_HOLDOUT, outcome_bucket_s=60)
    for i in range(600):  # one request a minute for ten hours, every fourth one a fallback
        view.apply(catalog.ROUTER_OUTCOMES, RouterOutcome(call_id=f"o{i}", task="intent", mode="small", latency_ms=1.0,
                                                          served_by="fallback" if i % 4 == 0 else "small",
                                                          ts=T0 + timedelta(minutes=i)))
    series = view.fallback_series("intent", max_points=60)
    assert len(series) <= 60 and sum(n for _, _, n in series) == 600
    assert all(n == 10 for _, _, n in series) and all(abs(rate - 0.25) <= 0.06 for _, rate, _ in series)


def test_a_busy_queue_is_recomputed_at_most_every_refresh_s_but_a_reviewed_call_leaves_at_once():
    now = [0.0]
    view = seeded_view()
    view.refresh_s, view.clock = 10.0, lambda: now[0]
    assert queue_ids(view)[0] == "c5"
    view.apply(catalog.DISAGREEMENTS, disagreement("c1", "my card has not arrived", confidence=0.1))
    view.apply(catalog.LABELS_REVIEWED, review("c5"))
    assert queue_ids(view)[0] == "c2"  # c5 left at once; c1's disagreement waits for the refresh
    now[0] = 10.0
    assert queue_ids(view)[:2] == ["c1", "c2"]
