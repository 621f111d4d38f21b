"""The train labels the fine-tuned model disputes: the likeliest errors in what it learned from.

A classifier learns from the frontier's answers, and a frontier errs on confusable labels, the same
way every time. After the fine-tune, the train rows whose label the model does not answer are mostly
those errors (HWU64: 515 such rows, 73 % of them wrong, 91 % of the 100 with the highest loss; the
frontier had 707 wrong of 8,465), so a person checking them fixes half the label noise with 500
reviews, and the next run learns from the fix. Measured gain: +0.2 to +2.2 points in scope on
validation, +0.2 to +0.3 on the test splits: the errors the model absorbed are not among the rows it
disputes (bench/bench_label_ceiling.py, bench/bench_quality.py; docs/DESIGN.md, issue 14 "the labels it
learns from"). Rows a person already reviewed are never listed: their label is gold.

Pure numpy; the kind computes the probabilities (trainer/kinds/classification.py `disputes`).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

LISTED = 500  # items published with the model (the review page's queue); the run folder keeps them all
MAX_INPUT_CHARS = 1000  # a published item's input is cut here (input_truncated: true); the run folder has it whole
MAX_PUBLISHED_BYTES = 256 * 1024  # the published items stop before this much JSON (ModelRegistered stays small)


def disputed_rows(probs: np.ndarray, label_ids: Sequence[int], reviewed: Sequence[bool]) -> np.ndarray:
    """Indices of the unreviewed rows whose label is not the model's answer, likeliest error first
    (lowest probability of the label; ties by index, so the order is stable)."""
    probs = np.asarray(probs, dtype=np.float64)
    ids = np.asarray(label_ids, dtype=np.int64)
    if not len(ids):
        return np.zeros(0, dtype=np.int64)
    label_p = probs[np.arange(len(ids)), ids]
    candidates = np.flatnonzero((probs.argmax(1) != ids) & ~np.asarray(reviewed, dtype=bool))
    return candidates[np.lexsort((candidates, label_p[candidates]))]


def label_review(probs: np.ndarray, label_ids: Sequence[int], classes: Sequence[str], rows, *,
                 listed: int = LISTED) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the record published with the model: counts and the first `listed` items, every disputed item).

    `rows` is a snapshot Split (call_id, input, label, frontier_label, reviewed, normalised_hash) in the
    order of `probs` and `label_ids`."""
    probs = np.asarray(probs, dtype=np.float64)
    order = disputed_rows(probs, label_ids, rows.reviewed)
    answer = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    items = [{"call_id": rows.call_id[i], "normalised_hash": rows.normalised_hash[i], "input": rows.input[i],
              "label": rows.label[i], "frontier_label": rows.frontier_label[i],
              "model_label": classes[int(answer[i])],
              "label_probability": round(float(probs[i, label_ids[i]]), 6),
              "model_probability": round(float(probs[i, answer[i]]), 6)} for i in order.tolist()]
    published, size = [], 0
    for item in items[:listed]:
        if len(item["input"]) > MAX_INPUT_CHARS:
            item = item | {"input": item["input"][:MAX_INPUT_CHARS], "input_truncated": True}
        size += len(json.dumps(item)) + 2
        if size > MAX_PUBLISHED_BYTES:
            break
        published.append(item)
    record = {"rows": int(len(probs)), "reviewed_rows": int(np.sum(np.asarray(rows.reviewed, dtype=bool))),
              "disputed": len(items), "listed": len(published), "items": published}
    return record, items
