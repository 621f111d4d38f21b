"""Narrow output by the task's kind: an extraction task's JSON answers are judged by their structure
(conforming share, per-field statistics), a freeform task never graduates, classification is unchanged."""
from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from services.common.contracts import CapturedCall
from services.common.settings import REPO_ROOT
from services.common.tasks import TaskSpec, load_tasks, parse_fields
from services.profiler.logic import (Costs, Profile, Thresholds, assess, measure, profile_calls, score_traits,
                                     summarise_call)
from services.profiler.settings import ProfilerSettings

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
TASK = "restaurant8k-booking"
NAMES = ["Ann", "Bob", "Carla", "Dev", "Emma", "Femi", "Gus", "Hana"]


@pytest.fixture(scope="module")
def specs() -> dict[str, TaskSpec]:
    return load_tasks(REPO_ROOT / "config" / "tasks.yaml").tasks


def booking(rng: random.Random, k: int) -> dict:
    """A booking's fields, decided by the input number `k` (so a re-asked input gets the same answer)."""
    r = random.Random(k)
    return {"people": str(r.randint(1, 12)) if r.random() < 0.7 else None,
            "time": f"{r.randint(5, 10)}:{r.choice(['00', '15', '30', '45'])} pm" if r.random() < 0.6 else None,
            "date": f"{r.choice(['Monday', 'Friday', 'tomorrow', 'next week', 'the 3rd', 'June 12'])}"
                    if r.random() < 0.5 else None,
            "first_name": r.choice(NAMES) if r.random() < 0.3 else None,
            "last_name": f"Smith{k % 97}" if r.random() < 0.2 else None}


