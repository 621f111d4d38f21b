"""Every verdict of the offline and shadow gates, from plain contracts (no broker)."""
from __future__ import annotations

import json

import pytest

from services.common.contracts import ModelRegistered, PairedCounts, ShadowStats
from services.controller.gate import evaluate_offline, evaluate_shadow, expected_kept_agreement, since_baseline
from services.controller.settings import ControllerSettings

SETTINGS = ControllerSettings()


def registered(version: str = "v1", *, task: str = "intent", small_only: int = 30, frontier_only: int = 12,
               both: int = 400, neither: int = 58, threshold: float | None = 0.62, small_accuracy: float | None = None,
               predicted_fallback_rate: float = 0.2, kept_accuracy: float = 0.95, metrics: dict | None = None,
               **extra) -> ModelRegistered:
    """A registration whose paired table drives the offline gate (default: better than the frontier)."""
    n = both + small_only + frontier_only + neither
    small = (both + small_only) / n if small_accuracy is None else small_accuracy
    return ModelRegistered(
        task=task, version=version, base_model="all-MiniLM-L6-v2", snapshot_id=f"snap-{version}", holdout_size=n,
        gold_reviewed=n // 5, gold_frontier=n - n // 5, small_accuracy=small,
        frontier_accuracy=(both + frontier_only) / n, agreement=0.9, macro_f1=0.8,
        paired=PairedCounts(both_correct=both, small_only=small_only, frontier_only=frontier_only, neither=neither),
        threshold=threshold, coverage=1 - predicted_fallback_rate, kept_accuracy=kept_accuracy,
        predicted_fallback_rate=predicted_fallback_rate, metrics_json=json.dumps(metrics or {}),
        artifact_uri=f"file:///models/{version}", triton_model=f"intent-{version}", **extra)


def shadow_stats(version: str = "v1", *, task: str = "intent", compared: int = 300, kept: int = 240,
                 kept_agreed: int = 232, agreed: int = 270, reviewed: int = 0, small_right: int = 0,
                 frontier_right: int = 0) -> ShadowStats:
    return ShadowStats(task=task, model_version=version, compared=compared, agreed=agreed, kept=kept,
                       kept_agreed=kept_agreed, reviewed=reviewed, small_correct_reviewed=small_right,
                       frontier_correct_reviewed=frontier_right, threshold=0.62)


def checks_of(result) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


SAME = {"both_correct": 450, "small_only": 0, "frontier_only": 0, "neither": 50}  # nothing kept yet: served = frontier


def searched(request: dict, threshold: float = 0.62, fields: dict | None = None, first: dict | None = None) -> dict:
    """metrics_json of a trainer's fixed-sequence search: a first candidate (0.9), then the published threshold."""
    at = {"request": request} | {f"field:{k}": v for k, v in (fields or {}).items()}
    top = {"request": first or SAME} | {f"field:{k}": SAME for k in (fields or {})}
    return {"paired_at_threshold": request,
            "threshold_search": {"method": "fixed-sequence", "steps": [{"threshold": 0.9, "tables": top},
                                                                       {"threshold": threshold, "tables": at}]}}


# --- offline ---------------------------------------------------------------------------------

def test_a_better_model_passes_with_its_evidence():
    result = evaluate_offline(registered(), None, SETTINGS)
    assert result.passed, result.reason
    assert checks_of(result) == {"holdout": "pass", "threshold": "pass", "non_inferiority": "pass", "serving": "n/a",
                                 "threshold_search": "n/a"}  # no search record: the small model's own table
    ev = result.as_evidence()
    s = ev["statistics"]
    assert s["n"] == 500 and s["small_only"] == 30 and s["frontier_only"] == 12
    assert s["difference"] == pytest.approx(18 / 500)
    assert s["p_value"] < 0.05 and s["lower_bound"] > -0.01 and "Tango" in s["test"]
    assert ev["counts"] == {"both_correct": 400, "small_only": 30, "frontier_only": 12, "neither": 58}
    assert ev["metrics"]["predicted_fallback_rate"] == 0.2 and ev["verdict"] == "pass"
    json.dumps(ev)  # the evidence travels as JSON


def test_a_model_worse_beyond_the_margin_is_refused_with_the_reason():
    result = evaluate_offline(registered(small_only=10, frontier_only=40, both=390, neither=60), None, SETTINGS)
    assert result.verdict == "refused" and result.failed == ("non_inferiority",)
    assert "worse than the frontier beyond the margin" in result.reason
    assert "small - frontier = -0.0600" in result.reason


