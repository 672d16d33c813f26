"""C-index, Kaplan-Meier and log-rank checked against worked-by-hand examples, lifelines and scikit-survival."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_hila.survival.km import (
    compare_risk_groups,
    kaplan_meier,
    logrank_p,
    numbers_at_risk,
    split_by_risk,
)
from napari_hila.survival.metrics import concordance_counts, concordance_index, patient_risks


def _random_cohort(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    # Integer times and rounded risks force ties in both, plus heavy censoring.
    time = rng.integers(1, 40, n).astype(float)
    event = rng.random(n) < 0.55
    risk = np.round(rng.normal(size=n) - 0.03 * time, 1)
    return time, event, risk


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cindex_equals_lifelines_and_sksurv(seed):
    from lifelines.utils import concordance_index as lifelines_ci
    from sksurv.metrics import concordance_index_censored

    time, event, risk = _random_cohort(seed)
    ours = concordance_index(time, event, risk)
    # lifelines scores predicted survival time: higher = longer, so pass -risk.
    theirs_ll = lifelines_ci(time, -risk, event)
    sk = concordance_index_censored(event, time, risk)
    assert ours == pytest.approx(theirs_ll, abs=1e-12)
    assert ours == pytest.approx(sk[0], abs=1e-12)
    counts = concordance_counts(time, event, risk)
    assert (counts.concordant, counts.tied_risk) == (sk[1], sk[3])
    assert counts.comparable == sk[1] + sk[2] + sk[3]


def _pair_counts_by_definition(time, event, risk):
    """The module docstring's definition, pair by pair (O(n^2), small n only)."""
    later = (time[None, :] > time[:, None]) | ((time[None, :] == time[:, None]) & ~event[None, :])
    comparable = later & event[:, None]
    return (
        int((comparable & (risk[:, None] > risk[None, :])).sum()),
        int((comparable & (risk[:, None] == risk[None, :])).sum()),
        int(comparable.sum()),
    )


def test_cindex_counts_equal_the_pairwise_definition():
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(1, 80))
        # few distinct times and risks: most pairs tie in one or both
        time = rng.integers(0, rng.integers(1, 8), n).astype(float)
        event = rng.random(n) < rng.random()
        risk = rng.integers(0, rng.integers(1, 6), n).astype(float)
        assert tuple(concordance_counts(time, event, risk)) == _pair_counts_by_definition(
            time, event, risk
        )


@pytest.mark.parametrize("distinct_times", [5, 300, None])
def test_cindex_equals_lifelines_and_sksurv_on_a_large_cohort(distinct_times):
    from lifelines.utils import concordance_index as lifelines_ci
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(distinct_times or 0)
    n = 4000
    time = rng.random(n) if distinct_times is None else rng.integers(0, distinct_times, n) * 1.0
    event = rng.random(n) < 0.4
    risk = np.round(rng.normal(size=n) - 0.3 * time / time.max(), 1)  # many tied risks
    sk = concordance_index_censored(event, time, risk)
    counts = concordance_counts(time, event, risk)
    assert (counts.concordant, counts.tied_risk) == (sk[1], sk[3])
    assert counts.comparable == sk[1] + sk[2] + sk[3]
    ours = concordance_index(time, event, risk)
    assert ours == pytest.approx(lifelines_ci(time, -risk, event), abs=1e-12)
    assert ours == pytest.approx(sk[0], abs=1e-12)


def test_cindex_simple_cases():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 1, 0])
    assert concordance_index(time, event, [4, 3, 2, 1]) == 1.0
    assert concordance_index(time, event, [1, 2, 3, 4]) == 0.0
    assert concordance_index(time, event, [1, 1, 1, 1]) == 0.5
    # death and censoring at the same time: comparable (the censored one outlived)
    assert concordance_counts([2.0, 2.0], [1, 0], [1.0, 0.0]).comparable == 1
    # two deaths at the same time: not comparable
    assert np.isnan(concordance_index([2.0, 2.0], [1, 1], [1.0, 0.0]))
    assert np.isnan(concordance_index([1.0, 2.0], [0, 0], [1.0, 0.0]))  # no death
    assert np.isnan(concordance_index([], [], []))
    # the censored patient at the death's time and the later one both count
    assert concordance_counts([1.0, 3.0, 3.0, 5.0], [0, 1, 0, 0], [9.0, 2.0, 2.0, 1.0]) == (
        1,
        1,
        2,
    )


def test_cindex_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        concordance_index([1, 2], [1], [0.1, 0.2])
    with pytest.raises(ValueError, match="event"):
        concordance_index([1, 2], [1, 2], [0.1, 0.2])


