"""Calibration and the threshold, in plain numpy (no torch): what the gate and the router trust.

Temperature scaling divides the logits by one scalar T fitted by minimising the negative
log-likelihood on the validation slice; ECE measures calibration on the holdout; the
coverage–accuracy curve, and `choose_threshold`: the lowest confidence threshold whose
kept-request accuracy reaches a given target (descriptive figures: per-field thresholds for the
record, the demo's plots). The threshold a model is served with is trainer.threshold's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

# Temperatures searched: 1/20 .. 20 covers every sane model; the NLL is convex in 1/T.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
ACCURACY_EPSILON = 1e-12


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in the logits' dtype (float32 like Triton)."""
    z = np.asarray(logits) / np.asarray(temperature, dtype=np.asarray(logits).dtype)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """The T minimising NLL on (logits, labels): golden-section search over beta = 1/T."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 1.0
    ratio = (np.sqrt(5.0) - 1) / 2
    lo, hi = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, 1 / a), nll(logits, labels, 1 / b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, 1 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, 1 / b)
    return float(1.0 / ((lo + hi) / 2))


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean confidence in the bin (0 when empty)
    accuracy: float  # share correct in the bin (0 when empty)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[ReliabilityBin]:
    """Equal-width confidence bins over [0, 1]; the last bin includes 1.0."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), n,
                                  float(confidence[mask].mean()) if n else 0.0,
                                  float(correct[mask].mean()) if n else 0.0))
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE = sum over bins of (share of items) * |accuracy - mean confidence|."""
    total = len(confidence)
    if total == 0:
        return 0.0
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in reliability_bins(confidence, correct, bins)))


@dataclass(frozen=True)
class CoverageCurve:
    """One point per distinct confidence, from the highest threshold down to the lowest."""

    threshold: np.ndarray
    kept: np.ndarray
    coverage: np.ndarray
    kept_accuracy: np.ndarray


def coverage_accuracy_curve(confidence: np.ndarray, correct: np.ndarray) -> CoverageCurve:
    """Keeping requests with confidence >= t: coverage and accuracy on the kept ones, for every t."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.cumsum(correct[order])
    # the end of each run of equal confidences: everything up to it is kept at that threshold
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True)) if len(conf) else np.array([], dtype=int)
    kept = ends + 1
    return CoverageCurve(conf[ends], kept, kept / max(len(conf), 1), hits[ends] / np.maximum(kept, 1))


@dataclass(frozen=True)
class ThresholdChoice:
    target_accuracy: float
    threshold: Optional[float]  # None: no threshold reaches the target
    coverage: float
    kept: int
    kept_accuracy: float

    @property
    def predicted_fallback_rate(self) -> float:
        return 1.0 - self.coverage

    def as_dict(self) -> dict:
        return asdict(self) | {"predicted_fallback_rate": self.predicted_fallback_rate}


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float,
                     min_kept: int = 1) -> ThresholdChoice:
    """The lowest threshold whose kept accuracy >= target while keeping >= min_kept items."""
    curve = coverage_accuracy_curve(confidence, correct)
    ok = (curve.kept_accuracy >= target_accuracy - ACCURACY_EPSILON) & (curve.kept >= min_kept)
    if not ok.any():
        return ThresholdChoice(target_accuracy, None, 0.0, 0, 0.0)
    i = int(np.flatnonzero(ok)[-1])  # the curve runs from high thresholds to low
    return ThresholdChoice(target_accuracy, float(curve.threshold[i]), float(curve.coverage[i]),
                           int(curve.kept[i]), float(curve.kept_accuracy[i]))
