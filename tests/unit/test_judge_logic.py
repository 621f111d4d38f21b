"""The judge's arithmetic: agreement, join with reviews, dedupe, paired counts, confusion pairs."""
from __future__ import annotations

import json
import random

import pytest

from services.common.contracts import PairedCounts, ReviewedLabel, ShadowResult
from services.judge.logic import (
    JudgeState, Review, Verdict, confusion_pairs, contribution, disagreement_of, paired_bucket, review_of,
    same_output,
)


def result(call_id="c1", small="a", frontier="a", conf=0.9, version="1", task="t") -> ShadowResult:
    return ShadowResult(call_id=call_id, task=task, model_version=version, output=small, confidence=conf,
                        latency_ms=3.0, input=f"in {call_id}", frontier_output=frontier)


def label(call_id="c1", value="a", verdict="label", task="t") -> ReviewedLabel:
    return ReviewedLabel(call_id=call_id, task=task, verdict=verdict, label=value if verdict == "label" else None,
                         reviewer="r")


def test_same_output_labels_and_json_objects():
    assert same_output("a", "a") and not same_output("a", "b")
    assert same_output('{"x": 1, "y": "z"}', '{"y":"z","x":1}')
    assert not same_output('{"x": 1}', '{"x": 2}')
    assert not same_output("{broken", "{broken ")
    assert not same_output(None, "a") and not same_output("a", None)


def test_review_of_verdicts():
    assert review_of(label(value="a")) == Review("a")
    assert review_of(label(verdict="not_in_label_set")) == Review(None)
    assert review_of(label(verdict="skip")) is None


def test_disagreement_only_when_outputs_differ():
    assert disagreement_of(result(small="a", frontier="a"), None) is None
    assert disagreement_of(result(small="a", frontier=None), None) is None
    d = disagreement_of(result(small="b", frontier="a", conf=0.4), Review("b"))
    assert (d.call_id, d.task, d.model_version, d.small_output, d.frontier_output, d.confidence, d.reviewed_label) == \
        ("c1", "t", "1", "b", "a", 0.4, "b")
    assert d.input == "in c1"


@pytest.mark.parametrize("small_ok,frontier_ok,bucket", [
    (True, True, "both_correct"), (True, False, "small_only"), (False, True, "frontier_only"), (False, False, "neither"),
])
def test_paired_bucket(small_ok, frontier_ok, bucket):
    assert paired_bucket(small_ok, frontier_ok) == bucket


def test_contribution_threshold_and_review():
    v = Verdict("c", "t", "1", "b", "a", 0.8)
    c = contribution(v, Review("b"), threshold=0.7)
    assert (c["compared"], c["agreed"], c["kept"], c["kept_agreed"]) == (1, 0, 1, 0)
    assert (c["reviewed"], c["small_correct_reviewed"], c["frontier_correct_reviewed"], c["small_only"]) == (1, 1, 0, 1)
    assert c[("pair", "a", "b")] == 1
    below = contribution(v, None, threshold=0.9)
    assert below["kept"] == 0 and below["reviewed"] == 0
    assert contribution(v, None, threshold=None)["kept"] == 0
    assert contribution(Verdict("c", "t", "1", "b", None, 0.8), Review("b"), 0.5) == {}
    none_fit = contribution(Verdict("c", "t", "1", "a", "a", 0.8), Review(None), None)
    assert none_fit["neither"] == 1 and none_fit["reviewed"] == 1


def test_confusion_pairs_sorted_and_capped():
    from collections import Counter

    totals = Counter({("pair", "a", "b"): 3, ("pair", "c", "d"): 5, ("pair", "a", "c"): 3, "compared": 99,
                      ("pair", "x", "y"): 0})
    assert confusion_pairs(totals) == [{"frontier": "c", "small": "d", "count": 5},
                                       {"frontier": "a", "small": "b", "count": 3},
                                       {"frontier": "a", "small": "c", "count": 3}]
    assert len(confusion_pairs(totals, top=1)) == 1


def test_replayed_result_is_counted_once():
    state = JudgeState()
    assert state.apply_result(result(small="b"))
    assert not state.apply_result(result(small="b"))
    assert not state.apply_result(result(small="a"))  # the first answer for a call/version stands
    s = state.stats(("t", "1"))
    assert (s.compared, s.agreed) == (1, 0)
    assert state.apply_result(result(version="2"))  # another version of the model is its own group
    assert state.groups() == [("t", "1"), ("t", "2")]


def test_review_before_or_after_the_result_grades_the_same():
    before, after = JudgeState(), JudgeState()
    before.apply_review(label("c1", "b"))
    before.apply_result(result("c1", small="b", frontier="a"))
    after.apply_result(result("c1", small="b", frontier="a"))
    assert after.apply_review(label("c1", "b")) == {("t", "1")}
    assert before.stats(("t", "1")).model_dump(exclude={"ts"}) == after.stats(("t", "1")).model_dump(exclude={"ts"})
    s = after.stats(("t", "1"))
    assert (s.reviewed, s.small_correct_reviewed, s.frontier_correct_reviewed) == (1, 1, 0)
    assert s.paired == PairedCounts(small_only=1)