def test_patient_risk_is_mean_over_slides():
    ids, risks = patient_risks(["a", "b", "a", "c"], [1.0, 5.0, 3.0, -1.0])
    assert ids == ["a", "b", "c"]
    np.testing.assert_allclose(risks, [2.0, 5.0, -1.0])


def test_kaplan_meier_matches_lifelines_and_hand_computation():
    from lifelines import KaplanMeierFitter

    time, event, _ = _random_cohort(5, 120)
    curve = kaplan_meier(time, event)
    kmf = KaplanMeierFitter().fit(time, event)
    grid = np.linspace(0, 45, 91)
    np.testing.assert_allclose(
        curve.survival_at(grid), kmf.survival_function_at_times(grid).to_numpy()
    )
    assert np.all(curve.lower <= curve.survival + 1e-12)
    assert np.all(curve.upper >= curve.survival - 1e-12)
    # product-limit by hand at the first death time
    t0 = np.min(time[event])
    at_risk = np.sum(time >= t0)
    deaths = np.sum((time == t0) & event)
    assert curve.survival_at(t0) == pytest.approx(1 - deaths / at_risk)
    assert curve.n_events == int(event.sum())


def test_kaplan_meier_equals_the_product_limit_worked_by_hand():
    """Eight patients, a tie between a death and a censoring at t=2 and two deaths at t=5.

    t   at risk n  deaths d   S(t) = S(t-) * (1 - d/n)        Greenwood term d/(n(n-d))
    1   8          1          7/8                   = 0.875   1/56
    2   7          1          7/8 * 6/7             = 0.75    1/42   (the censored 2 still counts)
    3   5          1          3/4 * 4/5             = 0.6     1/20
    4   4          0 (cens.)  0.6
    5   3          2          3/5 * 1/3             = 0.2     2/3
    6   1          0 (cens.)  0.2
    Median: the first t with S(t) <= 0.5 is 5.
    Band (exponential Greenwood, lifelines' and R's conf.type="log-log"): with
    v = sum of the Greenwood terms / log(S)^2, the bounds are
    exp(-exp(log(-log S) +- z sqrt(v))); at t=5: v = (1/56 + 1/42 + 1/20 + 2/3) / log(0.2)^2.
    """
    time = np.array([1, 2, 2, 3, 4, 5, 5, 6], float)
    event = np.array([1, 1, 0, 1, 0, 1, 1, 0])
    curve = kaplan_meier(time, event)
    np.testing.assert_array_equal(curve.times, [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(curve.survival, [1, 7 / 8, 3 / 4, 3 / 5, 3 / 5, 1 / 5, 1 / 5])
    assert curve.median() == 5.0 and curve.n_patients == 8 and curve.n_events == 5
    np.testing.assert_array_equal(numbers_at_risk(time, [0, 2, 3, 5, 6]), [8, 7, 5, 3, 1])
    z = 1.959963984540054  # the standard normal's 97.5th percentile
    greenwood = {1: 1 / 56, 2: 1 / 56 + 1 / 42, 3: 1 / 56 + 1 / 42 + 1 / 20}
    greenwood[5] = greenwood[3] + 2 / 3
    for t, total in greenwood.items():
        s = float(curve.survival_at(t))
        half_width = z * np.sqrt(total / np.log(s) ** 2)
        i = list(curve.times).index(t)
        assert curve.lower[i] == pytest.approx(np.exp(-np.exp(np.log(-np.log(s)) + half_width)))
        assert curve.upper[i] == pytest.approx(np.exp(-np.exp(np.log(-np.log(s)) - half_width)))
    assert curve.lower[5] == pytest.approx(0.0095838, abs=1e-7)  # the numbers, once, in full
    assert curve.upper[5] == pytest.approx(0.5727365, abs=1e-7)


def test_logrank_equals_the_test_worked_by_hand():
    """Group A dies at 1, 2, 3 and 5; group B is censored at 2, 4 and 6 and dies at 5.

    At each death time, with n at risk (n_A of them in A) and d deaths:
    E_A = d n_A / n and V = d (n_A/n) (1 - n_A/n) (n - d) / (n - 1).
    t   n  n_A  d  d_A   E_A          V
    1   8  4    1  1     4/8 = 1/2    1/2 * 1/2 * 7/7     = 1/4
    2   7  3    1  1     3/7          3/7 * 4/7 * 6/6     = 12/49
    3   5  2    1  1     2/5          2/5 * 3/5 * 4/4     = 6/25
    5   3  1    2  1     2/3          2 * 1/3 * 2/3 * 1/2 = 2/9
    O_A = 4, E_A = 419/210, O_A - E_A = 421/210, V = 42209/44100, so
    chi2 = (421/210)^2 / (42209/44100) = 177241/42209 = 4.1991 on 1 df and
    p = P(chi2_1 > 4.1991) = erfc(sqrt(chi2 / 2)) = 0.04044.
    """
    from fractions import Fraction as F

    expected_a = F(1, 2) + F(3, 7) + F(2, 5) + F(2, 3)
    variance = F(1, 4) + F(12, 49) + F(6, 25) + F(2, 9)
    chi2 = (4 - expected_a) ** 2 / variance
    assert (expected_a, variance, chi2) == (F(419, 210), F(42209, 44100), F(177241, 42209))
    time = np.array([1, 2, 3, 5, 2, 4, 5, 6], float)
    event = np.array([1, 1, 1, 1, 0, 0, 1, 0])
    in_a = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    p = logrank_p(time, event, in_a)
    assert p == pytest.approx(math.erfc(math.sqrt(float(chi2) / 2)), rel=1e-9)
    assert p == pytest.approx(0.040445, abs=1e-6)
    assert logrank_p(time, event, ~in_a) == pytest.approx(p)  # symmetric in the groups


def test_group_comparison_equals_the_worked_examples():
    """The log-rank example's groups, as the Kaplan-Meier figure shows them.

    A (high) dies at 1, 2, 3, 5: S = 3/4, 1/2, 1/4, 0, median 2. B (low) is
    censored at 2, 4, 6 and dies at 5 with 2 at risk: S = 1/2 from 5, median 5.
    Numbers at risk at 0, 2, 4, 6 (4 points up to the longest follow-up, 6):
    A 4, 3, 1, 0; B 4, 4, 3, 1. p is the worked log-rank test's 0.040445.
    """
    time = np.array([1, 2, 3, 5, 2, 4, 5, 6], float)
    event = np.array([1, 1, 1, 1, 0, 0, 1, 0])
    in_a = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    comparison = compare_risk_groups(time, event, in_a, at_risk_points=4)
    high, low = comparison.groups
    assert comparison.logrank_p == pytest.approx(0.040445, abs=1e-6)
    assert comparison.horizon == 6.0
    np.testing.assert_array_equal(comparison.at_risk_times, [0, 2, 4, 6])
    assert (high.name, high.n_patients, low.name, low.n_patients) == ("high", 4, "low", 4)
    np.testing.assert_array_equal(high.at_risk, [4, 3, 1, 0])
    np.testing.assert_array_equal(low.at_risk, [4, 4, 3, 1])
    np.testing.assert_allclose(high.curve.survival_at([1, 2, 3, 5]), [3 / 4, 1 / 2, 1 / 4, 0])
    np.testing.assert_allclose(low.curve.survival_at([4.9, 5, 6]), [1, 1 / 2, 1 / 2])
    assert (high.median, low.median) == (2.0, 5.0)

    # the product-limit example as one group: the other is empty, nothing to compare
    time = np.array([1, 2, 2, 3, 4, 5, 5, 6], float)
    event = np.array([1, 1, 0, 1, 0, 1, 1, 0])
    alone = compare_risk_groups(time, event, np.zeros(8, bool), at_risk_points=4)
    assert alone.logrank_p is None and alone.high.curve is None and alone.high.median is None
    np.testing.assert_array_equal(alone.high.at_risk, [0, 0, 0, 0])
    np.testing.assert_array_equal(alone.low.at_risk, [8, 7, 4, 1])  # at 0, 2, 4, 6
    np.testing.assert_allclose(
        alone.low.curve.survival, [1, 7 / 8, 3 / 4, 3 / 5, 3 / 5, 1 / 5, 1 / 5]
    )
    assert alone.low.median == 5.0
    with pytest.raises(ValueError, match="one entry per patient"):
        compare_risk_groups(time, event, np.zeros(7, bool))


def test_numbers_at_risk_and_median():
    time = np.array([1, 2, 2, 5, 8], float)
    np.testing.assert_array_equal(numbers_at_risk(time, [0, 2, 3, 9]), [5, 4, 2, 0])
    curve = kaplan_meier(time, [1, 1, 1, 1, 1])
    assert curve.median() == 2.0


def test_logrank_matches_lifelines():
    from lifelines.statistics import logrank_test

    time, event, risk = _random_cohort(7, 200)
    high = split_by_risk(risk, np.median(risk))
    expected = logrank_test(time[high], time[~high], event[high], event[~high]).p_value
    assert logrank_p(time, event, high) == pytest.approx(expected)
    assert np.isnan(logrank_p(time, event, np.ones_like(high)))
    # a strong separation gives a small p
    t = np.r_[np.full(30, 2.0), np.full(30, 20.0)]
    assert logrank_p(t, np.ones(60), np.r_[np.ones(30), np.zeros(30)]) < 1e-6
