"""Holdout evaluation of an extraction model: per field and per request, beside the frontier.

Per field: exact match (the value, or its absence, equals the gold) and span-F1 over values
(a predicted value is a true positive when it equals the gold value, as in Span-ConveRT's exact
span F1; a wrong value counts as both a false positive and a false negative). Per request:
exact match of every field, which is the correctness the threshold, the paired table and the
gate use. Values compare with whitespace collapsed. Gold is the reviewed answer where a person
reviewed the call, else the frontier's, so every figure is also given on the reviewed slice.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np

from trainer.evaluate import paired_counts

Values = dict[str, Optional[str]]


def normalise_value(value: Any) -> Optional[str]:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def values_of(label: Optional[str], fields: Sequence[str]) -> Values:
    """A JSON answer's fields, normalised; an unreadable answer reads as all-null."""
    try:
        obj = json.loads(label) if label else {}
    except json.JSONDecodeError:
        obj = {}
    if not isinstance(obj, dict):
        obj = {}
    return {f: normalise_value(obj.get(f)) for f in fields}


def field_scores(gold: Sequence[Values], predicted: Sequence[Values], name: str) -> dict[str, float]:
    """Exact match, precision, recall, span-F1, support (gold values) and predicted values of one field."""
    g = [row[name] for row in gold]
    p = [row[name] for row in predicted]
    tp = sum(1 for a, b in zip(g, p) if a is not None and a == b)
    n_pred = sum(1 for b in p if b is not None)
    n_gold = sum(1 for a in g if a is not None)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"exact_match": float(np.mean([a == b for a, b in zip(g, p)])) if g else 0.0,
            "precision": precision, "recall": recall, "span_f1": f1, "support": n_gold, "predicted": n_pred}


def request_correct(gold: Sequence[Values], predicted: Sequence[Values]) -> np.ndarray:
    return np.array([a == b for a, b in zip(gold, predicted)], dtype=bool)


def field_correct(gold: Sequence[Values], predicted: Sequence[Values], name: str) -> np.ndarray:
    return np.array([a[name] == b[name] for a, b in zip(gold, predicted)], dtype=bool)


def _figures(fields: Sequence[str], gold: list[Values], frontier: list[Values], predicted: list[Values]) -> dict[str, Any]:
    n = len(gold)
    small_ok, frontier_ok = request_correct(gold, predicted), request_correct(gold, frontier)
    per_field = {}
    for name in fields:
        small, front = field_scores(gold, predicted, name), field_scores(gold, frontier, name)
        per_field[name] = {"small": small, "frontier": front,
                           "agreement": float(np.mean(field_correct(frontier, predicted, name))) if n else 0.0,
                           "null_baseline_exact_match": float(np.mean([g[name] is None for g in gold])) if n else 0.0}
    return {
        "n": n,
        "small_accuracy": float(small_ok.mean()) if n else 0.0,  # request-level exact match
        "frontier_accuracy": float(frontier_ok.mean()) if n else 0.0,
        "agreement": float(request_correct(frontier, predicted).mean()) if n else 0.0,
        "paired": paired_counts(small_ok, frontier_ok).model_dump(),
        "macro_f1": float(np.mean([per_field[f]["small"]["span_f1"] for f in fields])) if fields else 0.0,
        "frontier_macro_f1": float(np.mean([per_field[f]["frontier"]["span_f1"] for f in fields])) if fields else 0.0,
        "per_field": per_field,
    }


def evaluate_extraction_holdout(fields: Sequence[str], gold: Sequence[str], frontier: Sequence[str],
                                reviewed: Sequence[bool], predicted: Sequence[str]) -> dict[str, Any]:
    """Every holdout figure the model card, ModelRegistered and the gate need (labels are JSON)."""
    g = [values_of(x, fields) for x in gold]
    f = [values_of(x, fields) for x in frontier]
    p = [values_of(x, fields) for x in predicted]
    pick = [i for i, r in enumerate(reviewed) if r]
    return _figures(fields, g, f, p) | {
        "gold_reviewed": len(pick),
        "gold_frontier": len(g) - len(pick),
        "reviewed_only": _figures(fields, [g[i] for i in pick], [f[i] for i in pick], [p[i] for i in pick]),
    }
