"""Inputs outside the label set: learned as a none-of-these class, served as a fallback.

The frontier's out-of-scope answers (the task's `out_of_scope_label`, e.g. "other") and reviewers'
"not in the label set" marks are the training signal. With enough of them in the train split the
classifier gets one more class; at serving time that class is never an answer: the label is the
best in-scope class and the confidence is that class's probability, so probability mass on
"none of these" pushes the request below the threshold and the frontier answers it. The router
needs no change, and the threshold, the gate and the drift watch see out-of-scope traffic as what
it is: requests the small model should not keep.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

# Fewer out-of-scope train rows than this: no extra class (too little to learn from); the rows are
# left out of training and the holdout still counts them against the small model when it keeps them.
MIN_OUT_OF_SCOPE_EXAMPLES = 20


def class_labels(labels: list[str], out_of_scope: Optional[str], train_labels: list[str]) -> list[str]:
    """The classifier's classes: the task's labels, plus the out-of-scope label when train has enough."""
    if out_of_scope and sum(1 for x in train_labels if x == out_of_scope) >= MIN_OUT_OF_SCOPE_EXAMPLES:
        return list(labels) + [out_of_scope]
    return list(labels)


def in_scope_answers(probs: np.ndarray, n_in_scope: int) -> tuple[np.ndarray, np.ndarray]:
    """(best in-scope class index, its probability) per row: what the served model answers."""
    scoped = np.asarray(probs)[:, :n_in_scope]
    best = scoped.argmax(axis=1)
    return best, scoped[np.arange(len(best)), best]


def served_share(confidence: np.ndarray, is_out_of_scope: np.ndarray, threshold: Optional[float]) -> Optional[float]:
    """Share of out-of-scope inputs the small model would serve at the threshold (None: none in the data)."""
    mask = np.asarray(is_out_of_scope, dtype=bool)
    if not mask.any():
        return None
    if threshold is None:
        return 0.0
    return float(np.mean(np.asarray(confidence)[mask] >= threshold))
