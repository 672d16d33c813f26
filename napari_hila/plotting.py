"""Matplotlib figures of a model's cohort and of one prediction.

Every function takes an optional ``ax``: without one it makes its own figure
(for PNG reports), with one it draws into it (the viewer's Qt canvas). They
return a small dict of the numbers they drew so captions can quote them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_hila.modelfile.model_card import ModelCard
from napari_hila.results import PredictionResult, survival_curve_at, survival_horizon
from napari_hila.survival.km import GroupComparison, compare_risk_groups

__all__ = [
    "cohort_groups",
    "contribution_values",
    "finite_edges",
    "plot_cohort_km",
    "plot_prompt_contributions",
]

HIGH_COLOUR = "#d62728"
LOW_COLOUR = "#1f77b4"
PATIENT_COLOUR = "#2ca02c"
GROUP_COLOURS = {"high": HIGH_COLOUR, "low": LOW_COLOUR}


def _new_axes(ax, size=(6.4, 4.8)):
    if ax is not None:
        return ax
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    return fig.add_subplot(1, 1, 1)


def finite_edges(edges, horizon: float) -> np.ndarray:
    """Bin edges with a missing or infinite last edge replaced by ``horizon``."""
    values = np.array([np.inf if e is None else float(e) for e in edges], float)
    values[~np.isfinite(values)] = horizon
    return values


def cohort_groups(
    card: ModelCard | Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(time, event, high-risk mask, how the split was made) from a model card.

    Uses the card's out-of-fold risk groups when present (the honest split),
    else risk above the card's threshold.
    """
    card = ModelCard.of(card)
    cohort = card.cohort
    if cohort.risk_group:
        high = np.asarray([g == "high" for g in cohort.risk_group], bool)
        how = "out-of-fold risk, split at each fold's training median"
    else:
        high = cohort.risk > (card.risk_threshold or 0.0)
        how = "risk above the model's threshold"
    return cohort.time, cohort.event, high, how


def _step(ax, curve, colour, label):
    ax.step(curve.times, curve.survival, where="post", color=colour, label=label, linewidth=1.8)
    ax.fill_between(
        curve.times, curve.lower, curve.upper, step="post", color=colour, alpha=0.18, linewidth=0
    )


def plot_cohort_km(
    card: ModelCard | Mapping[str, Any],
    ax=None,
    patient_survival: tuple[np.ndarray, np.ndarray] | np.ndarray | None = None,
    time_bin_edges=None,
    patient_label: str = "this slide (predicted)",
    at_risk_rows: int = 5,
) -> dict[str, Any]:
    """Kaplan-Meier curves of the cohort's high- and low-risk groups, with 95% bands.

    ``patient_survival`` is the slide's predicted S(t) per time bin, either
    ``(edges, survival)`` or just ``survival`` with ``time_bin_edges`` (default:
    the card's); it is drawn as a step over the bins. Numbers at risk (at
    ``at_risk_rows`` times) are written under the x axis. The numbers come from
    :func:`survival.km.compare_risk_groups`; this only draws them. Returns
    ``logrank_p``, group sizes, medians and numbers at risk.
    """
    ax = _new_axes(ax)
    card = ModelCard.of(card)
    time, event, high, how = cohort_groups(card)
    if len(time) == 0:
        _draw_no_cohort(ax)
        return {"split": how, "n_high": 0, "n_low": 0, "logrank_p": None}
    comparison = compare_risk_groups(time, event, high, at_risk_rows)
    for group in comparison.groups:
        if group.curve is not None:
            label = f"{group.name} risk (n={group.n_patients})"
            _step(ax, group.curve, GROUP_COLOURS[group.name], label)
    if patient_survival is not None:
        edges, surv = (
            patient_survival
            if isinstance(patient_survival, tuple)
            else (
                time_bin_edges if time_bin_edges is not None else card.time_bin_edges,
                patient_survival,
            )
        )
        xs, ys = _patient_curve_points(edges, surv, comparison.horizon)
        ax.plot(xs, ys, color=PATIENT_COLOUR, linestyle="--", linewidth=2, label=patient_label)
    _draw_km_frame(ax, comparison, card.time_unit, how)
    _draw_numbers_at_risk(ax, comparison)
    return _km_numbers(comparison, how)


def _km_numbers(comparison: GroupComparison, how: str) -> dict[str, Any]:
    """What :func:`plot_cohort_km` drew, for captions: sizes, p, medians, numbers at risk."""
    info: dict[str, Any] = {
        "split": how,
        "n_high": comparison.high.n_patients,
        "n_low": comparison.low.n_patients,
        "logrank_p": comparison.logrank_p,
    }
    for group in comparison.groups:
        if group.curve is not None:
            info[f"median_{group.name}"] = group.median
    info["at_risk_times"] = comparison.at_risk_times.tolist()
    for group in comparison.groups:
        info[f"at_risk_{group.name}"] = group.at_risk.tolist()
    return info


