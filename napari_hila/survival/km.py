"""Kaplan-Meier curves, numbers at risk and the log-rank test (via lifelines).

lifelines does the statistics; this module turns its output into plain numpy
so the plotting code, the model card and the viewer never touch pandas.
:func:`compare_risk_groups` computes everything a two-group Kaplan-Meier
figure shows (curves, medians, log-rank p, numbers at risk), so the figure
(``plotting.plot_cohort_km``) only draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# lifelines (with pandas: 1.2-2.1 s) is imported on the first curve or test: this module
# loads with plotting, export and every napari-hila command (tests/test_startup_imports.py).

__all__ = [
    "GroupComparison",
    "KaplanMeierCurve",
    "RiskGroup",
    "compare_risk_groups",
    "kaplan_meier",
    "logrank_p",
    "numbers_at_risk",
    "split_by_risk",
]


@dataclass
class KaplanMeierCurve:
    """A step function S(t) with a pointwise confidence band.

    ``times`` starts at 0; ``survival[i]`` holds on ``[times[i], times[i+1])``.
    The band is lifelines' exponential Greenwood interval at ``1 - alpha``.
    """

    times: np.ndarray
    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n_patients: int
    n_events: int
    alpha: float = 0.05

    def survival_at(self, t: float | np.ndarray) -> np.ndarray:
        """S(t) read off the step function (right-continuous)."""
        idx = np.searchsorted(self.times, np.asarray(t, float), side="right") - 1
        return self.survival[np.clip(idx, 0, None)]

    def median(self) -> float:
        """Median survival time, ``inf`` if S(t) never falls to 0.5."""
        below = np.flatnonzero(self.survival <= 0.5)
        return float(self.times[below[0]]) if len(below) else float("inf")


def _clean(time, event) -> tuple[np.ndarray, np.ndarray]:
    time = np.asarray(time, float).ravel()
    event = np.asarray(event).ravel().astype(bool)
    if len(time) != len(event):
        raise ValueError("time and event must have the same length")
    if len(time) == 0:
        raise ValueError("a Kaplan-Meier curve needs at least one patient")
    return time, event


def kaplan_meier(time, event, alpha: float = 0.05) -> KaplanMeierCurve:
    """Fit the Kaplan-Meier estimator with lifelines and return plain arrays."""
    from lifelines import KaplanMeierFitter

    time, event = _clean(time, event)
    kmf = KaplanMeierFitter(alpha=alpha).fit(time, event)
    sf = kmf.survival_function_
    ci = kmf.confidence_interval_survival_function_
    return KaplanMeierCurve(
        times=sf.index.to_numpy(float),
        survival=sf.iloc[:, 0].to_numpy(float),
        lower=ci.iloc[:, 0].to_numpy(float),
        upper=ci.iloc[:, 1].to_numpy(float),
        n_patients=int(len(time)),
        n_events=int(event.sum()),
        alpha=alpha,
    )


def numbers_at_risk(time, at_times) -> np.ndarray:
    """How many patients are still followed (time >= t) at each of ``at_times``."""
    time = np.asarray(time, float).ravel()
    at_times = np.asarray(at_times, float).ravel()
    return (time[None, :] >= at_times[:, None]).sum(axis=1)


def logrank_p(time, event, group) -> float:
    """Log-rank test p-value between two groups (``group`` is boolean or 0/1).

    NaN when either group is empty: there is nothing to compare.
    """
    from lifelines.statistics import logrank_test

    time, event = _clean(time, event)
    group = np.asarray(group).ravel().astype(bool)
    if group.all() or not group.any():
        return float("nan")
    res = logrank_test(time[group], time[~group], event[group], event[~group])
    return float(res.p_value)


def split_by_risk(risk, threshold: float) -> np.ndarray:
    """Boolean high-risk mask: risk strictly above ``threshold``."""
    return np.asarray(risk, float) > float(threshold)


@dataclass
class RiskGroup:
    """One group of a :class:`GroupComparison`."""

    name: str  # "high" or "low"
    n_patients: int
    curve: KaplanMeierCurve | None  # None for an empty group
    at_risk: np.ndarray  # patients still followed at each of the comparison's at_risk_times

    @property
    def median(self) -> float | None:
        """Median survival time (``inf`` if never reached), None for an empty group."""
        return None if self.curve is None else self.curve.median()


@dataclass
class GroupComparison:
    """A cohort's high- and low-risk groups, as a Kaplan-Meier figure shows them."""

    high: RiskGroup
    low: RiskGroup
    logrank_p: float | None  # None when a group is empty (nothing to compare)
    horizon: float  # the longest follow-up: the figure's time axis ends here
    at_risk_times: np.ndarray  # evenly spaced from 0 to ``horizon``

    @property
    def groups(self) -> tuple[RiskGroup, RiskGroup]:
        return self.high, self.low


def compare_risk_groups(time, event, high, at_risk_points: int = 5) -> GroupComparison:
    """Kaplan-Meier curve, median and numbers at risk of each group, and their log-rank p.

    ``high`` is the boolean high-risk mask; numbers at risk are counted at
    ``at_risk_points`` times evenly spaced from 0 to the longest follow-up.
    """
    time, event = _clean(time, event)
    high = np.asarray(high).ravel().astype(bool)
    if len(high) != len(time):
        raise ValueError("the group mask must have one entry per patient")
    horizon = float(time.max())
    ticks = np.linspace(0.0, horizon, at_risk_points)

    def group(name: str, mask: np.ndarray) -> RiskGroup:
        curve = kaplan_meier(time[mask], event[mask]) if mask.any() else None
        return RiskGroup(name, int(mask.sum()), curve, numbers_at_risk(time[mask], ticks))

    p = logrank_p(time, event, high)
    return GroupComparison(
        high=group("high", high),
        low=group("low", ~high),
        logrank_p=None if np.isnan(p) else p,
        horizon=horizon,
        at_risk_times=ticks,
    )