def test_too_little_data_is_refused_with_how_many_more_are_needed():
    result = evaluate_offline(registered(both=150, small_only=20, frontier_only=5, neither=25), None, SETTINGS)
    assert result.verdict == "refused" and "holdout" in result.failed
    assert "200 gold holdout examples, the gate needs 300 (100 more)" in result.reason
    assert next(c for c in result.checks if c.name == "holdout").more_needed == 100


def test_an_inconclusive_comparison_says_how_many_more_examples_would_show_it():
    result = evaluate_offline(registered(both=270, small_only=14, frontier_only=16, neither=20), None, SETTINGS)
    check = next(c for c in result.checks if c.name == "non_inferiority")
    assert check.status == "fail" and check.more_needed and check.more_needed > 0
    assert f"about {check.more_needed} more gold holdout examples" in result.reason


def test_no_threshold_at_parity_is_refused():
    result = evaluate_offline(registered(threshold=None), None, SETTINGS)
    assert result.failed == ("threshold",)
    assert "no confidence threshold's served answers pass the non-inferiority test" in result.reason


def test_a_model_worse_than_the_serving_one_is_refused_even_when_non_inferior():
    serving = registered("v1", small_accuracy=0.90)
    candidate = registered("v2", small_accuracy=0.88)
    result = evaluate_offline(candidate, serving, SETTINGS)
    assert result.failed == ("serving",)
    assert "worse than v1" in result.reason and result.evidence["incumbent"]["version"] == "v1"
    assert evaluate_offline(registered("v3", small_accuracy=0.90), serving, SETTINGS).passed


def test_the_margin_and_minimum_come_from_settings():
    strict = ControllerSettings(margin=0.0, min_holdout=1000)
    result = evaluate_offline(registered(), None, strict)
    assert set(result.failed) == {"holdout"}
    assert result.evidence["statistics"]["margin"] == 0.0


# --- shadow ----------------------------------------------------------------------------------

def test_shadow_passes_with_enough_agreeing_comparisons():
    result = evaluate_shadow(shadow_stats(), registered(), None, SETTINGS)
    assert result.passed, result.reason
    assert checks_of(result) == {"comparisons": "pass", "threshold": "pass", "fallback": "pass",
                                 "agreement": "pass", "reviewed": "n/a"}
    assert result.evidence["kept_agreement"] == pytest.approx(232 / 240)
    assert result.evidence["expected_source"] == "kept_accuracy"


def test_shadow_waits_for_enough_comparisons_and_says_how_many():
    result = evaluate_shadow(shadow_stats(compared=150, kept=120, kept_agreed=118), registered(), None, SETTINGS)
    assert result.verdict == "pending"
    assert "150 live comparisons, the gate needs 200 (50 more)" in result.reason


def test_shadow_refuses_when_agreement_at_the_threshold_falls_below_the_holdout_level():
    result = evaluate_shadow(shadow_stats(kept_agreed=200), registered(kept_accuracy=0.95), None, SETTINGS)
    assert result.failed == ("agreement",)
    assert "agreement at the threshold 0.8333" in result.reason and "0.9500" in result.reason


def test_shadow_uses_the_holdout_agreement_at_the_threshold_when_the_trainer_reports_it():
    model = registered(kept_accuracy=0.80, metrics={"kept_agreement": 0.99})
    assert expected_kept_agreement(model) == (0.99, "metrics_json.kept_agreement")
    assert evaluate_shadow(shadow_stats(), model, None, SETTINGS).failed == ("agreement",)


def test_shadow_refuses_a_fallback_rate_far_above_the_prediction():
    result = evaluate_shadow(shadow_stats(compared=300, kept=150, kept_agreed=148), registered(), None, SETTINGS)
    assert "fallback" in result.failed and "live fallback rate 0.500" in result.reason


def test_shadow_grades_against_reviewed_labels_when_enough_were_reviewed():
    worse = shadow_stats(reviewed=100, small_right=80, frontier_right=90)
    assert evaluate_shadow(worse, registered(), None, SETTINGS).failed == ("reviewed",)
    within = shadow_stats(reviewed=100, small_right=89, frontier_right=90)
    assert evaluate_shadow(within, registered(), None, SETTINGS).passed
    few = shadow_stats(reviewed=10, small_right=2, frontier_right=10)
    assert checks_of(evaluate_shadow(few, registered(), None, SETTINGS))["reviewed"] == "n/a"