def _patient_curve_points(edges, survival, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """The model's S(t) as the dock reads it (hazard constant inside a bin), sampled to plot.

    Up to the last finite bin edge or ``horizon``, whichever comes first:
    beyond the last edge the model says nothing.
    """
    survival = np.asarray(survival, float)
    edges = np.asarray([np.inf if e is None else float(e) for e in edges], float)
    end = min(survival_horizon(edges), horizon)
    inner = edges[(edges > 0) & (edges < end)]
    xs = np.unique(np.r_[np.linspace(0.0, end, 120), inner])
    return xs, survival_curve_at(edges, survival, xs)


def _draw_no_cohort(ax) -> None:
    ax.text(
        0.5,
        0.5,
        "this model's card stores no cohort",
        ha="center",
        va="center",
        transform=ax.transAxes,
    )
    ax.set_axis_off()


def _draw_km_frame(ax, comparison: GroupComparison, unit: str, how: str) -> None:
    """Axes limits and labels, the log-rank title and the legend."""
    ax.set_xlim(0, comparison.horizon)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("survival probability")
    p_text = "n/a" if comparison.logrank_p is None else f"{comparison.logrank_p:.3g}"
    # Short lines: the same figure goes into a narrow dock in the viewer.
    split = "out-of-fold risk groups" if how.startswith("out-of-fold") else "risk above threshold"
    ax.set_title(f"log-rank p = {p_text} ({split})", fontsize=8)
    ax.legend(loc="best", fontsize=7, frameon=True, framealpha=0.8)


def _draw_numbers_at_risk(ax, comparison: GroupComparison) -> None:
    """One row per group under the x axis: 'at risk, <group>' then the count at each time."""
    for row, group in enumerate(comparison.groups):
        colour = GROUP_COLOURS[group.name]
        y = -0.2 - 0.08 * row
        ax.text(
            -0.06,
            y,
            f"at risk, {group.name}",
            transform=ax.transAxes,
            ha="right",
            va="center",
            fontsize=7,
            color=colour,
        )
        for t, n in zip(comparison.at_risk_times, group.at_risk, strict=True):
            ax.annotate(
                str(int(n)),
                (t, y),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )


def contribution_values(contributions) -> tuple[np.ndarray, str]:
    """Bar lengths and their unit: cohort risk-SD units when every contribution has them."""
    if contributions and all(c.delta_sd is not None for c in contributions):
        return np.array([c.delta_sd for c in contributions], float), "cohort risk SDs"
    return np.array([c.delta_risk for c in contributions], float), "risk units"


def plot_prompt_contributions(
    result: PredictionResult, ax=None, top: int | None = None
) -> dict[str, Any]:
    """Horizontal bars: how much each prompt moves this slide's risk (red raises it).

    Bars are in units of the model cohort's risk SD when the result has them.
    A contribution inside its noise floor (twice its SD under resampling of
    the slide's patches) gets no bar: it is written "negligible" instead, so
    noise is never drawn as an effect. One bar patch per prompt is kept (of
    zero width when negligible) so a click maps to its prompt.
    """
    contributions = list(result.explanation.contributions)
    ax = _new_axes(ax, size=(6.4, 0.35 * max(len(contributions), 4) + 1.2))
    if not contributions:
        ax.text(
            0.5,
            0.5,
            "this model gives no per-prompt contributions",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return {"n": 0}
    ranked = sorted(contributions, key=lambda c: abs(c.delta_risk), reverse=True)
    if top:
        ranked = ranked[:top]
    ranked = ranked[::-1]  # largest at the top of a barh chart
    values, unit = contribution_values(ranked)
    negligible = np.array([bool(c.negligible) for c in ranked])
    shown = np.where(negligible, 0.0, values)
    labels = [f"[{c.level}] {c.name}" for c in ranked]
    colours = [HIGH_COLOUR if v > 0 else LOW_COLOUR for v in values]
    ax.barh(np.arange(len(values)), shown, color=colours)
    for i in np.flatnonzero(negligible):
        ax.annotate(
            "negligible (within noise)",
            (0, i),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="grey",
        )
    ax.set_yticks(np.arange(len(values)), labels, fontsize=8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"change in risk, {unit} (positive raises it)", fontsize=8)
    exp = result.explanation
    if exp.baseline_risk is not None:
        title = f"risk {exp.risk:.3f} = baseline {exp.baseline_risk:.3f} + sum of prompt bars"
    else:
        method = exp.contribution_method
        title = f"prompt contributions: {method[:90]}{'...' if len(method) > 90 else ''}"
    ax.set_title(title, fontsize=7)
    return {
        "n": len(values),
        "unit": unit,
        "names": [c.name for c in ranked[::-1]],
        "delta_risk": [c.delta_risk for c in ranked[::-1]],
        "values": values[::-1].tolist(),
        "negligible": negligible[::-1].tolist(),
    }


def save_figure(ax, path):
    """Write the figure holding ``ax`` to ``path`` atomically (PNG by suffix)."""
    from napari_hila.io_utils import atomic_path

    fig = ax.figure
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    return Path(path)
