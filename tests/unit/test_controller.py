"""The controller's decision paths and the watch, event by event, with no broker."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from services.common.contracts import CapturedCall, RouterOutcome, RoutingDecision, utcnow
from services.controller.cli import observed_fallback, status_rows
from services.controller.control import Controller, OverrideRefused, evidence_of, override
from services.controller.settings import ControllerSettings
from services.controller.store import emits_of
from tests.unit.test_gate import registered, shadow_stats

SETTINGS = ControllerSettings(min_window=50, window_size=100, min_sampled=20, sampled_window=40)


def cut_over(controller: Controller, version: str = "v1", **model) -> RoutingDecision:
    """Drive a task through the offline and shadow gates; return the `small` decision."""
    controller.on_model(registered(version, **model))
    effects = controller.on_stats(shadow_stats(version))
    assert effects.decisions and effects.decisions[0].mode == "small", effects
    return read_back(controller, effects.decisions[0])


def read_back(controller: Controller, decision: RoutingDecision) -> RoutingDecision:
    controller.read_decision(decision)  # as the app does when the routing topic delivers it
    return decision


def outcome(i: int, *, fallback: bool = False, confidence: float = 0.9, version: str = "v1", sampled: bool = False,
            reason: str = "low_confidence", ts=None, output: str = "card_arrival") -> RouterOutcome:
    return RouterOutcome(call_id=f"c{i}", task="intent", mode="small", served_by="fallback" if fallback else "small",
                         model_version=version, confidence=confidence, threshold=0.62, output=output,
                         fallback_reason=reason if fallback else None, latency_ms=12.0, sampled=sampled,
                         ts=ts or utcnow() + timedelta(milliseconds=i))


# --- gate paths ------------------------------------------------------------------------------

def test_a_better_model_goes_to_shadow_then_small():
    c = Controller(SETTINGS)
    first = c.on_model(registered("v1"))
    assert not first.refusals and len(first.decisions) == 1
    shadow = first.decisions[0]
    assert (shadow.mode, shadow.model_version, shadow.threshold) == ("shadow", "v1", 0.62)
    assert shadow.triton_model == "intent-v1" and shadow.predicted_fallback_rate == 0.2
    assert shadow.decided_by == "controller" and evidence_of(shadow)["statistics"]["p_value"] < 0.05
    assert c.current("intent") == shadow  # known before the routing topic gives it back
    small = c.on_stats(shadow_stats("v1")).decisions[0]
    assert (small.mode, small.model_version, small.threshold) == ("small", "v1", 0.62)
    assert evidence_of(small)["kept_agreement"] == pytest.approx(232 / 240)


def test_decisions_go_to_the_routing_topic_and_history_refusals_to_history_only():
    c = Controller(SETTINGS)
    emits = emits_of(c.on_model(registered("v1")))
    assert [e.spec.name for e in emits] == ["graduate.routing.decisions", "graduate.routing.history"]
    assert all(e.key == "intent" for e in emits)
    refused = emits_of(c.on_model(registered("v2", small_only=5, frontier_only=60)))
    assert [e.spec.name for e in refused] == ["graduate.routing.history"]


def test_a_refusal_keeps_the_current_mode_and_says_why():
    c = Controller(SETTINGS)
    cut_over(c)
    effects = c.on_model(registered("v2", small_only=5, frontier_only=60))
    assert not effects.decisions
    refusal = effects.refusals[0]
    assert (refusal.mode, refusal.model_version) == ("small", "v1")
    assert refusal.reason.startswith("stays small (v1): offline gate refused for v2: worse than the frontier")
    assert evidence_of(refusal)["verdict"] == "refused" and evidence_of(refusal)["candidate"] == "v2"
    assert c.current("intent").mode == "small" and c.current("intent").model_version == "v1"


def test_too_little_data_is_refused_with_how_many_more():
    c = Controller(SETTINGS)
    refusal = c.on_model(registered("v1", both=100, small_only=20, frontier_only=5, neither=25)).refusals[0]
    assert refusal.mode == "frontier" and "(150 more)" in refusal.reason


def test_a_model_worse_than_the_serving_one_never_replaces_it():
    c = Controller(SETTINGS)
    cut_over(c, "v1", small_accuracy=0.91)
    effects = c.on_model(registered("v2", small_accuracy=0.89))  # non-inferior to the frontier, worse than v1
    assert not effects.decisions and "worse than v1" in effects.refusals[0].reason
    assert c.current("intent").model_version == "v1" and c.current("intent").mode == "small"
    better = c.on_model(registered("v3", small_accuracy=0.92)).decisions[0]
    assert (better.mode, better.model_version) == ("shadow", "v3")


def test_a_replayed_registration_gets_no_second_verdict_even_after_a_restart():
    c = Controller(SETTINGS)
    shadow = c.on_model(registered("v1")).decisions[0]
    assert not c.on_model(registered("v1"))
    restarted = Controller(SETTINGS)
    restarted.read_decision(shadow)  # what the replay of the routing topic gives
    assert not restarted.on_model(registered("v1"))
    refused = c.on_model(registered("v2", small_only=5, frontier_only=60)).refusals[0]
    again = Controller(SETTINGS)
    again.read_history(refused)
    assert not again.on_model(registered("v2", small_only=5, frontier_only=60))


def test_a_failing_shadow_gate_stays_in_shadow_and_notes_it_once():
    c = Controller(SETTINGS)
    c.on_model(registered("v1"))
    assert not c.on_stats(shadow_stats("v1", compared=100, kept=80, kept_agreed=78))  # pending: nothing written
    refusal = c.on_stats(shadow_stats("v1", kept_agreed=190)).refusals
    assert len(refusal) == 1 and refusal[0].mode == "shadow" and "agreement" in refusal[0].reason
    assert not c.on_stats(shadow_stats("v1", compared=310, kept=248, kept_agreed=196))  # same failure: noted
    assert c.current("intent").mode == "shadow"


def test_stats_of_another_version_than_the_one_in_shadow_decide_nothing():
    c = Controller(SETTINGS)
    c.on_model(registered("v1"))
    assert not c.on_stats(shadow_stats("v0"))


# --- the watch -------------------------------------------------------------------------------

def test_a_climbing_fallback_rate_demotes_once_after_the_minimum_window_and_then_collects():
    c = Controller(SETTINGS)
    small = cut_over(c)
    for i in range(SETTINGS.min_window - 1):  # all fallbacks, but the window is not full enough yet
        assert not c.on_outcome(outcome(i, fallback=True, confidence=0.3))
    effects = c.on_outcome(outcome(999, fallback=True, confidence=0.3))
    (demotion,) = effects.decisions
    assert not effects.retrains  # the retrain waits for data captured since the drift (graduation.py)
    assert (demotion.mode, demotion.model_version, demotion.threshold) == ("shadow", "v1", 0.62)
    assert demotion.reason.startswith("drift: fallback rate 1.000 over the last 50 small-mode requests")
    assert "a retrain follows once enough data since the drift is captured" in demotion.reason
    ev = evidence_of(demotion)
    assert ev["gate"] == "watch" and ev["verdict"] == "demoted" and ev["episode"] == small.decision_id
    assert ev["confidence"]["n"] == 50
    assert c.graduation("intent").state == "collecting" and c.needs_look("intent")
    assert c.drift_since("intent") == demotion.ts
    for i in range(1000, 1100):  # the episode is over: no second demotion or request
        assert not c.on_outcome(outcome(i, fallback=True, confidence=0.3))


def test_a_fallback_rate_near_the_prediction_is_no_breach():
    c = Controller(SETTINGS)
    cut_over(c)
    for i in range(300):  # predicted 0.2; observed 0.25 is below the 0.30 breach level
        assert not c.on_outcome(outcome(i, fallback=i % 4 == 0, confidence=0.5 if i % 4 == 0 else 0.9))


def test_a_cutover_promises_the_live_fallback_rate_the_shadow_gate_passed_when_it_is_higher():
    c = Controller(SETTINGS)
    c.on_model(registered("v1"))  # predicted 0.2 from the holdout: the watch's breach level would be 0.30
    small = read_back(c, c.on_stats(shadow_stats("v1", kept=213, kept_agreed=206)).decisions[0])  # live 0.29
    assert small.mode == "small" and small.predicted_fallback_rate == pytest.approx(0.29)
    assert evidence_of(small)["promised_fallback_rate"]["predicted_fallback_rate"] == 0.2
    for i in range(300):  # 0.32 live after the cutover: above 0.30, but no change from what the shadow saw
        assert not c.on_outcome(outcome(i, fallback=i % 25 < 8, confidence=0.5 if i % 25 < 8 else 0.9))
    demoted = None
    for i in range(300, 300 + SETTINGS.window_size):  # a real change still breaches
        demoted = c.on_outcome(outcome(i, fallback=True, confidence=0.3)) or demoted
    assert demoted and demoted.decisions[0].mode == "shadow"
    assert "breach at 0.435" in demoted.decisions[0].reason


def test_a_live_fallback_rate_below_the_prediction_keeps_the_prediction():
    c = Controller(SETTINGS)
    c.on_model(registered("v1"))
    small = c.on_stats(shadow_stats("v1", kept=270, kept_agreed=262)).decisions[0]  # live 0.10 < 0.2
    assert small.predicted_fallback_rate == 0.2 and "promised_fallback_rate" not in evidence_of(small)


def test_a_new_cutover_starts_a_new_episode_that_can_breach_again():
    c = Controller(SETTINGS)
    cut_over(c)
    for i in range(SETTINGS.min_window):
        effects = c.on_outcome(outcome(i, fallback=True, confidence=0.3))
    read_back(c, effects.decisions[0])
    again = read_back(c, override("intent", "small", "back after the incident", "ana", c.current("intent"),
                                  model_version="v1", threshold=0.62, model=c.models[("intent", "v1")]))
    demoted = None
    for i in range(SETTINGS.min_window):
        demoted = c.on_outcome(outcome(100 + i, fallback=True, confidence=0.3, ts=again.ts + timedelta(seconds=1)))
    assert demoted.decisions and evidence_of(demoted.decisions[0])["episode"] == again.decision_id


def test_outcomes_from_before_the_cutover_or_other_fallbacks_do_not_count():
    c = Controller(SETTINGS)
    small = cut_over(c)
    for i in range(200):
        assert not c.on_outcome(outcome(i, fallback=True, ts=small.ts - timedelta(minutes=5)))
        assert not c.on_outcome(outcome(1000 + i, fallback=True, reason="triton_error"))
        assert not c.on_outcome(outcome(2000 + i, fallback=True, version="v0"))
    assert len(c.windows["intent"].outcomes) == 0


def test_a_task_not_in_small_mode_is_not_watched():
    c = Controller(SETTINGS)
    c.on_model(registered("v1"))
    for i in range(200):
        assert not c.on_outcome(outcome(i, fallback=True))


def test_sampled_answers_that_disagree_with_the_frontier_breach():
    c = Controller(SETTINGS)
    cut_over(c)
    effects = None
    for i in range(SETTINGS.min_sampled):
        o = outcome(i, sampled=True, output="card_arrival")
        assert not c.on_outcome(o)
        call = CapturedCall(call_id=o.call_id, task="intent", input="where is my card", output_raw="lost_card",
                            output="lost_card" if i % 2 else "card_arrival", latency_ms=500, source="sampled")
        effects = c.on_captured(call)
    assert effects.decisions and "sampled agreement with the frontier 0.500 on 20" in effects.decisions[0].reason


def test_a_frontier_answer_may_arrive_before_the_small_one():
    c = Controller(SETTINGS)
    cut_over(c)
    call = CapturedCall(call_id="c1", task="intent", input="x", output_raw="a", output="a", latency_ms=5,
                        source="sampled")
    assert not c.on_captured(call)
    c.on_outcome(outcome(1, sampled=True, output="a"))
    assert list(c.windows["intent"].sampled)[0][1] is True


def test_a_falling_confidence_distribution_breaches():
    settings = ControllerSettings(min_window=50, window_size=100, breach_ratio=50, breach_min_increase=0.9)
    c = Controller(settings)
    cut_over(c)
    for i in range(50):
        assert not c.on_outcome(outcome(i, confidence=0.95))
    effects = None
    for i in range(50, 150):
        effects = c.on_outcome(outcome(i, confidence=0.70))
        if effects:
            break
    assert effects.decisions and "confidence fell" in effects.decisions[0].reason


def test_a_drift_demotion_cannot_flap_back_on_the_old_cumulative_statistics():
    c = Controller(SETTINGS)
    cut_over(c)
    for i in range(SETTINGS.min_window):
        effects = c.on_outcome(outcome(i, fallback=True, confidence=0.3))
    read_back(c, effects.decisions[0])
    assert not c.on_stats(shadow_stats("v1"))  # the same totals as at cutover: nothing new to judge
    bad = c.on_stats(shadow_stats("v1", compared=600, kept=300, kept_agreed=290, agreed=560))
    assert not bad.decisions and "fallback" in bad.refusals[0].reason


def test_a_retrained_model_after_drift_is_gated_without_comparing_to_the_demoted_one():
    c = Controller(SETTINGS)
    cut_over(c, "v1", small_accuracy=0.95)
    for i in range(SETTINGS.min_window):
        effects = c.on_outcome(outcome(i, fallback=True, confidence=0.3))
    read_back(c, effects.decisions[0])
    retrained = c.on_model(registered("v2", small_accuracy=0.90)).decisions[0]
    assert (retrained.mode, retrained.model_version) == ("shadow", "v2")


# --- the routing topic as the truth ------------------------------------------------------------

def test_own_decisions_read_back_late_do_not_roll_the_state_back():
    c = Controller(SETTINGS)
    shadow = c.on_model(registered("v1")).decisions[0]
    small = c.on_stats(shadow_stats("v1")).decisions[0]
    c.read_decision(shadow)
    assert c.current("intent") == small
    person = override("intent", "frontier", "incident 42", "ana", c.current("intent"))
    c.read_decision(person)  # a person's decision lands before ours is read back
    assert c.current("intent") == small
    c.read_decision(small)  # the topic's order: ours came last, so ours is the truth
    assert c.current("intent") == small


# --- overrides -----------------------------------------------------------------------------

def test_override_refusals():
    model = registered("v1")
    with pytest.raises(OverrideRefused, match="a reason is required"):
        override("intent", "frontier", "  ", "ana", None)
    with pytest.raises(OverrideRefused, match="needs both --model and --threshold"):
        override("intent", "small", "go", "ana", None, model_version="v1", model=model)
    with pytest.raises(OverrideRefused, match="needs both --model and --threshold"):
        override("intent", "small", "go", "ana", None, threshold=0.5, model=model)
    with pytest.raises(OverrideRefused, match="out of range"):
        override("intent", "small", "go", "ana", None, model_version="v1", threshold=1.5, model=model)
    with pytest.raises(OverrideRefused, match="not registered"):
        override("intent", "small", "go", "ana", None, model_version="v9", threshold=0.5, model=None)
    with pytest.raises(OverrideRefused, match="there is none to shadow"):
        override("intent", "shadow", "go", "ana", None)


def test_override_records_the_person_and_what_it_replaced():
    model = registered("v1")
    d = override("intent", "small", "  cut over for the launch ", "ana", None, model_version="v1", threshold=0.7,
                 model=model)
    assert (d.mode, d.model_version, d.threshold, d.decided_by) == ("small", "v1", 0.7, "ana")
    assert d.reason == "cut over for the launch" and d.triton_model == "intent-v1"
    assert d.predicted_fallback_rate is None  # not the calibrated threshold: no prediction holds
    assert evidence_of(d)["gate"] == "override" and evidence_of(d)["previous"] is None
    same = override("intent", "small", "go", "ana", d, model_version="v1", threshold=0.62, model=model)
    assert same.predicted_fallback_rate == 0.2 and evidence_of(same)["previous"]["threshold"] == 0.7
    shadow = override("intent", "shadow", "look again", "ana", same, model=model, stats=shadow_stats("v1"))
    assert shadow.model_version == "v1" and evidence_of(shadow)["shadow_baseline"]["compared"] == 300


def test_route_set_without_a_reason_is_refused_before_touching_kafka(monkeypatch):
    from services.cli import app

    monkeypatch.setenv("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens there
    result = CliRunner().invoke(app, ["route", "set", "intent", "--mode", "frontier"])
    assert result.exit_code == 2 and "a reason is required" in result.output


# --- status ----------------------------------------------------------------------------------

def test_status_rows_show_mode_fallback_rate_and_the_last_decision():
    c = Controller(SETTINGS)
    small = cut_over(c)
    refusal = c.on_model(registered("v2", small_only=5, frontier_only=60)).refusals[0]
    outcomes = [outcome(i, fallback=i < 3) for i in range(10)] + [outcome(50, fallback=True, reason="triton_error")]
    assert observed_fallback(outcomes, "intent", "low_confidence") == (0.3, 10)
    rows = status_rows(c, [small, refusal], outcomes)
    assert len(rows) == 1
    row = rows[0]
    assert (row["mode"], row["model_version"], row["threshold"]) == ("small", "v1", 0.62)
    assert row["fallback_rate"] == 0.3 and row["predicted_fallback_rate"] == 0.2
    assert row["last_decision"]["verdict"] == "refused" and "v2" in row["last_decision"]["reason"]
    json.dumps(rows)


# --- replicas: ownership by the task's outcome partition, news acted on by the owner only ------------

def test_task_partition_is_the_kafka_default_partitioner():
    from aiokafka.partitioner import DefaultPartitioner

    from services.controller.ownership import task_partition

    for task in ("intent", "banking77-intent", "hwu64-intent", "restaurant8k-booking", "x"):
        assert task_partition(task, 12) == DefaultPartitioner()(task.encode(), list(range(12)), list(range(12)))
        assert 0 <= task_partition(task, 3) < 3


def test_a_replica_reads_news_of_tasks_it_does_not_own_as_state():
    from services.common import catalog
    from services.common.codec import Codec
    from services.controller.store import apply_record

    other, owner = Controller(SETTINGS), Controller(SETTINGS)
    model = registered("v1")
    assert not apply_record(other, catalog.MODELS, model, lambda task: False, Codec(), "")
    effects = apply_record(owner, catalog.MODELS, model, lambda task: True, Codec(), "")
    assert [d.mode for d in effects.decisions] == ["shadow"]
    for replica in (other, owner):  # the decision read back from the routing topic by both
        apply_record(replica, catalog.ROUTING_DECISIONS, effects.decisions[0], lambda task: False, Codec(), "")
    assert other.current("intent").mode == "shadow" and other.latest_model("intent") == model
    # the other replica takes the task over: the verdict is known, nothing is decided twice
    assert not other.resume("intent").decisions


def test_resume_gates_what_arrived_while_no_replica_owned_the_task():
    controller = Controller(SETTINGS)
    controller.read_model(registered("v1"))
    effects = controller.resume("intent")
    assert [d.mode for d in effects.decisions] == ["shadow"]
    read_back(controller, effects.decisions[0])
    controller.read_stats(shadow_stats("v1"))
    effects = controller.resume("intent")
    assert [d.mode for d in effects.decisions] == ["small"]
    read_back(controller, effects.decisions[0])
    assert not controller.resume("intent")  # nothing owed any more