def test_shadow_counts_only_comparisons_since_the_shadow_period_began():
    baseline = {"compared": 300, "agreed": 270, "kept": 240, "kept_agreed": 232, "reviewed": 0,
                "small_correct_reviewed": 0, "frontier_correct_reviewed": 0}
    later = shadow_stats(compared=400, kept=260, kept_agreed=250, agreed=350)
    assert since_baseline(later, baseline)["compared"] == 100
    result = evaluate_shadow(later, registered(), baseline, SETTINGS)
    assert result.verdict == "pending" and "100 live comparisons" in result.reason
    restarted = shadow_stats(compared=250)  # the judge's totals went backwards: count from zero
    assert since_baseline(restarted, baseline)["compared"] == 250


def test_shadow_without_a_threshold_cannot_cut_over():
    assert "threshold" in evaluate_shadow(shadow_stats(), registered(threshold=None), None, SETTINGS).failed


def test_the_served_table_decides_when_the_trainer_reports_it():
    served = {"both_correct": 420, "small_only": 4, "frontier_only": 2, "neither": 74}  # fallback hides most misses
    model = registered(small_only=10, frontier_only=40, both=390, neither=60, small_accuracy=0.84,
                       metrics=searched(served))
    result = evaluate_offline(model, None, SETTINGS)
    assert result.passed, result.reason
    assert checks_of(result)["threshold_search"] == "pass" and "2 candidate(s)" in result.reason
    assert result.evidence["statistics"]["table"] == "served" and result.evidence["counts"] == served
    assert "small with fallback - frontier = +0.0040" in result.reason
    assert result.evidence["small_table"]["difference"] < -0.05  # the stricter figure is kept as evidence
    strict = evaluate_offline(model, None, ControllerSettings(offline_table="small"))
    assert strict.failed == ("non_inferiority",) and strict.evidence["statistics"]["table"] == "small"


# --- offline, extraction: every field must hold ------------------------------------------------

FIELDS = ["people", "time", "date", "first_name", "last_name"]
HOLDS = {"both_correct": 440, "small_only": 12, "frontier_only": 8, "neither": 40}  # 500, small a bit better


def extraction(tables: dict[str, dict] | None = None, served: dict[str, dict] | None = None, **kw) -> ModelRegistered:
    """An extraction registration whose request-level table passes; per-field tables as given."""
    metrics = {"kind": "extraction", "fields": FIELDS,
               "paired_at_threshold": {"both_correct": 400, "small_only": 30, "frontier_only": 12, "neither": 58},
               "per_field_paired": tables if tables is not None else {f: HOLDS for f in FIELDS}}
    if served is not None:
        metrics |= searched(metrics["paired_at_threshold"], fields=served) | {"per_field_paired_at_threshold": served}
    return registered(task="booking", labels=FIELDS, metrics=metrics, **kw)


def test_an_extraction_model_passes_when_every_field_holds():
    result = evaluate_offline(extraction(), None, SETTINGS)
    assert result.passed, result.reason
    checks = checks_of(result)
    assert checks["non_inferiority"] == "pass" and all(checks[f"field:{f}"] == "pass" for f in FIELDS)
    fields = result.as_evidence()["fields"]
    assert set(fields) == set(FIELDS) and fields["time"]["table"] == "small" and fields["time"]["n"] == 500
    json.dumps(result.as_evidence())


def test_an_extraction_model_worse_on_one_field_is_refused_naming_the_field():
    worse = {"both_correct": 400, "small_only": 5, "frontier_only": 40, "neither": 55}  # -7 points on time
    result = evaluate_offline(extraction({**{f: HOLDS for f in FIELDS}, "time": worse}), None, SETTINGS)
    assert checks_of(result)["non_inferiority"] == "pass"  # request-level exact match passes ...
    assert result.verdict == "refused" and result.failed == ("field:time",)  # ... the field does not
    assert "field time: worse than the frontier beyond the margin" in result.reason
    assert "small - frontier = -0.0700" in result.reason and "people" not in result.reason


def test_the_field_gate_tests_the_served_table_when_the_trainer_reports_it():
    worse = {"both_correct": 400, "small_only": 5, "frontier_only": 40, "neither": 55}
    served = {**{f: HOLDS for f in FIELDS}, "last_name": worse}
    result = evaluate_offline(extraction(served=served), None, SETTINGS)
    assert result.failed == ("threshold_search", "field:last_name") and "small with fallback - frontier" in result.reason
    assert "the search stops at 0.9000, above the published threshold 0.6200" in result.reason
    assert result.as_evidence()["fields"]["last_name"]["table"] == "served"
    small_only = evaluate_offline(extraction(served=served), None, ControllerSettings(offline_table="small"))
    assert small_only.passed, small_only.reason  # per_field_paired (small everywhere) holds


