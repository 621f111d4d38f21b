"""Holdout evaluation of the small model against the gold labels, beside the frontier's answers.

Gold is the reviewed label where a person reviewed the call, else the frontier's answer, so the
frontier is right by construction on the unreviewed part; the report therefore gives the gold
counts and the same figures on the reviewed slice alone, where both are graded by a person.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from services.common.contracts import PairedCounts

TOP_CONFUSION_PAIRS = 15


def paired_counts(small_correct: np.ndarray, frontier_correct: np.ndarray) -> PairedCounts:
    s, f = np.asarray(small_correct, dtype=bool), np.asarray(frontier_correct, dtype=bool)
    return PairedCounts(both_correct=int((s & f).sum()), small_only=int((s & ~f).sum()),
                        frontier_only=int((~s & f).sum()), neither=int((~s & ~f).sum()))


def per_class(labels: list[str], gold: list[str], predicted: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every label (0 where undefined)."""
    tp, pred_n, gold_n = Counter(), Counter(predicted), Counter(gold)
    for g, p in zip(gold, predicted):
        if g == p:
            tp[g] += 1
    out = {}
    for label in labels:
        precision = tp[label] / pred_n[label] if pred_n[label] else 0.0
        recall = tp[label] / gold_n[label] if gold_n[label] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": gold_n[label]}
    return out


def macro_f1(classes: dict[str, dict[str, float]]) -> float:
    """Mean F1 over the labels that occur in the gold labels."""
    present = [c["f1"] for c in classes.values() if c["support"]]
    return float(np.mean(present)) if present else 0.0


def confusion_pairs(gold: list[str], predicted: list[str], top: int = TOP_CONFUSION_PAIRS) -> list[dict[str, Any]]:
    """The most frequent (gold, predicted) mistakes."""
    pairs = Counter((g, p) for g, p in zip(gold, predicted) if g != p)
    return [{"gold": g, "predicted": p, "count": n} for (g, p), n in pairs.most_common(top)]


def confusion_matrix(labels: list[str], gold: list[str], predicted: list[str]) -> np.ndarray:
    """Rows gold, columns predicted, in `labels` order (labels outside the list are dropped)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for g, p in zip(gold, predicted):
        if g in index and p in index:
            matrix[index[g], index[p]] += 1
    return matrix


def _accuracies(gold: list[str], frontier: list[str], predicted: list[str]) -> dict[str, Any]:
    n = len(gold)
    small_ok = np.array([p == g for p, g in zip(predicted, gold)], dtype=bool)
    frontier_ok = np.array([f == g for f, g in zip(frontier, gold)], dtype=bool)
    return {
        "n": n,
        "small_accuracy": float(small_ok.mean()) if n else 0.0,
        "frontier_accuracy": float(frontier_ok.mean()) if n else 0.0,
        "agreement": float(np.mean([p == f for p, f in zip(predicted, frontier)])) if n else 0.0,
        "paired": paired_counts(small_ok, frontier_ok).model_dump(),
    }


def evaluate_holdout(labels: list[str], gold: list[str], frontier: list[str], reviewed: list[bool],
                     predicted: list[str]) -> dict[str, Any]:
    """Every holdout figure the model card, ModelRegistered and the gate need."""
    classes = per_class(labels, gold, predicted)
    pick = [i for i, r in enumerate(reviewed) if r]
    report = _accuracies(gold, frontier, predicted) | {
        "gold_reviewed": len(pick),
        "gold_frontier": len(gold) - len(pick),
        "macro_f1": macro_f1(classes),
        "per_class": classes,
        "confusion_pairs": confusion_pairs(gold, predicted),
        "reviewed_only": _accuracies([gold[i] for i in pick], [frontier[i] for i in pick],
                                     [predicted[i] for i in pick]),
    }
    return report
