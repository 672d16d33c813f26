"""C-index, Kaplan-Meier and log-rank checked against lifelines and scikit-survival."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hila.survival.km import kaplan_meier, logrank_p, numbers_at_risk, split_by_risk
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
