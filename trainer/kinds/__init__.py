"""Task kinds of the one trainer pipeline (trainer.pipeline): what differs between classification
and extraction (rows, fine-tune, export task, Triton files, parity, int8, temperature, holdout
evaluation, verification, model card); the pipeline owns everything else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class TrainingRefused(RuntimeError):
    """The run produced nothing servable (parity failed, Triton refused it); the text says why."""


@dataclass
class Evaluation:
    """A served model on the holdout, per item, in the kind-independent terms the threshold and
    the gate need; `checks` names every paired comparison the gate tests ("request" always)."""

    report: dict[str, Any]  # the holdout figures ModelRegistered publishes (evaluate_*_holdout)
    confidence: np.ndarray  # after temperature scaling
    confidence_before: np.ndarray  # at T = 1
    small_ok: np.ndarray
    frontier_ok: np.ndarray
    predicted: list[str]  # canonical answers: agreement is equality
    frontier: list[str]
    checks: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
