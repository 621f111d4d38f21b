"""The simulated frontier model errs honestly: deterministic per input, at the configured rate,
on confusable labels, and more on hard inputs (DESIGN.md). No HTTP here."""
from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

from services.common.settings import REPO_ROOT
from services.common.tasks import ParseFailure, parse_label
from services.frontier_sim.oracle import (ClassificationOracle, Example, calibrate_scale, malform,
                                          read_examples)

DATA = REPO_ROOT / "data" / "banking77"
TASK = "banking77-intent"


@pytest.fixture(scope="module")
def labels() -> tuple[str, ...]:
    return tuple(json.loads((DATA / "categories.json").read_text()))


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return read_examples(DATA)


@pytest.fixture(scope="module")
def train() -> list[Example]:
    with (DATA / "train.csv").open(newline="", encoding="utf-8") as f:
        return [Example(r["text"], r["category"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def oracles(labels, examples) -> dict[float, ClassificationOracle]:
    return {acc: ClassificationOracle(TASK, labels, examples, accuracy=acc) for acc in (0.8, 0.92)}


def test_same_input_same_answer_across_instances(oracles, labels, examples):
    again = ClassificationOracle(TASK, labels, examples, accuracy=0.92)
    probes = [e.text for e in examples[::50]] + ["where is my new card??", "  WHERE is my new card?? ", "qwzx"]
    assert [oracles[0.92].answer(t) for t in probes] == [again.answer(t) for t in probes]
    assert oracles[0.92].answer(probes[-3]) == oracles[0.92].answer(probes[-2])  # same after normalising


def test_the_seed_changes_which_inputs_err(oracles, labels, examples):
    other = ClassificationOracle(TASK, labels, examples, accuracy=0.92, seed=7)
    probes = [e.text for e in examples[::10]]
    assert [oracles[0.92].answer(t).wrong for t in probes] != [other.answer(t).wrong for t in probes]


@pytest.mark.parametrize("accuracy", [0.8, 0.92])
def test_realised_accuracy_on_train_matches_the_configured(oracles, train, accuracy):
    verdicts = [oracles[accuracy].answer(e.text) for e in train]
    realised = np.mean([v.label == e.label for v, e in zip(verdicts, train)])
    assert abs(realised - accuracy) <= 0.015, realised
    assert all(v.gold == e.label and v.gold_known for v, e in zip(verdicts, train))


def test_errors_land_on_a_few_confusable_labels(oracles, examples):
    wrong = Counter(v.label for e in examples if e.label == "card_arrival"
                    and (v := oracles[0.8].answer(e.text)).wrong)
    assert sum(wrong.values()) >= 20
    assert sum(n for _, n in wrong.most_common(5)) >= 0.6 * sum(wrong.values()), wrong
    assert wrong.most_common(1)[0][0] == "card_delivery_estimate"
    assert "card_arrival" not in wrong


def test_errors_are_confusable_across_all_labels(oracles, examples):
    by_gold: dict[str, Counter] = {}
    for e in examples:
        v = oracles[0.8].answer(e.text)
        if v.wrong:
            by_gold.setdefault(e.label, Counter())[v.label] += 1
    shares = [sum(n for _, n in c.most_common(5)) / sum(c.values()) for c in by_gold.values()]
    assert np.mean(shares) >= 0.75  # uniform errors over 76 labels would give about 0.07-0.3


def test_harder_inputs_err_more(oracles, examples):
    verdicts = [oracles[0.92].answer(e.text) for e in examples]
    margins, wrong = np.array([v.margin for v in verdicts]), np.array([v.wrong for v in verdicts])
    low, high = np.quantile(margins, [0.25, 0.75])
    assert wrong[margins <= low].mean() > 3 * wrong[margins >= high].mean()


def test_unknown_input_gets_the_nearest_examples_label(oracles):
    v = oracles[0.92].answer("my new card still has not arrived, where is it")
    assert v.gold == "card_arrival" and not v.gold_known
    nonsense = oracles[0.92].answer("qwzx plk")
    assert nonsense.gold is None and nonsense.label in oracles[0.92].labels


def test_malformed_answers_fail_the_parser(oracles, labels, examples):
    for label in labels:
        for u in np.linspace(0, 0.999, 5):
            with pytest.raises(ParseFailure):
                parse_label(malform(label, u, labels), labels)
    verdicts = [oracles[0.92].answer(e.text) for e in examples]
    malformed = [v for v in verdicts if v.malformed]
    assert 0.001 <= len(malformed) / len(verdicts) <= 0.006
    for v in malformed:
        with pytest.raises(ParseFailure):
            parse_label(v.content, labels)
    assert all(parse_label(v.content, labels) == v.label for v in verdicts if not v.malformed)


def test_calibration_solves_the_mean_error_rate():
    weights = np.array([0.1, 0.5, 1.0, 4.0, 20.0])
    for rate in (0.05, 0.3, 0.9):
        assert np.minimum(1, calibrate_scale(weights, rate) * weights).mean() == pytest.approx(rate, abs=1e-9)
    assert calibrate_scale(weights, 0.0) == 0.0


def test_perfect_accuracy_never_errs(labels, examples):
    oracle = ClassificationOracle(TASK, labels, examples[:500], accuracy=1.0, malformed_rate=0.0)
    assert not any(oracle.answer(e.text).wrong for e in examples[:500])


def test_data_with_labels_outside_the_task_is_refused(labels):
    with pytest.raises(ValueError, match="outside the task's label set"):
        ClassificationOracle(TASK, labels, [Example("hi", "not_a_label")], accuracy=0.9)