def extraction_calls(n: int, spec: TaskSpec, *, broken: float = 0.0, hours: float = 2.0, seed: int = 8,
                     task: str = TASK) -> list[CapturedCall]:
    """`n` captured answers of an extraction task, as the router captures them (the spec's canonical
    JSON); a `broken` share are answers that failed to parse (not JSON, or fields outside the spec)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(max(1, n * 2 // 3))  # some inputs repeat
        fields = booking(rng, k)
        raw = json.dumps({key: v for key, v in fields.items() if v is not None})
        ok, output = True, parse_fields(raw, spec.fields)
        if rng.random() < broken:
            raw = rng.choice(["Sure! The booking is for 4 people.", json.dumps({**fields, "restaurant": "Luigi's"})])
            ok, output = False, None
        out.append(CapturedCall(call_id=f"e{i}", task=task, ts=T0 + timedelta(hours=hours * i / n),
                                input=f"Book a table, request {k}", output_raw=raw, output=output, parse_ok=ok,
                                latency_ms=rng.lognormvariate(math.log(700), 0.3), prompt_tokens=450,
                                completion_tokens=40, cost_usd=0.00153))
    return out


def narrow_trait(candidate):
    return next(t for t in candidate.traits if t.name == "narrow_stable_output")


def test_conforming_json_answers_are_narrow_with_the_reason(specs):
    spec = specs[TASK]
    profile = profile_calls(extraction_calls(3000, spec))[TASK]
    c = assess(profile, Thresholds(), Costs(), spec=spec)
    m, narrow = c.measures, narrow_trait(c)
    assert m.kind == "extraction" and m.known_fields == ("people", "time", "date", "first_name", "last_name")
    assert m.conform_rate == 1.0 and m.distinct_outputs > 1000  # every object is distinct, yet narrow
    assert narrow.passed and narrow.score == 1.0
    assert narrow.reason.startswith("JSON with 5 known fields, 100.0% of answers conform")
    assert f"stability 100% on {m.repeated_inputs} repeated inputs" in narrow.reason
    assert "people 7" in narrow.reason and "filled" in narrow.reason
    stats = m.field_stats
    assert set(stats) == set(m.known_fields)
    assert stats["people"]["fill_rate"] == pytest.approx(0.7, abs=0.05)
    assert stats["people"]["distinct_values"] == 12 and not stats["people"]["distinct_lower_bound"]
    assert stats["last_name"]["fill_rate"] == pytest.approx(0.2, abs=0.05)
    assert c.recommendation == "graduate" and c.failing == ()


def test_without_the_spec_the_same_answers_are_judged_by_value(specs):
    profile = profile_calls(extraction_calls(3000, specs[TASK]))[TASK]
    c = assess(profile, Thresholds(), Costs())
    assert c.measures.kind is None and c.measures.conform_rate is None
    assert not narrow_trait(c).passed and "distinct outputs" in narrow_trait(c).reason


def test_many_non_conforming_answers_are_not_narrow(specs):
    spec = specs[TASK]
    c = assess(profile_calls(extraction_calls(3000, spec, broken=0.3))[TASK], Thresholds(), Costs(), spec=spec)
    narrow = narrow_trait(c)
    assert c.measures.conform_rate == pytest.approx(0.7, abs=0.03)
    assert not narrow.passed and narrow.score == pytest.approx(c.measures.conform_rate / 0.95, abs=1e-3)
    assert narrow.reason.startswith(f"only {c.measures.conform_rate:.1%} of answers")
    assert "of answers are a JSON object with the 5 known fields" in narrow.reason
    assert "needs ≥ 95%" in narrow.reason
    assert c.recommendation == "stay on frontier" and "narrow_stable_output" in c.failing


def test_objects_with_fields_outside_the_spec_do_not_conform(specs):
    """The capture parsed them under an older spec: the profiler checks the shape against the current one."""
    spec = specs[TASK]
    calls = extraction_calls(200, spec)
    extra = [c.model_copy(update={"call_id": f"x{i}", "output": json.dumps({"people": "2", "table": "window"})})
             for i, c in enumerate(calls[:100])]
    m = measure(profile_calls(calls + extra)[TASK], spec=spec)
    assert m.conform_rate == pytest.approx(200 / 300, abs=1e-3)
    assert m.field_stats["people"]["distinct_values"] <= 12  # per-field statistics of conforming answers' fields


def test_stability_compares_the_parsed_objects(specs):
    spec = specs[TASK]
    base = dict(task=TASK, ts=T0, latency_ms=700.0, cost_usd=0.0015, output_raw="{}")
    same = [CapturedCall(call_id=f"s{i}", input=f"Table for {i}", output=json.dumps({"people": str(i), "time": None},
                                                                                    indent=i % 2 or None), **base)
            for i in range(30)] + [CapturedCall(call_id=f"t{i}", input=f"  table FOR {i} ",
                                                output=json.dumps({"time": None, "people": str(i)}), **base)
                                   for i in range(30)]
    m = measure(profile_calls(same)[TASK], spec=spec)
    assert m.repeated_inputs == 30 and m.stability == 1.0  # spacing and key order do not make a different answer
    differ = same[:30] + [c.model_copy(update={"output": json.dumps({"people": "99"})}) for c in same[30:]]
    m = measure(profile_calls(differ)[TASK], spec=spec)
    assert m.stability == 0.0
    narrow = next(t for t in score_traits(m, Thresholds()) if t.name == "narrow_stable_output")
    assert not narrow.passed and "same input answered differently" in narrow.reason


def test_a_spec_with_too_many_fields_is_not_narrow(specs):
    spec = specs[TASK]
    m = measure(profile_calls(extraction_calls(500, spec))[TASK], spec=spec)
    narrow = next(t for t in score_traits(m, Thresholds(max_known_fields=4)) if t.name == "narrow_stable_output")
    assert not narrow.passed and "5 known fields (> 4)" in narrow.reason


def test_field_statistics_merge_and_survive_json(specs):
    spec = specs[TASK]
    calls = extraction_calls(1000, spec)
    whole = profile_calls(calls)[TASK]
    a, b = profile_calls(calls[:400])[TASK], profile_calls(calls[400:])[TASK]
    merged = Profile.from_json(json.loads(json.dumps(a.merge(b).to_json())))
    assert measure(merged, spec=spec) == measure(whole, spec=spec)
    assert merged.field_filled == whole.field_filled and merged.shapes == whole.shapes


def test_per_field_values_are_capped_and_reported_as_lower_bound(specs):
    spec = specs[TASK]
    p = Profile(TASK, field_value_cap=5)
    for c in extraction_calls(300, spec):
        p.add_call(c)
    stats = measure(p, spec=spec).field_stats["time"]
    assert stats["distinct_lower_bound"] and stats["distinct_values"] > 5


def test_old_records_without_field_values_still_count(specs):
    spec = specs[TASK]
    p = Profile(TASK)
    for c in extraction_calls(50, spec):
        p.add_call_summary(summarise_call(c)[:5])
    m = measure(p, spec=spec)
    assert m.calls == 50 and m.conform_rate == 0.0  # no shape recorded: not judged conforming


def test_labels_keep_the_five_element_record():
    call = CapturedCall(call_id="c", task="t", ts=T0, input="q", output_raw="card_arrival", output="card_arrival",
                        latency_ms=100.0)
    assert len(summarise_call(call)) == 5
    assert len(summarise_call(call.model_copy(update={"output": "[1, 2]"}))) == 5


def freeform(n: int, repeating: bool) -> list[CapturedCall]:
    text = (lambda i: f"Thanks, reply {i % 3}") if repeating else (lambda i: f"Dear customer, about order {i}: sorry")
    return [CapturedCall(call_id=f"f{i}", task="draft-reply", ts=T0 + timedelta(hours=2 * i / n), input=f"mail {i}",
                         output_raw=text(i), output=text(i), latency_ms=2500.0, cost_usd=0.003) for i in range(n)]


def test_freeform_stays_on_the_frontier_even_when_its_answers_repeat(specs):
    spec = specs["draft-reply"]
    for repeating in (False, True):
        c = assess(profile_calls(freeform(3000, repeating))["draft-reply"], Thresholds(), Costs(), spec=spec)
        narrow = narrow_trait(c)
        assert c.recommendation == "stay on frontier" and not narrow.passed
        assert "free-form output" in narrow.reason
    c = assess(profile_calls(freeform(3000, False))["draft-reply"], Thresholds(), Costs(), spec=spec)
    assert "repeat an output" in narrow_trait(c).reason


def test_classification_is_judged_as_before(specs):
    spec = specs["banking77-intent"]
    rng = random.Random(2)
    calls = [CapturedCall(call_id=f"b{i}", task=spec.name, ts=T0 + timedelta(hours=2 * i / 3000), input=f"Q {i % 2000}",
                          output_raw=spec.labels[i % 2000 % 40], output=spec.labels[i % 2000 % 40],
                          latency_ms=rng.uniform(400, 900), cost_usd=0.00105) for i in range(3000)]
    p = profile_calls(calls)[spec.name]
    with_spec, without = assess(p, Thresholds(), Costs(), spec=spec), assess(p, Thresholds(), Costs())
    assert with_spec.traits == without.traits and with_spec.recommendation == without.recommendation == "graduate"
    assert replace(with_spec.measures, kind=None) == without.measures
    assert with_spec.measures.conform_rate is None and with_spec.measures.field_stats == {}


def test_extraction_thresholds_come_from_settings(monkeypatch):
    monkeypatch.setenv("GRADUATE_PROFILER_MIN_CONFORM_RATE", "0.99")
    monkeypatch.setenv("GRADUATE_PROFILER_MAX_KNOWN_FIELDS", "12")
    t = ProfilerSettings().thresholds()
    assert t.min_conform_rate == 0.99 and t.max_known_fields == 12
    assert Thresholds().min_conform_rate == 0.95
