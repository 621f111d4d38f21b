"""The shadow's decisions: which calls run on which model, request planning, the result."""
from __future__ import annotations

import itertools

import pytest

from services.common.contracts import CapturedCall, ModelRegistered, PairedCounts, RoutingDecision
from services.common.triton import SmallAnswer
from services.shadow.logic import (
    RoutingState, ShadowPolicy, ShadowTarget, backoff_delays, plan_requests, sampled_in, select_target,
    shadow_result, triton_version,
)


def call(call_id="c1", task="intent", source="frontier", output="card_arrival", parse_ok=True) -> CapturedCall:
    return CapturedCall(call_id=call_id, task=task, input=f"text of {call_id}", output_raw=output or "??",
                        output=output, parse_ok=parse_ok, latency_ms=500.0, source=source)


def decision(mode="shadow", version="3", triton_model="intent-model", task="intent", threshold=None):
    return RoutingDecision(task=task, mode=mode, model_version=version, triton_model=triton_model,
                           threshold=threshold, reason="test", decided_by="test")


def registered(task="intent", version="3", triton_model="intent", threshold=0.7) -> ModelRegistered:
    return ModelRegistered(task=task, version=version, base_model="m", snapshot_id="s", holdout_size=10,
                           gold_reviewed=0, gold_frontier=10, small_accuracy=0.9, frontier_accuracy=0.9,
                           agreement=0.9, paired=PairedCounts(), threshold=threshold, artifact_uri="x",
                           triton_model=triton_model)


def state_with(*decisions, models=()) -> RoutingState:
    state = RoutingState()
    for d in decisions:
        state.apply_decision(d)
    for m in models:
        state.apply_model(m)
    return state


def test_shadow_mode_call_runs_on_the_decisions_model():
    target = select_target(call(), state_with(decision()), ShadowPolicy())
    assert target == ShadowTarget("intent", "3", "intent-model", "3")


@pytest.mark.parametrize("mode", ["frontier", None])
def test_frontier_mode_or_no_decision_is_not_shadowed(mode):
    state = state_with(decision(mode=mode)) if mode else RoutingState()
    assert select_target(call(), state, ShadowPolicy()) is None


def test_unparsed_frontier_answer_is_not_shadowed():
    state = state_with(decision())
    assert select_target(call(parse_ok=False, output=None), state, ShadowPolicy()) is None
    assert select_target(call(output=None), state, ShadowPolicy()) is None


def test_decision_without_model_version_is_not_shadowed():
    assert select_target(call(), state_with(decision(version=None)), ShadowPolicy()) is None


def test_latest_decision_wins():
    state = state_with(decision(version="3"), decision(version="4", triton_model="m4"))
    assert select_target(call(), state, ShadowPolicy()).model_version == "4"
    state.apply_decision(decision(mode="frontier"))
    assert select_target(call(), state, ShadowPolicy()) is None


def test_small_mode_shadows_only_the_sampled_sources():
    state = state_with(decision(mode="small", threshold=0.8))
    policy = ShadowPolicy()
    assert select_target(call(source="sampled"), state, policy) is not None
    assert select_target(call(source="fallback"), state, policy) is None
    assert select_target(call(source="frontier"), state, policy) is None
    wider = ShadowPolicy(small_mode_sources=frozenset({"sampled", "fallback"}))
    assert select_target(call(source="fallback"), state, wider) is not None


def test_small_mode_sample_rate_is_stable_per_call():
    state = state_with(decision(mode="small"))
    policy = ShadowPolicy(small_mode_sample_rate=0.25)
    picked = [select_target(call(f"c{i}", source="sampled"), state, policy) is not None for i in range(2000)]
    again = [select_target(call(f"c{i}", source="sampled"), state, policy) is not None for i in range(2000)]
    assert picked == again
    assert 0.2 < sum(picked) / len(picked) < 0.3


def test_sampled_in_edges():
    assert sampled_in("x", 1.0) and not sampled_in("x", 0.0)
    with pytest.raises(ValueError):
        ShadowPolicy(small_mode_sample_rate=1.5)


def test_triton_model_comes_from_the_registration_when_the_decision_lacks_it():
    policy = ShadowPolicy()
    bare = decision(triton_model=None)
    assert select_target(call(), state_with(bare), policy) is None  # registration not read yet
    target = select_target(call(), state_with(bare, models=[registered()]), policy)
    assert target == ShadowTarget("intent", "3", "intent", "3")


def test_threshold_from_decision_else_registration():
    state = state_with(decision(threshold=0.9), models=[registered(threshold=0.7), registered(version="2", threshold=0.6)])
    assert state.threshold_for("intent", "3") == 0.9
    assert state.threshold_for("intent", "2") == 0.6
    assert state.threshold_for("intent", "9") is None
    assert state_with(models=[registered(threshold=0.7)]).threshold_for("intent", "3") == 0.7


def test_triton_version_numeric_or_latest():
    assert triton_version("3") == "3"
    assert triton_version("2026-11-01-abc") is None


def test_plan_groups_by_target_and_cuts_batches():
    a = ShadowTarget("t1", "1", "m1", "1")
    b = ShadowTarget("t2", "1", "m2", "1")
    plan = plan_requests([a, None, b, a, a, b, None, a], max_batch=3)
    assert plan == [(a, [0, 3, 4]), (a, [7]), (b, [2, 5])]
    assert plan_requests([None, None], 4) == []
    with pytest.raises(ValueError):
        plan_requests([a], 0)


