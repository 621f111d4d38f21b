"""Candidate discovery as pure functions: measures, the four traits, the honest saving."""
from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from services.common.contracts import CapturedCall, RouterOutcome
from services.profiler.logic import (Costs, Profile, Thresholds, assess, entropy_bits, fold_call_summaries,
                                     fold_outcomes, measure, merge_profiles, percentile, price, profile_calls,
                                     profiles_from_json, profiles_json, rank, latency_bucket, summarise_call)
from services.profiler.settings import ProfilerSettings

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
LABELS = [f"intent_{i}" for i in range(20)]


def narrow_calls(n: int, hours: float = 2.0, task: str = "narrow", seed: int = 1) -> list[CapturedCall]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(max(1, n * 2 // 3))  # some inputs repeat
        out.append(CapturedCall(call_id=f"{task}{i}", task=task, ts=T0 + timedelta(hours=hours * i / n),
                                input=f"Question {k}", output_raw=LABELS[k % 20], output=LABELS[k % 20],
                                latency_ms=rng.lognormvariate(math.log(600), 0.3), prompt_tokens=400,
                                completion_tokens=5, cost_usd=0.00105))
    return out


def freeform_calls(n: int, hours: float = 48.0) -> list[CapturedCall]:
    return [CapturedCall(call_id=f"f{i}", task="free", ts=T0 + timedelta(hours=hours * i / n),
                         input=f"Dear team, email {i}", output_raw=f"Thanks for your note number {i}, we will look",
                         output=f"Thanks for your note number {i}, we will look", latency_ms=2500.0,
                         prompt_tokens=300, completion_tokens=150, cost_usd=0.00225) for i in range(n)]


def test_percentiles_from_log_buckets_are_close():
    rng = random.Random(3)
    values = [rng.uniform(50, 2000) for _ in range(5000)]
    p = Profile("x")
    for v in values:
        p.latency[str(latency_bucket(v))] = p.latency.get(str(latency_bucket(v)), 0) + 1
    exact = sorted(values)
    assert percentile(p.latency, 0.5) == pytest.approx(exact[2500], rel=0.04)
    assert percentile(p.latency, 0.95) == pytest.approx(exact[4750], rel=0.04)
    assert percentile({}, 0.5) is None


def test_entropy():
    assert entropy_bits([5, 5]) == pytest.approx(1.0)
    assert entropy_bits([1] * 64) == pytest.approx(6.0)
    assert entropy_bits([]) == 0.0


def test_measures_of_a_narrow_task():
    m = measure(profile_calls(narrow_calls(3000))["narrow"])
    assert m.calls == 3000 and m.distinct_outputs == 20 and not m.distinct_lower_bound
    assert m.calls_per_day == pytest.approx(36000, rel=0.01)  # 3000 calls in 2 h
    assert m.stability == 1.0 and m.repeated_inputs > 100
    assert m.repeat_share == 1.0 and m.entropy_bits == pytest.approx(math.log2(20), abs=0.05)
    assert 500 < m.latency_p50_ms < 700 and m.latency_p95_ms > m.latency_p50_ms
    assert m.cost_per_call_usd == pytest.approx(0.00105)
    assert m.usable_examples == len({c.input for c in narrow_calls(3000)})
    assert m.parse_failure_rate == 0.0


def test_calls_per_day_is_windowed_and_short_spans_are_bounded():
    old = narrow_calls(100, hours=1)
    recent = [c.model_copy(update={"ts": c.ts + timedelta(days=30), "call_id": "r" + c.call_id})
              for c in narrow_calls(700, hours=24 * 7 - 1)]
    m = measure(profile_calls(old + recent)["narrow"], window_days=7)
    assert m.calls_per_day == pytest.approx(100, rel=0.05)  # the month-old calls are outside the window
    burst = narrow_calls(10, hours=0.01)
    assert measure(profile_calls(burst)["narrow"], min_span_hours=1.0).calls_per_day == pytest.approx(240)


def test_stability_counts_inputs_answered_differently():
    calls = [CapturedCall(call_id=f"c{i}", task="t", ts=T0, input=f"Q{i // 2}", output_raw="a",
                          output="a" if i % 4 != 3 else "b", latency_ms=10.0) for i in range(40)]
    m = measure(profile_calls(calls)["t"])
    assert m.repeated_inputs == 20 and m.stability == 0.5


def test_merging_partition_profiles_equals_one_profile():
    calls = narrow_calls(1200)
    whole = profile_calls(calls)["narrow"]
    parts = [profile_calls(calls[i::5])["narrow"] for i in range(5)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert measure(merged) == measure(whole)
    assert Profile.from_json(merged.to_json()) == merged


def test_partition_states_fold_and_merge_into_the_replayed_profile():
    calls = narrow_calls(900) + narrow_calls(300, task="other")
    outcomes = [RouterOutcome(call_id=f"o{i}", task="narrow", ts=T0, mode="small", served_by="small",
                              small_latency_ms=3.0, latency_ms=4.0) for i in range(40)]
    parts: list[dict] = [{}, {}, {}]
    for n, c in enumerate(calls):
        fold_call_summaries(parts[n % 3], [(c.task, summarise_call(c))])
    fold_outcomes(parts[0], outcomes)
    parts = [profiles_from_json(profiles_json(p)) for p in parts]  # what a restore reads back
    live = merge_profiles(parts)
    replayed = profile_calls(calls, outcomes)
    assert {t: measure(p) for t, p in live.items()} == {t: measure(p) for t, p in replayed.items()}


def test_profile_state_is_bounded_whatever_the_volume():
    rng = random.Random(3)
    p = Profile("big", inputs_cap=500, days_cap=10)
    for i in range(30_000):  # every input new, every answer new, over 60 days
        p.add_call_summary([int((T0 + timedelta(days=60 * i / 30_000)).timestamp() * 1000), rng.uniform(100, 900),
                            0.001, f"answer {i}", f"{rng.getrandbits(64):016x}"])
    assert len(p.inputs) <= 500 and p.inputs_sampled < 1 and len(p.days) == 10
    assert len(p.outputs) == p.output_cap and len(p.latency) < 200
    m = measure(p, window_days=7)
    assert m.calls == 30_000 and m.usable_examples == pytest.approx(30_000, rel=0.2)


def test_output_cap_counts_overflow_as_distinct():
    p = Profile("free", output_cap=10)
    for c in freeform_calls(50):
        p.add_call(c.model_copy(update={"task": "free"}))
    m = measure(p)
    assert m.distinct_outputs == 50 and m.distinct_lower_bound and m.repeat_share == 0.0


def test_sampled_inputs_estimate_usable_examples():
    calls = narrow_calls(3000)
    full = measure(profile_calls(calls)["narrow"]).usable_examples
    sampled = measure(profile_calls(calls, inputs_sampled=0.25)["narrow"]).usable_examples
    assert sampled == pytest.approx(full, rel=0.15)


def test_traits_pass_for_a_hot_narrow_task_and_freeform_fails_narrow_by_measurement():
    t, c = Thresholds(), Costs()
    narrow = assess(profile_calls(narrow_calls(3000))["narrow"], t, c)
    assert narrow.recommendation == "graduate" and narrow.failing == ()
    assert all(tr.passed and tr.score == 1.0 for tr in narrow.traits)
    # a freeform task with plenty of volume still fails the narrow-output trait by its outputs
    busy_free = [x.model_copy(update={"ts": T0 + timedelta(seconds=i)}) for i, x in enumerate(freeform_calls(3000))]
    free = assess(profile_calls(busy_free)["free"], t, c)
    assert "narrow_stable_output" in free.failing and "high_volume" not in free.failing
    narrow_trait = next(tr for tr in free.traits if tr.name == "narrow_stable_output")
    assert "repeat an output" in narrow_trait.reason and narrow_trait.score < 0.1
    low = assess(profile_calls(freeform_calls(150))["free"], t, c)
    assert {"high_volume", "narrow_stable_output", "cheap_training_data", "saving"} <= set(low.failing)
    assert [x.task for x in rank([low, narrow])] == ["narrow", "free"]


def test_parse_failures_fail_the_narrow_trait():
    calls = narrow_calls(1000)
    broken = [x.model_copy(update={"parse_ok": False, "output": None}) if i % 5 == 0 else x
              for i, x in enumerate(calls)]
    cand = assess(profile_calls(broken)["narrow"], Thresholds(), Costs())
    assert cand.measures.parse_failure_rate == pytest.approx(0.2)
    assert "narrow_stable_output" in cand.failing


def test_saving_pays_for_owning_the_model_and_gives_break_even():
    m = measure(profile_calls(narrow_calls(3000))["narrow"])
    c = Costs(instance_price_per_hour=0.5, hours_per_month=730, training_runs_per_month=4, training_run_usd=2.0,
              ops_allowance_per_month_usd=200, expected_fallback_rate=0.2, sampled_share=0.02, days_per_month=30)
    e = price(m, c)
    fixed = 0.5 * 730 + 8 + 200
    frontier = 0.00105 * m.calls_per_day * 30
    assert e.small_fixed_monthly_usd == pytest.approx(fixed)
    assert e.frontier_monthly_usd == pytest.approx(frontier, rel=1e-3)
    assert e.still_paid_frontier_monthly_usd == pytest.approx(frontier * 0.22, rel=1e-3)
    assert e.monthly_saving_usd == pytest.approx(frontier * 0.78 - fixed, rel=1e-3)
    assert e.break_even_calls_per_day == pytest.approx(fixed / (0.00105 * 0.78 * 30), rel=1e-3)
    at_break_even = price(replace(m, calls_per_day=e.break_even_calls_per_day), c)
    assert abs(at_break_even.monthly_saving_usd) < 1.0
    assert e.latency_gain_ms == pytest.approx(m.latency_p50_ms - (20 + 0.2 * m.latency_p50_ms), abs=0.2)
    assert "assumed" in e.assumptions


def test_measured_fallback_rate_replaces_the_assumption():
    calls = narrow_calls(500)
    outcomes = [RouterOutcome(call_id=f"o{i}", task="narrow", mode="small",
                              served_by="fallback" if i % 10 == 0 else "small", latency_ms=30.0,
                              small_latency_ms=12.0, ts=T0) for i in range(400)]
    p = profile_calls(calls, outcomes)["narrow"]
    m = measure(p)
    assert m.requests == 500 + 360 and m.fallback_rate == pytest.approx(0.1)
    e = price(m, Costs(min_outcomes_to_measure=200))
    assert e.fallback_rate_measured and e.fallback_rate == pytest.approx(0.1)
    assert "measured" in e.assumptions and e.expected_p50_ms == pytest.approx(12.2 + 0.1 * m.latency_p50_ms, abs=1)


def test_settings_map_to_thresholds_and_costs(monkeypatch):
    monkeypatch.setenv("GRADUATE_PROFILER_MIN_CALLS_PER_DAY", "50")
    monkeypatch.setenv("GRADUATE_PROFILER_INSTANCE_PRICE_PER_HOUR", "1.5")
    s = ProfilerSettings()
    assert s.thresholds().min_calls_per_day == 50 and s.costs().instance_price_per_hour == 1.5
