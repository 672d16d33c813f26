"""Harrell's concordance index and per-patient risk aggregation.

The C-index follows Harrell's definition exactly as lifelines'
``concordance_index`` and scikit-survival's ``concordance_index_censored``
implement it, so numbers reported here can be compared with papers that use
either library:

- a pair (i, j) is comparable when patient i died (event 1) and either
  ``time_i < time_j``, or ``time_i == time_j`` and j was censored;
- it is concordant when ``risk_i > risk_j`` and counts 0.5 when the risks tie
  (exactly equal, as lifelines; scikit-survival also ties risks within 1e-8).

Higher risk means shorter expected survival (risk = -sum_j S_j in the models).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["concordance_index", "patient_risks", "ConcordanceCounts", "concordance_counts"]


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
    """Count concordant, risk-tied and comparable pairs (see module docstring).

    O(n log n) time and O(n) memory: patients are put in one sequence, latest
    time first, so the patients comparable with a death are exactly those in
    earlier groups of that sequence; a bottom-up merge sort of the risks then
    counts, for each death, the earlier patients with a lower risk.
    """
    time, event, risk = _as_arrays(time, event, risk)
    if not event.any():
        return ConcordanceCounts(0, 0, 0)
    time_rank = np.unique(time, return_inverse=True)[1].ravel()
    risk_rank = np.unique(risk, return_inverse=True)[1].ravel().astype(np.int64)
    # A group is one time and one status; at a tied time the censored group
    # comes first, since a death is comparable with a censoring at its own time
    # but not with another death then.
    group = 2 * time_rank.astype(np.int64) + (~event).astype(np.int64)
    # Latest group first, and within a group the highest risk first, so no
    # member of a death's own group that precedes it has a lower risk.
    order = np.lexsort((-risk_rank, -group))
    group, risk_rank, dead = group[order], risk_rank[order], event[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    lower = _earlier_and_lower(risk_rank)
    tied = _earlier_groups_with_equal(risk_rank, group_start)
    return ConcordanceCounts(
        int(lower[dead].sum()), int(tied[dead].sum()), int(group_start[dead].sum())
    )


def _earlier_and_lower(values: np.ndarray) -> np.ndarray:
    """For each position p, how many positions q < p hold a value below ``values[p]``.

    A bottom-up merge sort: at each level, neighbouring sorted blocks are
    merged (a stable sort of two sorted runs, linear per level; log2 n levels),
    and an element of a right block gains the left-block elements placed before
    it. Equal values put the right block first, so only strictly lower ones count.
    """
    n = len(values)
    below = np.zeros(n, np.int64)
    place = np.arange(n)
    origin = np.arange(n)  # where the element now at each place started
    current = values.astype(np.int64)
    span = 2 * (int(current.max()) + 1) if n else 2
    width = 1
    while width < n:
        pair_start = place // (2 * width) * (2 * width)
        in_right = place - pair_start >= width
        merge = np.argsort(pair_start * span + 2 * current + ~in_right, kind="stable")
        new_place = np.empty(n, np.int64)
        new_place[merge] = place
        # new place in the pair = left elements below it + right elements before it
        rank_in_pair = new_place[in_right] - pair_start[in_right]
        rank_in_right = place[in_right] - pair_start[in_right] - width
        below[origin[in_right]] += rank_in_pair - rank_in_right
        current, origin = current[merge], origin[merge]
        width *= 2
    return below


def _earlier_groups_with_equal(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """For each position p, how many positions before its group hold ``values[p]``."""
    n = len(values)
    keys = np.sort(values * (n + 1) + np.arange(n))  # by value, then by position
    first_of_value = np.searchsorted(keys, values * (n + 1))
    first_of_group = np.searchsorted(keys, values * (n + 1) + group_start)
    return first_of_group - first_of_value


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