def test_plan_covers_every_targeted_position_once():
    a, b = ShadowTarget("t", "1", "m", "1"), ShadowTarget("t", "2", "m", "2")
    targets = [(a, b, None)[i % 3] for i in range(100)]
    positions = sorted(itertools.chain.from_iterable(p for _, p in plan_requests(targets, 7)))
    assert positions == [i for i in range(100) if targets[i] is not None]


def test_shadow_result_carries_the_frontier_answer_and_input():
    c = call(source="sampled")
    r = shadow_result(c, ShadowTarget("intent", "3", "m", "3"), SmallAnswer("card_delivery_estimate", 0.42), 12.5)
    assert (r.call_id, r.task, r.model_version, r.output, r.confidence, r.latency_ms) == \
        ("c1", "intent", "3", "card_delivery_estimate", 0.42, 12.5)
    assert (r.input, r.frontier_output, r.source) == (c.input, "card_arrival", "sampled")


def test_backoff_grows_and_caps():
    delays = list(itertools.islice(backoff_delays(0.5, 2.0, 3.0), 6))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


# --- extraction: field names for FIELD_CONFIDENCE, and the result carries it -------------------

BOOKING_FIELDS = ("people", "time", "date", "first_name", "last_name")


def test_an_extraction_model_is_asked_with_its_registered_fields():
    import json

    model = registered(task="booking", version="2", triton_model="booking-model").model_copy(
        update={"labels": list(BOOKING_FIELDS), "metrics_json": json.dumps({"kind": "extraction"})})
    state = state_with(decision(task="booking", version="2", triton_model="booking-model"), models=[model])
    target = select_target(call(task="booking", output='{"people": "2"}'), state, ShadowPolicy())
    assert target.fields == BOOKING_FIELDS


def test_field_names_fall_back_to_the_task_spec_and_classification_has_none():
    state = state_with(decision(task="booking", version="2"), decision())
    state.task_fields = {"booking": BOOKING_FIELDS[:2]}
    assert select_target(call(task="booking"), state, ShadowPolicy()).fields == ("people", "time")
    assert select_target(call(), state, ShadowPolicy()).fields == ()
    classifier = registered(version="3", triton_model="intent-model").model_copy(update={"labels": ["a", "b"]})
    state.apply_model(classifier)  # a classification registration: labels are not fields
    assert select_target(call(), state, ShadowPolicy()).fields == ()


def test_shadow_result_carries_the_field_confidences():
    c = call(task="booking", output='{"people": "3"}')
    answer = SmallAnswer('{"people": "2"}', 0.4, {"people": 0.4, "time": 0.97})
    r = shadow_result(c, ShadowTarget("booking", "2", "m", "2", ("people", "time")), answer, 3.0)
    assert r.field_confidence == {"people": 0.4, "time": 0.97} and r.confidence == 0.4
    assert shadow_result(call(), ShadowTarget("intent", "3", "m", "3"), SmallAnswer("a", 0.9), 1.0).field_confidence is None


def test_answers_from_names_the_field_confidences_only_when_the_names_fit():
    import numpy as np

    from services.common.triton import answers_from

    labels = ['{"people": "2"}', "{}"]
    conf = (0.4, 0.9)
    per_field = np.array([0.4, 0.97, 0.9, 0.95], dtype=np.float32)  # [n, n_fields] as Triton sends it, flat
    a, b = answers_from(labels, conf, per_field, ("people", "time"))
    assert a.field_confidence == pytest.approx({"people": 0.4, "time": 0.97}) and b.label == "{}"
    assert all(x.field_confidence is None for x in answers_from(labels, conf, per_field, ("people",)))
    assert all(x.field_confidence is None for x in answers_from(labels, conf))


def test_a_bytes_tensor_round_trips_and_a_cut_one_is_refused():
    from services.common.triton import decode_texts, encode_texts

    texts = ["my card", "", "Zahlung für Café ☕"]
    raw = encode_texts(texts)
    assert raw[:4] == (7).to_bytes(4, "little") and decode_texts(raw) == texts
    with pytest.raises(ValueError):
        decode_texts(raw[:-1])


async def test_the_runner_passes_the_fields_to_an_extraction_model_only():
    from services.shadow.runner import ShadowRunner

    asked = []

    class FakeTriton:
        async def classify(self, model, version, texts, fields=None):
            asked.append((model, fields))
            per_field = {f: 0.5 for f in fields} if fields else None
            return [SmallAnswer("x", 0.5, per_field) for _ in texts], 1.0

    state = state_with(decision(task="booking", version="2", triton_model="booking-model"), decision())
    state.task_fields = {"booking": BOOKING_FIELDS}
    runner = ShadowRunner(FakeTriton(), state, ShadowPolicy())
    results, failed = await runner.shadow([call("b1", task="booking"), call("i1")])
    assert not failed and sorted(asked, key=str) == sorted([("booking-model", BOOKING_FIELDS), ("intent-model", None)],
                                                          key=str)
    by_id = {r.call_id: r for r in results}
    assert by_id["b1"].field_confidence == {f: 0.5 for f in BOOKING_FIELDS} and by_id["i1"].field_confidence is None
