"""Calibration, ECE and threshold selection on synthetic score sets with known answers."""
import numpy as np
import pytest

from trainer.calibrate import (choose_threshold, coverage_accuracy_curve, expected_calibration_error,
                               fit_temperature, nll, reliability_bins, softmax)


def sample_labels(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    probs = softmax(logits.astype(np.float64))
    u = rng.random(len(probs))[:, None]
    return (probs.cumsum(axis=1) < u).sum(axis=1)


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_temperature_recovers_the_scale_of_overconfident_logits(scale: float) -> None:
    rng = np.random.default_rng(0)
    calibrated = rng.normal(0, 2.0, size=(20000, 6))
    labels = sample_labels(calibrated, rng)  # labels drawn from softmax(calibrated): T=1 is right there

    temperature = fit_temperature(calibrated * scale, labels)

    assert temperature == pytest.approx(scale, rel=0.05)
    assert nll(calibrated * scale, labels, temperature) <= nll(calibrated * scale, labels, 1.0) + 1e-9


def test_temperature_scaling_lowers_ece_of_overconfident_scores() -> None:
    rng = np.random.default_rng(1)
    calibrated = rng.normal(0, 1.5, size=(5000, 5))
    labels = sample_labels(calibrated, rng)
    logits = calibrated * 4.0
    temperature = fit_temperature(logits[:2500], labels[:2500])

    def ece(t: float) -> float:
        p = softmax(logits[2500:], t)
        return expected_calibration_error(p.max(1), p.argmax(1) == labels[2500:])

    assert ece(temperature) < ece(1.0) / 3


def test_fit_temperature_of_nothing_is_one() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_softmax_keeps_float32_and_sums_to_one() -> None:
    p = softmax(np.array([[1.0, 2.0, 3.0]], dtype=np.float32), 2.0)
    assert p.dtype == np.float32
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(p, softmax(np.array([[0.5, 1.0, 1.5]])), rtol=1e-6)


def test_ece_by_hand() -> None:
    # bin [0.9, 1.0): accuracy 0.5 at confidence 0.9; bin [0.6, 0.7): accuracy 1 at 0.6
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 0, 1, 1], dtype=bool)
    assert expected_calibration_error(conf, correct, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_ece_of_perfectly_calibrated_bins_is_zero() -> None:
    conf = np.array([0.75] * 4 + [0.5] * 2 + [1.0])
    correct = np.array([1, 1, 1, 0, 1, 0, 1], dtype=bool)
    assert expected_calibration_error(conf, correct, bins=10) == pytest.approx(0.0)
    bins = reliability_bins(conf, correct, bins=10)
    assert sum(b.count for b in bins) == 7
    assert bins[-1].count == 1  # confidence 1.0 lands in the last bin


CONF = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
CORRECT = np.array([1, 1, 1, 0, 1, 0], dtype=bool)


def test_curve_points() -> None:
    curve = coverage_accuracy_curve(CONF, CORRECT)
    np.testing.assert_allclose(curve.threshold, CONF)
    np.testing.assert_allclose(curve.coverage, np.arange(1, 7) / 6)
    np.testing.assert_allclose(curve.kept_accuracy, [1, 1, 1, 0.75, 0.8, 4 / 6])


@pytest.mark.parametrize(("target", "threshold", "coverage", "kept_accuracy"), [
    (0.8, 0.6, 5 / 6, 0.8),  # the lowest threshold reaching 0.8, not the first crossing from the top
    (0.9, 0.8, 0.5, 1.0),
    (0.6, 0.5, 1.0, 4 / 6),
])
def test_choose_threshold_picks_the_lowest_that_reaches_the_target(target, threshold, coverage, kept_accuracy) -> None:
    choice = choose_threshold(CONF, CORRECT, target)
    assert choice.threshold == pytest.approx(threshold)
    assert choice.coverage == pytest.approx(coverage)
    assert choice.kept_accuracy == pytest.approx(kept_accuracy)
    assert choice.predicted_fallback_rate == pytest.approx(1 - coverage)


def test_no_threshold_reaches_parity() -> None:
    choice = choose_threshold(CONF, CORRECT, 1.01)
    assert choice.threshold is None
    assert (choice.coverage, choice.kept, choice.predicted_fallback_rate) == (0.0, 0, 1.0)


def test_min_kept_refuses_tiny_kept_sets() -> None:
    assert choose_threshold(CONF, CORRECT, 1.0, min_kept=3).threshold == pytest.approx(0.8)
    assert choose_threshold(CONF, CORRECT, 1.0, min_kept=4).threshold is None


def test_tied_confidences_are_kept_or_dropped_together() -> None:
    conf = np.array([0.9, 0.9, 0.5])
    correct = np.array([1, 0, 1], dtype=bool)
    assert choose_threshold(conf, correct, 0.6).threshold == pytest.approx(0.5)
    assert choose_threshold(conf, correct, 0.9).threshold is None  # cannot keep one of two 0.9s


def test_float32_confidence_at_threshold_is_kept() -> None:
    conf = np.array([0.8123456, 0.7], dtype=np.float32)
    choice = choose_threshold(conf, np.array([1, 0], dtype=bool), 1.0)
    assert float(conf[0]) >= choice.threshold  # what the router compares, from Triton's FP32
