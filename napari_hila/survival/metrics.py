"""Harrell's concordance index and per-patient risk aggregation.

The C-index follows Harrell's definition exactly as lifelines'
``concordance_index`` and scikit-survival's ``concordance_index_censored``
implement it, so numbers reported here can be compared with papers that use
either library:

- a pair (i, j) is comparable when patient i died (event 1) and either
  ``time_i < time_j``, or ``time_i == time_j`` and j was censored;
- it is concordant when ``risk_i > risk_j`` and counts 0.5 when the risks tie.

Higher risk means shorter expected survival (risk = -sum_j S_j in the models).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["concordance_index", "patient_risks", "ConcordanceCounts", "concordance_counts"]

# Pairs are counted in blocks of rows so memory stays O(block * n), not O(n^2).
_BLOCK = 2048


class ConcordanceCounts(tuple):
    """``(concordant, tied_risk, comparable)`` pair counts behind a C-index."""

    __slots__ = ()

    def __new__(cls, concordant: int, tied_risk: int, comparable: int):
        return super().__new__(cls, (int(concordant), int(tied_risk), int(comparable)))

    @property
    def concordant(self) -> int:
        return self[0]

    @property
    def tied_risk(self) -> int:
        return self[1]

    @property
    def comparable(self) -> int:
        return self[2]


def _as_arrays(time, event, risk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    time = np.asarray(time, dtype=float).ravel()
    event = np.asarray(event).ravel()
    risk = np.asarray(risk, dtype=float).ravel()
    if not (len(time) == len(event) == len(risk)):
        raise ValueError(
            f"time, event and risk must have the same length (got {len(time)}, {len(event)}, {len(risk)})"
        )
    if np.isnan(time).any() or np.isnan(risk).any():
        raise ValueError("time and risk must not contain NaN")
    if not np.isin(event, (0, 1, True, False)).all():
        raise ValueError("event must be 0 (censored) or 1 (death observed)")
    return time, event.astype(bool), risk


def concordance_counts(time, event, risk) -> ConcordanceCounts:
    """Count concordant, risk-tied and comparable pairs (see module docstring)."""
    time, event, risk = _as_arrays(time, event, risk)
    concordant = tied = comparable = 0
    dead = np.flatnonzero(event)
    for start in range(0, len(dead), _BLOCK):
        rows = dead[start : start + _BLOCK]
        t_i = time[rows][:, None]
        later = (time[None, :] > t_i) | ((time[None, :] == t_i) & ~event[None, :])
        r_i = risk[rows][:, None]
        comparable += int(later.sum())
        concordant += int((later & (r_i > risk[None, :])).sum())
        tied += int((later & (r_i == risk[None, :])).sum())
    return ConcordanceCounts(concordant, tied, comparable)


def concordance_index(time, event, risk) -> float:
    """Harrell's C-index of ``risk`` (higher = shorter survival); NaN if no pair is comparable."""
    counts = concordance_counts(time, event, risk)
    if counts.comparable == 0:
        return float("nan")
    return (counts.concordant + 0.5 * counts.tied_risk) / counts.comparable


def patient_risks(
    patient_ids: Sequence[str], slide_risks: Sequence[float]
) -> tuple[list[str], np.ndarray]:
    """One risk per patient: the mean over that patient's slides.

    Returns the patients in order of first appearance and their mean risks.
    """
    slide_risks = np.asarray(slide_risks, dtype=float)
    if len(patient_ids) != len(slide_risks):
        raise ValueError("one risk per slide is needed")
    order: dict[str, list[int]] = {}
    for index, pid in enumerate(patient_ids):
        order.setdefault(str(pid), []).append(index)
    ids = list(order)
    means = np.array([slide_risks[order[p]].mean() for p in ids], dtype=float)
    return ids, means
