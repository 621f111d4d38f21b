"""The train labels the model disputes (trainer/disputes.py): which rows, in what order, what is published."""
from __future__ import annotations

import json

import numpy as np

from trainer.disputes import disputed_rows, label_review
from trainer.model_card import label_review_section
from trainer.snapshot import Split

CLASSES = ["card_arrival", "card_delivery_estimate", "other"]


def split(labels, reviewed=None) -> Split:
    n = len(labels)
    return Split([f"c{i}" for i in range(n)], [f"text {i}" for i in range(n)], list(labels), list(labels),
                 list(reviewed or [False] * n), [f"{i:064x}" for i in range(n)])


def test_only_unreviewed_rows_the_model_answers_otherwise_lowest_label_probability_first():
    probs = np.array([[0.9, 0.05, 0.05],   # label 0, answered 0: agreed
                      [0.7, 0.2, 0.1],     # label 1, answered 0: disputed, p(label) 0.2
                      [0.05, 0.9, 0.05],   # label 0, answered 1: disputed, p(label) 0.05
                      [0.1, 0.1, 0.8],     # label 0, answered other: disputed but reviewed
                      [0.4, 0.3, 0.3]])    # label 2 (other), answered 0: disputed, p(label) 0.3
    ids = [0, 1, 0, 0, 2]
    reviewed = [False, False, False, True, False]
    assert disputed_rows(probs, ids, reviewed).tolist() == [2, 1, 4]


def test_ties_keep_row_order_and_nothing_when_every_label_is_answered():
    probs = np.array([[0.2, 0.8, 0.0], [0.2, 0.8, 0.0], [0.2, 0.8, 0.0]])
    assert disputed_rows(probs, [0, 0, 0], [False] * 3).tolist() == [0, 1, 2]
    assert disputed_rows(probs, [1, 1, 1], [False] * 3).tolist() == []
    assert disputed_rows(np.zeros((0, 3)), [], []).tolist() == []


def test_the_record_lists_at_most_listed_items_with_what_a_reviewer_needs():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)
    labels = [CLASSES[i % 3] for i in range(40)]
    ids = [i % 3 for i in range(40)]
    rows = split(labels, reviewed=[i % 7 == 0 for i in range(40)])
    record, every = label_review(probs, ids, CLASSES, rows, listed=5)
    expected = disputed_rows(probs, ids, rows.reviewed)
    assert record["disputed"] == len(every) == len(expected) > 5
    assert record["listed"] == 5 and len(record["items"]) == 5
    assert record["rows"] == 40 and record["reviewed_rows"] == 6
    assert [i["call_id"] for i in every] == [f"c{i}" for i in expected]
    first = every[0]
    row = int(expected[0])
    assert first["normalised_hash"] == rows.normalised_hash[row] and first["input"] == rows.input[row]
    assert first["label"] == labels[row] and first["model_label"] == CLASSES[int(probs[row].argmax())]
    assert first["model_label"] != first["label"]
    assert abs(first["label_probability"] - probs[row, ids[row]]) < 1e-6
    probabilities = [i["label_probability"] for i in every]
    assert probabilities == sorted(probabilities)
    json.dumps(record)  # published inside metrics_json


def test_published_items_are_bounded_in_size_and_long_inputs_are_cut(monkeypatch):
    from trainer import disputes

    n = 40
    probs = np.tile([0.1, 0.9, 0.0], (n, 1))
    rows = split(["card_arrival"] * n)
    rows.input[:] = [("x" * 5000) if i % 2 else f"short {i}" for i in range(n)]
    record, every = label_review(probs, [0] * n, CLASSES, rows)
    assert record["disputed"] == n == len(every) and all(len(i["input"]) in (5000, 7, 8) for i in every)
    long = [i for i in record["items"] if i.get("input_truncated")]
    assert long and all(len(i["input"]) == disputes.MAX_INPUT_CHARS for i in long)
    monkeypatch.setattr(disputes, "MAX_PUBLISHED_BYTES", 3000)
    capped, _ = label_review(probs, [0] * n, CLASSES, rows)
    assert 0 < capped["listed"] == len(capped["items"]) < n
    assert len(json.dumps(capped["items"])) <= 3000


def test_the_model_card_section_names_the_count_and_the_likeliest_errors():
    probs = np.array([[0.1, 0.9, 0.0], [0.9, 0.1, 0.0]])
    record, _ = label_review(probs, [0, 0], CLASSES, split(["card_arrival", "card_arrival"]))
    text = label_review_section(record)
    assert "1 of 2 train rows" in text and "| text 0 | card_arrival | card_delivery_estimate (90.0 %) | 0.100 |" in text
    assert label_review_section(None) == ""
