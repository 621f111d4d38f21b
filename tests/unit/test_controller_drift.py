"""After a drift demotion: the task collects data since the demotion before the retrain (pure, no broker).

The rule (services/curator/readiness.py, `drift_readiness`), the controller's states around it
(graduation.py: collecting -> training, kind drift), the review queue that asks for the data since
the drift, and the fallback rate the retrained model is held to (the traffic's label mix).
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from services.common.contracts import ReviewedLabel, utcnow
from services.controller.control import Controller, evidence_of
from services.controller.gate import traffic_prediction
from services.controller.graduation import Signal
from services.controller.settings import ControllerSettings
from services.curator.logic import CuratedCall, build_dataset, build_review_queue
from services.curator.readiness import drift_readiness, readiness
from tests.unit.test_controller import outcome, read_back, cut_over
from tests.unit.test_gate import registered, shadow_stats

SETTINGS = ControllerSettings(min_window=50, window_size=100, min_holdout=100, min_shadow_reviewed=10)
SINCE = 1_000_000


def calls(label: str, n: int, *, at: int, split: str = "train", start: int = 0) -> list[CuratedCall]:
    return [CuratedCall(f"{label}-{at}-{split}-{i}", "intent", at + i, f"{label} {at} {split} {i}",
                        f"{label}-{at}-{split}-{i}", split, label) for i in range(start, start + n)]


def dataset(new_train: int, new_holdout: int = 0, reviewed_after: int = 0):
    """Before the drift: labels a and b with 40 train examples each; after: 60 % of the traffic is
    the launch label `x`, 40 % the old labels."""
    before = calls("a", 40, at=0) + calls("b", 40, at=0) + calls("a", 10, at=0, split="holdout")
    after = (calls("x", new_train, at=SINCE) + calls("a", new_train // 3, at=SINCE, start=100)
             + calls("x", new_holdout, at=SINCE, split="holdout"))
    reviews = {c.call_id: ReviewedLabel(call_id=c.call_id, task="intent", label="x", reviewer="ana")
               for c in after if c.split == "holdout"}
    reviews = dict(list(reviews.items())[:reviewed_after])
    reviews["a-0-holdout-0"] = ReviewedLabel(call_id="a-0-holdout-0", task="intent", label="a", reviewer="ana")
    return build_dataset("intent", before + after, reviews)


def drift(ds, **overrides):
    return drift_readiness(ds, SINCE, min_reviewed_holdout=100, min_reviewed_floor=10, labels=3, **overrides)


def test_a_label_the_traffic_moved_to_needs_as_many_examples_as_the_median_label_had():
    r = drift(dataset(new_train=12, new_holdout=5, reviewed_after=5))
    assert r.new_labels == ("x",) and r.min_train_per_label == 40  # a and b had 40 each before the drift
    assert r.short_labels == {"x": 12} and not r.ready
    assert r.answered_since["x"] == 17 and "a" in r.answered_since and "b" not in r.answered_since
    assert "x 12 of 40" in r.reason and "reviewed holdout items since the drift: 5 of" in r.reason


def test_each_new_label_needs_its_even_share_of_the_gates_reviewed_minimum_since_the_drift():
    r = drift(dataset(new_train=40, new_holdout=30, reviewed_after=20))
    assert not r.short_labels and r.new_share == pytest.approx(70 / 83, abs=1e-3)
    assert r.min_reviewed_since == 34  # one new label of 3: ceil(100 / 3) reviewed items since the drift
    assert r.reviewed_since == 20 and r.reviews_needed == 14 and not r.ready
    assert drift(dataset(new_train=40, new_holdout=34, reviewed_after=34)).ready
    assert drift(dataset(new_train=40, new_holdout=30, reviewed_after=20), min_reviewed_since=20).ready
    floor = drift_readiness(dataset(new_train=40), SINCE, min_reviewed_holdout=100, min_reviewed_floor=10, labels=77)
    assert floor.min_reviewed_since == 10  # ceil(100 / 77) = 2 for one label: the shadow gate's minimum holds


def test_a_stray_answer_does_not_hold_the_retrain_up_and_old_labels_are_no_new_labels():
    ds = dataset(new_train=45, new_holdout=30, reviewed_after=30)
    stray = build_dataset("intent", [*(CuratedCall(e.call_id, "intent", e.ts_ms, e.input, e.normalised_hash, e.split,
                                                   e.frontier_label) for e in ds.examples),
                                     *calls("rare", 1, at=SINCE + 500)], {})
    r = drift(stray, min_reviewed_since=0)
    assert "rare" not in r.new_labels and "a" not in r.new_labels and r.ready


def test_the_minimum_per_label_is_bounded_and_can_be_set():
    assert drift(dataset(new_train=5)).min_train_per_label == 40
    assert drift(dataset(new_train=5), min_train_per_label=5).short_labels == {}
    tiny = build_dataset("intent", calls("a", 2, at=0) + calls("x", 3, at=SINCE), {})
    assert drift(tiny).min_train_per_label == 10


def test_the_review_queue_after_a_drift_holds_only_the_holdout_captured_since():
    ds = dataset(new_train=0, new_holdout=5)
    assert [i.frontier_label for i in build_review_queue(ds, [], limit=8, since_ms=SINCE)] == ["x"] * 5
    assert len(build_review_queue(ds, [], limit=3, since_ms=SINCE)) == 3
    assert len(build_review_queue(ds, [], limit=50)) == 14  # no drift: the whole unreviewed holdout


# --- the controller around the rule ----------------------------------------------------------

def demoted(c: Controller):
    cut_over(c, "v1", small_accuracy=0.95)
    effects = None
    for i in range(SETTINGS.min_window):
        effects = c.on_outcome(outcome(i, fallback=True, confidence=0.3))
    return read_back(c, effects.decisions[0])


def look(c: Controller, ds, reviewed: int = 0):
    base = readiness("intent", "classification", reviewed, ds.label_counts, SETTINGS.min_holdout)
    return c.on_signal(Signal("intent", True, (), base, drift(ds)))


def test_after_a_demotion_the_task_collects_then_asks_for_a_drift_retrain_once():
    c = Controller(SETTINGS, {"intent": "approve"})  # the retrain after a drift needs no approval
    demotion = demoted(c)
    assert c.graduation("intent").state == "collecting"
    waiting = look(c, dataset(new_train=12, new_holdout=5, reviewed_after=5), reviewed=200)
    (note,) = waiting.refusals
    assert not waiting.retrains and note.mode == "shadow" and note.model_version == "v1"
    assert note.reason.startswith("graduation collecting: waiting for data since the drift: ")
    assert "x 12 of 40" in note.reason and evidence_of(note)["drift"]["reviews_needed"] > 0
    assert not look(c, dataset(new_train=13, new_holdout=5, reviewed_after=5), reviewed=200)  # same targets
    ready = look(c, dataset(new_train=45, new_holdout=90, reviewed_after=90), reviewed=290)
    (request,) = ready.retrains
    assert (request.kind, request.serving_version, request.requested_by) == ("drift", "v1", "controller")
    assert "enough data since the drift" in request.reason
    assert c.graduation("intent").state == "training" and not c.needs_look("intent")
    assert evidence_of(ready.refusals[0])["drift"]["since_ms"] == SINCE and demotion.ts <= utcnow()


def test_a_drift_retrain_is_held_to_the_fallback_rate_of_the_traffic_since_the_drift():
    c = Controller(SETTINGS)
    demoted(c)
    ds = dataset(new_train=45, new_holdout=90, reviewed_after=90)
    request = look(c, ds, reviewed=290).retrains[0]
    by_label = {"a": [100, 5], "b": [100, 5], "x": [20, 8]}  # x: few holdout items, 40 % below the threshold
    v2 = registered("v2", predicted_fallback_rate=0.06, metrics={"fallback_by_label": by_label})
    v2 = v2.model_copy(update={"ts": request.ts + timedelta(seconds=1)})
    shadow = read_back(c, c.on_model(v2).decisions[0])
    mix = c.signals["intent"].drift.answered_since  # x 135, a 15
    expected = (mix["x"] * 0.4 + mix["a"] * 0.05) / (mix["x"] + mix["a"])
    assert shadow.predicted_fallback_rate == pytest.approx(expected, abs=1e-4)
    assert evidence_of(shadow)["prediction"]["holdout_predicted_fallback_rate"] == 0.06
    # live fallback 0.30: far above the holdout's 0.06, within what the traffic predicts
    small = c.on_stats(shadow_stats("v2", compared=300, kept=210, kept_agreed=205, agreed=280)).decisions
    assert small and small[0].mode == "small" and small[0].predicted_fallback_rate == shadow.predicted_fallback_rate


def test_traffic_prediction_needs_the_per_label_figures():
    model = registered("v2", predicted_fallback_rate=0.1, metrics={"fallback_by_label": {"a": [10, 1]}})
    assert traffic_prediction(model, {"a": 1, "new": 1})[0] == pytest.approx(0.1)  # unseen label: overall rate
    assert traffic_prediction(registered("v2"), {"a": 3}) == (None, None)
    assert traffic_prediction(model, {}) == (None, None)


def test_a_refused_drift_retrain_waits_for_more_reviews():
    c = Controller(SETTINGS)
    demoted(c)
    ds = dataset(new_train=45, new_holdout=90, reviewed_after=90)
    request = look(c, ds, reviewed=290).retrains[0]
    refused = registered("v2", both=100, small_only=0, frontier_only=80, neither=20)
    assert c.on_model(refused.model_copy(update={"ts": request.ts + timedelta(seconds=1)})).refusals
    assert not look(c, ds, reviewed=290).retrains and c.graduation("intent").state == "collecting"
    assert look(c, ds, reviewed=320).retrains


def test_a_demotion_read_after_a_restart_collects_from_its_own_time():
    c = Controller(SETTINGS)
    demotion = demoted(c)
    restarted = Controller(SETTINGS)
    restarted.read_decision(demotion)
    assert restarted.graduation("intent").state == "collecting" and restarted.drift_since("intent") == demotion.ts
    assert Controller(SETTINGS).drift_since("intent") is None and utcnow() >= demotion.ts


def test_the_trainer_publishes_each_frontier_labels_fallback_at_the_threshold():
    import numpy as np

    from trainer.kinds import Evaluation
    from trainer.kinds.classification import Classification

    ev = Evaluation({}, np.array([0.9, 0.4, 0.8, 0.3]), np.zeros(4), np.ones(4, bool), np.ones(4, bool),
                    ["a", "a", "x", "x"], ["a", "a", "x", "b"])
    extras = Classification().gate_extras(ev, np.ones(4, bool), 0.5, None)
    assert extras == {"fallback_by_label": {"a": [2, 1], "b": [1, 1], "x": [1, 0]}}
    assert Classification().gate_extras(ev, np.ones(4, bool), None, None)["fallback_by_label"]["a"] == [2, 2]