def test_an_inconclusive_or_missing_field_refuses_too():
    few = {"both_correct": 440, "small_only": 20, "frontier_only": 22, "neither": 18}  # -0.4 points: not shown
    tables = {f: HOLDS for f in FIELDS if f != "date"} | {"people": few}
    result = evaluate_offline(extraction(tables), None, SETTINGS)
    assert set(result.failed) == {"field:people", "field:date"}
    assert "field people: non-inferiority not shown" in result.reason
    assert "field date: the registration has no paired holdout table" in result.reason


def test_classification_models_have_no_field_checks():
    assert not any(name.startswith("field:") for name in checks_of(evaluate_offline(registered(), None, SETTINGS)))


# --- the threshold search's record and an underfit model's refusal ------------------------------

def test_the_trainers_search_record_is_what_the_gate_replays():
    import numpy as np

    from trainer.threshold import REQUEST, search_threshold

    rng = np.random.default_rng(3)
    conf = rng.random(600)
    frontier_ok = rng.random(600) < 0.9
    small_ok = np.where(conf > 0.3, frontier_ok | (rng.random(600) < 0.5), rng.random(600) < 0.6)
    choice = search_threshold(conf, {REQUEST: (small_ok, frontier_ok)}, SETTINGS.margin, SETTINGS.alpha)
    assert choice.threshold is not None
    metrics = {"paired_at_threshold": choice.steps[-2 if not choice.steps[-1].passed else -1].tables[REQUEST],
               "threshold_search": choice.search_record()}
    model = registered(threshold=choice.threshold, metrics=metrics)
    result = evaluate_offline(model, None, SETTINGS)
    assert checks_of(result)["threshold_search"] == "pass" and result.evidence["statistics"]["table"] == "served"
    # a stricter gate than the trainer's search stops earlier: the published threshold is refused
    strict = evaluate_offline(model, None, ControllerSettings(margin=0.0))
    assert "threshold_search" in strict.failed and "above the published threshold" in strict.reason
    # a threshold the search never tried, or a table that is not the search's, is refused
    assert "not one of the searched candidates" in evaluate_offline(
        registered(threshold=choice.threshold + 1e-3, metrics=metrics), None, SETTINGS).reason
    other = metrics | {"paired_at_threshold": SAME}
    assert "is not the search's table" in evaluate_offline(registered(threshold=choice.threshold, metrics=other),
                                                           None, SETTINGS).reason


def test_an_underfit_model_is_told_so_with_what_the_trainer_tried_not_to_gather_more_holdout():
    fit = {"epochs": 3, "epochs_run": 3, "stopped_early": False, "validation_accuracy": 0.53,
           "best_validation_accuracy": 0.54, "learning_rate": 5e-5}
    # small alone 61 % vs frontier 92 %; no threshold passes
    model = registered(both=290, small_only=15, frontier_only=170, neither=25, threshold=None, metrics={"fit": fit})
    result = evaluate_offline(model, None, SETTINGS)
    assert result.verdict == "refused"
    assert "the small model underfits: holdout accuracy 61.0% vs the frontier's 92.0% (31.0 points below" in result.reason
    assert "the trainer tried 3 of at most 3 epochs, not stopped early, best validation accuracy 54.0%" in result.reason
    assert "more gold holdout examples would show it" not in result.reason
    assert all(c.more_needed is None for c in result.checks if c.name != "holdout")
    assert result.evidence["underfit"].startswith("the small model underfits")
    assert "train labels the model disputes" not in result.reason  # the registration lists none
    disputed = registered(both=290, small_only=15, frontier_only=170, neither=25, threshold=None,
                          metrics={"fit": fit, "label_review": {"disputed": 612, "listed": 500, "items": []}})
    assert "check the 612 train labels the model disputes" in evaluate_offline(disputed, None, SETTINGS).reason
    # close to the frontier, an inconclusive test still says how much more holdout would show it
    close = evaluate_offline(registered(both=270, small_only=14, frontier_only=16, neither=20), None, SETTINGS)
    assert "underfits" not in close.reason and "more gold holdout examples would show it" in close.reason


def test_without_a_threshold_the_model_itself_is_tested_not_the_frontier_against_itself():
    metrics = searched(SAME, threshold=0.9) | {"threshold_search": {"steps": [{"threshold": 0.9, "tables": {
        "request": {"both_correct": 300, "small_only": 0, "frontier_only": 20, "neither": 180}}}]}}
    result = evaluate_offline(registered(threshold=None, metrics=metrics), None, SETTINGS)
    assert result.evidence["statistics"]["table"] == "small" and set(result.failed) == {"threshold"}
