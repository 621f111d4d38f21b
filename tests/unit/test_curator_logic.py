"""Curation as pure functions: normalisation, split, dedup and conflicts, reviews, the review queue."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from services.common.contracts import CapturedCall, ReviewedLabel
from services.common.normalize import input_hash, normalise_input, split_of
from services.common.tasks import TaskSpec
from services.curator.logic import (SmallAnswer, Tally, build_dataset, build_review_queue, curate_call, latest_reviews,
                                    tallies_from_json, tallies_json, tally_calls, tally_stats)
from services.curator.snapshot import curate_sources, read_snapshot, write_snapshot
from tests.dataset_support import source_data

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
TASK = "banking77-intent"


def cc(call_id, text, label, minutes=0, parse_ok=True, task=TASK) -> CapturedCall:
    return CapturedCall(call_id=call_id, task=task, ts=T0 + timedelta(minutes=minutes), input=text,
                        output_raw=label or "??", output=label if parse_ok else None, parse_ok=parse_ok,
                        latency_ms=100.0)


def review(call_id, label, verdict="label", minutes=0) -> ReviewedLabel:
    return ReviewedLabel(call_id=call_id, task=TASK, verdict=verdict, label=label, reviewer="r",
                         ts=T0 + timedelta(minutes=minutes))


def test_normalisation_folds_case_width_and_whitespace():
    assert normalise_input("  Where IS\tmy\u00a0card?\n") == "where is my card?"
    assert normalise_input("ＣＡＲＤ") == "card"
    assert input_hash(TASK, "a") != input_hash("other", "a")


@hsettings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.floats(min_value=0.0, max_value=0.99))
def test_split_is_a_function_of_the_normalised_input(text, fraction):
    variant = "  " + text.upper().replace(" ", "\t ") + " "
    if normalise_input(variant) == normalise_input(text):
        assert split_of(TASK, text, fraction) == split_of(TASK, variant, fraction)


@hsettings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.floats(min_value=0.01, max_value=0.5), st.floats(min_value=0.0, max_value=0.5))
def test_growing_the_holdout_never_moves_holdout_to_train(text, fraction, extra):
    if split_of(TASK, text, fraction) == "holdout":
        assert split_of(TASK, text, min(0.99, fraction + extra)) == "holdout"


def test_split_share_is_close_to_the_fraction():
    texts = [f"message number {i}" for i in range(20000)]
    share = sum(split_of(TASK, t, 0.15) == "holdout" for t in texts) / len(texts)
    assert 0.14 < share < 0.16


def test_curate_call_drops_labels_of_parse_failures():
    assert curate_call(cc("a", "x", "card_arrival")).label == "card_arrival"
    assert curate_call(cc("b", "x", "garbage", parse_ok=False)).label is None
    empty = CapturedCall(call_id="c", task=TASK, input="x", output_raw="", output="", latency_ms=1.0)
    assert curate_call(empty).label is None


def test_dedup_keeps_latest_answer_and_counts_conflicts():
    calls = [curate_call(c) for c in [
        cc("a1", "Where is my card?", "card_arrival", 0),
        cc("a2", "where is my  CARD?", "card_delivery_estimate", 5),  # same input, newer, different
        cc("a3", "WHERE is my card?", "card_arrival", 2),
        cc("b1", "lost my card", "lost_or_stolen_card", 1),
        cc("b2", "Lost my card", "lost_or_stolen_card", 3),
        cc("c1", "gibberish", "x", 1, parse_ok=False),
        cc("d1", "exchange rate?", None, 1, parse_ok=False),
        cc("d2", "exchange rate?", "exchange_rate", 0),
    ]]
    ds = build_dataset(TASK, calls + calls[:2], {})  # replayed calls collapse by call_id
    by_id = {e.call_id: e for e in ds.examples}
    assert set(by_id) == {"a2", "b2", "d2"}
    assert by_id["a2"].label == "card_delivery_estimate" and set(by_id["a2"].call_ids) == {"a1", "a2", "a3"}
    assert by_id["d2"].label == "exchange_rate"  # the parse failure is newer but never a label
    s = ds.stats
    assert (s.calls, s.distinct_inputs, s.duplicate_calls, s.conflicting_inputs, s.parse_failures,
            s.unlabelled_inputs) == (8, 4, 4, 1, 2, 1)


def test_reviewed_label_overrides_and_not_in_label_set_excludes():
    calls = [curate_call(c) for c in [cc("a1", "where is my card", "card_arrival", 0),
                                      cc("a2", "Where is my card", "card_arrival", 1),
                                      cc("b1", "lost card", "lost_or_stolen_card"),
                                      cc("c1", "huh", None, parse_ok=False),
                                      cc("d1", "weird", "card_arrival")]]
    reviews = latest_reviews([review("a1", "card_delivery_estimate", minutes=1),
                              review("a1", "card_linking", minutes=2),  # the later one for a1 wins
                              review("c1", "card_arrival"),  # a reviewed label rescues a parse failure
                              review("d1", None, verdict="not_in_label_set"),
                              review("b1", None, verdict="skip")])
    ds = build_dataset(TASK, calls, reviews)
    by_id = {e.call_id: e for e in ds.examples}
    assert by_id["a2"].label == "card_linking" and by_id["a2"].frontier_label == "card_arrival"
    assert by_id["a2"].reviewed
    assert by_id["c1"].label == "card_arrival" and by_id["c1"].frontier_label is None
    assert not by_id["b1"].reviewed and by_id["b1"].label == "lost_or_stolen_card"
    assert "d1" not in by_id and ds.excluded_by_review == 1 and ds.reviewed_applied == 2


def test_no_input_on_both_sides_and_other_tasks_ignored():
    rng = random.Random(7)
    texts = [f"text {rng.randrange(300)}" for _ in range(2000)]
    calls = [curate_call(cc(f"c{i}", t if i % 2 else t.upper(), "card_arrival", i), 0.3) for i, t in enumerate(texts)]
    calls.append(curate_call(cc("other", "text 1", "x", task="draft-reply")))
    ds = build_dataset(TASK, calls, {})
    train = {e.normalised_hash for e in ds.split("train")}
    holdout = {e.normalised_hash for e in ds.split("holdout")}
    assert train and holdout and not train & holdout
    assert all(e.task == TASK for e in ds.examples)


def test_snapshot_is_byte_identical_whatever_the_order(tmp_path):
    calls = [cc(f"c{i}", f"question {i % 400}", f"label_{i % 7}", i) for i in range(1200)]
    reviews = [review("c5", "label_3")]
    spec = TaskSpec(name=TASK, kind="classification", labels=tuple(f"label_{i}" for i in range(7)))
    first = source_data([(i % 3, i, c) for i, c in enumerate(calls)], reviews)
    shuffled = calls[:]
    random.Random(1).shuffle(shuffled)
    second = source_data([(i % 3, i, c) for i, c in enumerate(shuffled)], reviews)
    a, ma = write_snapshot(spec, curate_sources(spec, first, 0.15), first, 0.15, tmp_path / "a")
    b, mb = write_snapshot(spec, curate_sources(spec, second, 0.15), second, 0.15, tmp_path / "b")
    assert ma == mb and a.name == b.name == ma["snapshot_id"]
    for name in ("train.parquet", "holdout.parquet", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    manifest, train, holdout = read_snapshot(a)
    assert manifest["counts"] == {"train": train.num_rows, "holdout": holdout.num_rows}
    assert train.num_rows + holdout.num_rows == 400
    assert train.column_names == ["call_id", "input", "label", "frontier_label", "reviewed", "normalised_hash"]
    assert not set(train.column("normalised_hash").to_pylist()) & set(holdout.column("normalised_hash").to_pylist())
    assert sum(manifest["reviewed"].values()) == 1
    assert manifest["created_at"] == "2026-11-01T19:59:00Z"  # the newest record, not the clock
    assert pq.ParquetFile(a / "train.parquet").metadata.num_row_groups == 1


def test_review_queue_puts_disagreements_then_low_confidence_then_a_stratified_sample():
    calls = [curate_call(cc(f"c{i}", f"q {i}", f"label_{i % 3}", i), 0.5) for i in range(60)]
    ds = build_dataset(TASK, calls, {})
    holdout = [e for e in ds.examples if e.split == "holdout"]
    d, low, sure = holdout[0], holdout[1], holdout[2]
    train_call = next(e for e in ds.examples if e.split == "train")
    answers = [SmallAnswer(d.call_id, "label_9", 0.9, "v1", True),
               SmallAnswer(low.call_id, low.label, 0.3, "v1", False),
               SmallAnswer(sure.call_id, sure.label, 0.99, "v1", False),
               SmallAnswer(train_call.call_id, "label_9", 0.1, "v1", True)]  # not holdout: not queued first
    queue = build_review_queue(ds, answers, limit=8, low_confidence=0.6)
    assert [q.reason for q in queue[:2]] == ["disagreement", "low_confidence"]
    assert queue[0].call_id == d.call_id and queue[0].small_output == "label_9"
    assert all(q.reason == "sample" for q in queue[2:]) and len(queue) == 8
    assert len({q.frontier_label for q in queue[2:5]}) == 3  # round robin over the labels
    assert len({q.call_id for q in queue}) == 8
    assert build_review_queue(ds, answers, limit=8) == queue  # deterministic


def test_tallies_of_two_partitions_merge_into_exact_stats_and_find_conflicts_across_them():
    calls = [curate_call(c) for c in [cc("a", "Same thing", "x", 1), cc("b", "same  thing", "y", 2),
                                      cc("c", "other", "x", 3), cc("p", "broken", None, parse_ok=False),
                                      cc("z", "zz", "y", task="draft-reply")]]
    one, two = {}, {}
    tally_calls(one, [calls[0], calls[2], calls[4]])
    tally_calls(two, [calls[1], calls[3]])  # the same input answered otherwise, in another partition
    two = tallies_from_json(tallies_json(two))  # what a restore reads back
    stats = tally_stats([one, two])
    s = stats[TASK]
    assert (s["calls"], s["usable"], s["parse_failures"], s["inputs"], s["duplicate_calls"],
            s["conflicting_inputs"]) == (4, 3, 1, 3, 1, 1)
    assert s["train"] + s["holdout"] == 4 and stats["draft-reply"]["calls"] == 1
    assert "inputs_sampled" not in s  # exact while under the cap


def test_tally_stays_bounded_and_estimates_distinct_inputs():
    t = Tally(inputs_cap=256)
    for i in range(20_000):
        t.add(curate_call(cc(f"c{i}", f"question number {i % 5000}", "x", i)))
    assert len(t.inputs) <= 256 and t.inputs_sampled < 1
    s = t.stats()
    assert s["calls"] == 20_000 and abs(s["inputs"] - 5000) < 5000 * 0.2
    assert s["duplicate_calls"] == 20_000 - s["inputs"] and s["inputs_sampled"] == t.inputs_sampled


def test_ascii_shortcut_of_normalise_input_matches_the_unicode_path():
    import unicodedata

    from services.common.normalize import _WS, normalise_input

    def unicode_path(text: str) -> str:
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        return _WS.sub(" ", folded).strip()

    for text in ["  Where IS my\tCARD?\n", "a\x1c\x1fb\x0b\x0cc", "", " \r\n ", "ALL-CAPS_and 123", "x  y"]:
        assert normalise_input(text) == unicode_path(text)
    assert normalise_input("Straße  ÉTÉ") == unicode_path("Straße  ÉTÉ") == "strasse été"


def test_admission_caches_parse_failures_as_failures():
    from services.curator.admission import parses_cached
    from services.common.tasks import ParseFailure, load_tasks
    from services.common.settings import REPO_ROOT

    spec = next(s for s in load_tasks(REPO_ROOT / "config" / "tasks.yaml").tasks.values() if s.kind == "classification")
    parse = parses_cached(spec)
    label = spec.answers[0]
    assert parse(f" {label.upper()} ") == label == parse(f" {label.upper()} ")
    for _ in range(2):  # the second time from the cache: still a failure
        with pytest.raises(ParseFailure):
            parse("not a label at all")
