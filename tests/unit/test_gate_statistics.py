"""The offline gate's statistics against scipy: the restricted MLE, McNemar, the test's exact size."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.stats import binom, binomtest, norm

from services.common.contracts import PairedCounts
from services.controller.gate import (lower_confidence_bound, mcnemar_exact_p, noninferiority_test, restricted_mle,
                                      score_p_value, score_statistic)

TABLES = [(40, 45, 1000, 0.01), (5, 30, 300, 0.02), (0, 0, 500, 0.01), (12, 3, 300, -0.02), (100, 0, 300, 0.05),
          (7, 7, 350, 0.01), (0, 9, 400, 0.01)]


def numeric_mle(b: int, c: int, n: int, delta: float) -> float:
    def nll(x: float) -> float:
        terms = [(b, x - delta), (c, x), (n - b - c, 1 - 2 * x + delta)]
        return -sum(k * math.log(max(p, 1e-300)) for k, p in terms if k)

    lo, hi = max(0.0, delta) + 1e-12, (1 + delta) / 2 - 1e-12
    return minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x


@pytest.mark.parametrize("b,c,n,delta", TABLES)
def test_restricted_mle_maximises_the_likelihood_under_the_null(b, c, n, delta):
    assert restricted_mle(b, c, n, delta) == pytest.approx(numeric_mle(b, c, n, delta), abs=1e-6)


@pytest.mark.parametrize("b,c", [(10, 2), (25, 40), (3, 3), (0, 12)])
def test_at_margin_zero_the_statistic_is_mcnemars(b, c):
    n = 500
    assert score_statistic(b, c, n, 0.0) == pytest.approx((b - c) / math.sqrt(b + c))
    assert score_p_value(b, c, n, 0.0) == pytest.approx(norm.sf((b - c) / math.sqrt(b + c)))


def test_exact_mcnemar_matches_scipy_and_a_hand_computed_table():
    assert mcnemar_exact_p(10, 2) == pytest.approx(binomtest(10, 12, 0.5).pvalue)
    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert mcnemar_exact_p(0, 0) == 1.0


def rejection_probability(n: int, p_frontier_only: float, p_small_only: float, margin: float, alpha: float) -> float:
    """P(the test rejects H0) under a trinomial (small only, frontier only, concordant), exactly."""
    total = 0.0
    for b in range(n + 1):
        pb = binom.pmf(b, n, p_small_only)
        if pb < 1e-11:
            continue
        cs = np.arange(n - b + 1)
        pc = binom.pmf(cs, n - b, p_frontier_only / (1 - p_small_only))
        total += pb * sum(w for c, w in zip(cs, pc) if w >= 1e-11 and score_p_value(b, c, n, margin) < alpha)
    return total


@pytest.mark.parametrize("n,p_frontier_only", [(300, 0.05), (300, 0.12), (500, 0.03)])
def test_size_at_the_null_boundary_is_near_alpha(n, p_frontier_only):
    margin = 0.01  # true difference exactly -margin: the worst case a pass must guard against
    size = rejection_probability(n, p_frontier_only, p_frontier_only - margin, margin, 0.05)
    assert 0.035 < size < 0.056


def test_a_model_worse_by_twice_the_margin_almost_never_passes_and_an_equal_one_usually_does():
    assert rejection_probability(600, 0.06, 0.04, 0.01, 0.05) < 0.01
    assert rejection_probability(3000, 0.03, 0.03, 0.01, 0.05) > 0.65  # power 0.72 exactly


@pytest.mark.parametrize("b,c,n", [(40, 45, 1000), (5, 30, 300), (0, 0, 500), (30, 10, 400)])
def test_lower_bound_inverts_the_test(b, c, n):
    low = lower_confidence_bound(b, c, n, 0.05)
    assert score_p_value(b, c, n, -low) == pytest.approx(0.05, abs=1e-6)
    assert low <= (b - c) / n
    for margin in (0.005, 0.01, 0.02, 0.05):  # the test passes exactly when -margin lies below the bound
        assert (score_p_value(b, c, n, margin) < 0.05) == (-margin < low)


def test_lower_bound_agrees_with_the_wald_bound_on_a_large_table():
    b, c, n = 400, 420, 10_000
    d = (b - c) / n
    wald = d - norm.isf(0.05) * math.sqrt(((b + c) / n - d * d) / n)
    assert lower_confidence_bound(b, c, n, 0.05) == pytest.approx(wald, abs=5e-4)


def test_examples_needed_is_where_the_same_rates_first_pass():
    table = PairedCounts(both_correct=270, small_only=14, frontier_only=16, neither=20)  # n = 320, d = -0.00625
    test = noninferiority_test(table, 0.01, 0.05)
    assert not test.shown and not test.worse_beyond_margin
    needed = test.examples_needed()
    scale = needed / test.n
    assert score_p_value(14 * scale, 16 * scale, needed, 0.01) < 0.05
    scale_less = (needed - 2) / test.n
    assert score_p_value(14 * scale_less, 16 * scale_less, needed - 2, 0.01) >= 0.05


def test_identical_models_are_non_inferior_on_enough_data():
    test = noninferiority_test(PairedCounts(both_correct=450, neither=50), 0.01, 0.05)
    assert test.shown and test.difference == 0 and test.mcnemar_p == 1.0