def test_changed_review_replaces_the_old_grade_and_skip_removes_it():
    state = JudgeState()
    state.apply_result(result("c1", small="b", frontier="a"))
    state.apply_review(label("c1", "b"))
    state.apply_review(label("c1", "a"))
    s = state.stats(("t", "1"))
    assert (s.reviewed, s.small_correct_reviewed, s.frontier_correct_reviewed) == (1, 0, 1)
    assert state.apply_review(label("c1", "a")) == set()  # same review again: nothing changes
    state.apply_review(label("c1", verdict="skip"))
    s = state.stats(("t", "1"))
    assert (s.reviewed, s.paired) == (0, PairedCounts())
    assert s.compared == 1


def test_threshold_change_recounts_kept():
    thresholds = {("t", "1"): 0.5}
    state = JudgeState(threshold_of=lambda task, version: thresholds.get((task, version)))
    state.apply_result(result("c1", conf=0.6))
    state.apply_result(result("c2", conf=0.9, small="b"))
    assert (state.stats(("t", "1")).kept, state.stats(("t", "1")).kept_agreed) == (2, 1)
    assert state.refresh_thresholds() == set()
    thresholds[("t", "1")] = 0.8
    assert state.refresh_thresholds() == {("t", "1")}
    s = state.stats(("t", "1"))
    assert (s.kept, s.kept_agreed, s.threshold) == (1, 0, 0.8)


def random_events(seed: int, n: int = 300):
    rng = random.Random(seed)
    labels = ["a", "b", "c", "d"]
    events = []
    for i in range(n):
        frontier = rng.choice(labels)
        small = frontier if rng.random() < 0.7 else rng.choice(labels)
        events.append(result(f"c{i}", small=small, frontier=frontier, conf=rng.random(),
                             version=rng.choice(["1", "2"])))
        if rng.random() < 0.3:
            events.append(label(f"c{i}", rng.choice(labels)))
    return events


