"""Kaplan-Meier curves, numbers at risk and the log-rank test (via lifelines).

lifelines does the statistics; this module turns its output into plain numpy
so the plotting code, the model card and the viewer never touch pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# lifelines (with pandas: 1.2-2.1 s) is imported on the first curve or test: this module
# loads with plotting, export and every napari-hila command (tests/test_startup_imports.py).

__all__ = [
    "KaplanMeierCurve",
    "kaplan_meier",
    "numbers_at_risk",
    "logrank_p",
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