def direct_stats(events, threshold):
    """The statistics computed the obvious way, for comparison with the incremental state."""
    results = {}
    reviews = {}
    for e in events:
        if isinstance(e, ShadowResult):
            results.setdefault((e.call_id, e.model_version), e)
        else:
            reviews[e.call_id] = e.label
    out = {}
    for (call_id, version), r in results.items():
        s = out.setdefault(version, dict(compared=0, agreed=0, kept=0, kept_agreed=0, reviewed=0, small=0,
                                         frontier=0, pairs={}))
        agreed = r.output == r.frontier_output
        s["compared"] += 1
        s["agreed"] += agreed
        if r.confidence >= threshold:
            s["kept"] += 1
            s["kept_agreed"] += agreed
        if not agreed:
            key = (r.frontier_output, r.output)
            s["pairs"][key] = s["pairs"].get(key, 0) + 1
        if call_id in reviews:
            s["reviewed"] += 1
            s["small"] += r.output == reviews[call_id]
            s["frontier"] += r.frontier_output == reviews[call_id]
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_stats_equal_direct_computation_under_replay_and_shuffle(seed):
    events = random_events(seed)
    replayed = events + events[: len(events) // 2]  # a crash replays the tail of what was processed
    random.Random(seed).shuffle(replayed)  # reviews arrive before or after their results
    state = JudgeState(threshold_of=lambda task, version: 0.5)
    for e in replayed:
        if isinstance(e, ShadowResult):
            state.apply_result(e)
        else:
            state.apply_review(e)
    # a shuffled replay may reorder two reviews of a call: grade against the last one applied
    last_review = {}
    for e in replayed:
        if isinstance(e, ReviewedLabel):
            last_review[e.call_id] = e
    expected = direct_stats([e for e in replayed if isinstance(e, ShadowResult)] + list(last_review.values()), 0.5)
    for version, want in expected.items():
        s = state.stats(("t", version))
        assert (s.compared, s.agreed, s.kept, s.kept_agreed) == \
            (want["compared"], want["agreed"], want["kept"], want["kept_agreed"])
        assert (s.reviewed, s.small_correct_reviewed, s.frontier_correct_reviewed) == \
            (want["reviewed"], want["small"], want["frontier"])
        assert s.paired.n == s.reviewed
        assert s.paired.both_correct + s.paired.small_only == s.small_correct_reviewed
        top = json.loads(s.confusion_json)["pairs"]
        assert top == sorted(top, key=lambda p: (-p["count"], p["frontier"], p["small"]))
        for p in top:
            assert want["pairs"][(p["frontier"], p["small"])] == p["count"]


def test_load_from_records_rebuilds_the_same_stats():
    state = JudgeState(threshold_of=lambda task, version: 0.5)
    for e in random_events(7):
        state.apply_result(e) if isinstance(e, ShadowResult) else state.apply_review(e)
    call_ids = set(state.verdicts) | set(state.reviews)
    records = [(c, json.loads(json.dumps(state.record(c)))) for c in call_ids]  # through JSON, as the table does
    loaded = JudgeState.load(records, threshold_of=lambda task, version: 0.5)
    for group in state.groups():
        assert loaded.stats(group).model_dump(exclude={"ts"}) == state.stats(group).model_dump(exclude={"ts"})
    assert loaded.seen("c0", next(iter(state.verdicts["c0"])))


# --- extraction: field-level agreement --------------------------------------------------------

def booking(**values) -> str:
    fields = ("date", "first_name", "last_name", "people", "time")
    return json.dumps({f: values.get(f) for f in fields}, sort_keys=True)


def test_same_output_normalises_each_field_and_reads_a_missing_field_as_null():
    from services.judge.logic import differing_fields

    assert same_output(booking(people="2", first_name="Ana"), booking(people=" 2 ", first_name="ANA"))
    assert same_output(booking(time="7  pm"), '{"time": "7 pm"}')  # missing fields are null
    assert same_output(booking(time=""), booking())  # an empty value is no value
    assert same_output('{"people": 2}', '{"people": "2"}')
    assert not same_output(booking(people="2"), booking(people="3"))
    assert differing_fields(booking(people="2", time="7pm"), booking(people="3", time="7 PM")) == ["people", "time"]
    assert differing_fields(booking(people="2"), booking(people="2 ")) == []
    assert differing_fields("card_arrival", "card_delivery_estimate") == []
    assert differing_fields(booking(), "not json") == []


def test_an_extraction_disagreement_names_the_fields_that_differ():
    d = disagreement_of(result(small=booking(people="2", time="8pm"), frontier=booking(people="2", time="7pm")), None)
    assert d.differing_fields == ["time"]
    assert disagreement_of(result(small=booking(people="2"), frontier=booking(people=" 2")), None) is None
    assert disagreement_of(result(small="b", frontier="a"), None).differing_fields == []


def test_stats_count_agreement_per_field_and_reviewed_correctness_per_field():
    state = JudgeState(threshold_of=lambda task, version: 0.5)
    state.apply_result(result("c1", small=booking(people="2", time="7pm"), frontier=booking(people="2", time="8pm"),
                              conf=0.9))
    state.apply_result(result("c2", small=booking(people="4"), frontier=booking(people="4"), conf=0.3))
    state.apply_result(result("c3", small="a", frontier="a"))  # not an object: no field counts
    state.apply_review(label("c1", booking(people="2", time="8pm")))
    stats = state.stats(("t", "1"))
    assert (stats.compared, stats.agreed, stats.kept, stats.kept_agreed) == (3, 2, 2, 1)
    fields = json.loads(stats.confusion_json)["fields"]
    assert set(fields) == {"date", "first_name", "last_name", "people", "time"}
    assert fields["time"] == {"compared": 2, "agreed": 1, "kept": 1, "kept_agreed": 0, "reviewed": 1,
                              "small_correct_reviewed": 0, "frontier_correct_reviewed": 1}
    assert fields["people"] == {"compared": 2, "agreed": 2, "kept": 1, "kept_agreed": 1, "reviewed": 1,
                                "small_correct_reviewed": 1, "frontier_correct_reviewed": 1}
    state.apply_review(label("c1", verdict="skip"))  # the review goes, and with it the per-field grades
    fields = json.loads(state.stats(("t", "1")).confusion_json)["fields"]
    assert fields["time"]["reviewed"] == 0 and fields["time"]["compared"] == 2


def test_classification_stats_carry_no_field_counts():
    state = JudgeState()
    state.apply_result(result("c1", small="a", frontier="b"))
    assert "fields" not in json.loads(state.stats(("t", "1")).confusion_json)


def test_field_counts_survive_a_reload():
    state = JudgeState(threshold_of=lambda task, version: 0.5)
    state.apply_result(result("c1", small=booking(people="2"), frontier=booking(people="3"), conf=0.7))
    state.apply_review(label("c1", booking(people="3")))
    again = JudgeState.load([("c1", state.record("c1"))], threshold_of=lambda task, version: 0.5)
    assert again.stats(("t", "1")).confusion_json == state.stats(("t", "1")).confusion_json


def test_the_shadow_report_shows_agreement_per_field():
    from rich.console import Console

    from services.judge.report import render, summary

    state = JudgeState(threshold_of=lambda task, version: 0.5)
    state.apply_result(result("c1", small=booking(people="2", time="7pm"), frontier=booking(people="2", time="8pm")))
    stats = state.stats(("t", "1"))
    d = summary(stats)
    assert d["fields"]["time"]["agreement"] == 0.0 and d["fields"]["people"]["agreement"] == 1.0
    console = Console(record=True, width=200)
    console.print(render("t", [stats]))
    text = console.export_text()
    assert "agreement per field" in text and "first_name" in text
    assert summary(JudgeState().stats(("t", "1")))["fields"] == {}
