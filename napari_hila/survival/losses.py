"""Discrete-time survival: time bins and the censored negative log-likelihood.

Follows Zadeh and Schmid (2020), "Bias in cross-entropy-based training of deep
survival networks", the loss HiLa, CrossFusion and VPTSurv train with
(METHODS 1.6). Time is cut into T bins; a model outputs one hazard logit per
bin, ``h_j = sigmoid(logit_j)`` is the probability of the event in bin j given
survival to it, and ``S_j = prod_{l<=j} (1 - h_l)`` the survival past bin j.

Example::

    >>> import numpy as np, torch
    >>> edges = make_time_bins(np.array([5.0, 9, 14, 30, 3]), np.array([1, 1, 0, 1, 1]))
    >>> bins = time_to_bin(np.array([5.0, 40.0]), edges)
    >>> loss = nll_loss(torch.zeros(2, 4), torch.as_tensor(bins), torch.tensor([1, 0]))
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from napari_hila.errors import CohortError

__all__ = ["edges_from_json", "edges_to_json", "make_time_bins", "nll_loss", "time_to_bin"]


def make_time_bins(times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Bin edges (n_bins + 1,) from the quantiles of the uncensored times.

    ``edges[0] = 0`` and ``edges[-1] = inf`` so every time, including censored
    ones beyond the last event and times in a later cohort, falls in a bin;
    the inner edges are the j/n_bins quantiles (linear interpolation) of the
    times with ``event == 1``. Store the edges with the model: predictions are
    only meaningful on the bins the model was trained with. Tied quantiles
    (many equal event times) give repeated edges, i.e. bins no time falls in;
    the loss handles that, but fewer bins would describe such a cohort better.
    """
    times = np.asarray(times, dtype=float).ravel()
    events = np.asarray(events).ravel()
    if times.shape != events.shape:
        raise CohortError(f"times ({times.size}) and events ({events.size}) differ in length")
    if n_bins < 1:
        raise CohortError(f"n_bins must be at least 1, got {n_bins}")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise CohortError("survival times must be finite and non-negative; check the cohort CSV")
    observed = times[events.astype(bool)]
    if observed.size == 0:
        raise CohortError(
            "no uncensored patient (event = 1) in this cohort or fold: time bins need "
            "observed events; check the event column or use fewer folds"
        )
    inner = np.quantile(observed, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.empty(0)
    return np.concatenate([[0.0], inner, [np.inf]])


def time_to_bin(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index (int64, 0..T-1) of each time: bin j holds ``edges[j] <= t < edges[j+1]``."""
    times = np.asarray(times, dtype=float)
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"time bin edges need at least two values, got {edges.tolist()}")
    bins = np.searchsorted(edges[1:-1], times, side="right")
    return bins.astype(np.int64)


def edges_to_json(edges: np.ndarray) -> list[float | None]:
    """Bin edges for a card or a fold record: the open last edge (inf) becomes null."""
    return [None if math.isinf(e) else float(e) for e in np.asarray(edges, float)]


def edges_from_json(values: list[float | None]) -> np.ndarray:
    """Bin edges back from their JSON form (:func:`edges_to_json`): null is inf."""
    return np.array([math.inf if v is None else float(v) for v in values], float)


def nll_loss(
    logits: torch.Tensor,
    bin_index: torch.Tensor,
    event: torch.Tensor,
    alpha: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Discrete-time negative log-likelihood with right censoring.

    For a patient in bin y (0-based here, ``bin_index``) with censoring
    ``c = 1 - event``, and S_{-1} = 1 (the paper's S_0 with 1-based bins)::

        uncensored = -(1 - c) * (log S_{y-1} + log h_y)   # died in bin y
        censored   = -c * log S_y                         # alive past bin y
        L          = (1 - alpha) * (uncensored + censored) + alpha * uncensored

    ``alpha`` up-weights the uncensored term (0 in HiLa, 0.2 in CrossFusion).
    log h and log(1 - h) are computed as log-sigmoid of the logits, so the
    loss is finite for any finite logits without clamping hazards.
    ``reduction`` is "mean", "sum" or "none" (per patient).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, bins), got shape {tuple(logits.shape)}")
    y = torch.as_tensor(bin_index, device=logits.device).long().view(-1, 1)
    observed = torch.as_tensor(event, device=logits.device).to(logits.dtype).view(-1)
    if y.shape[0] != logits.shape[0] or observed.shape[0] != logits.shape[0]:
        raise ValueError("logits, bin_index and event must have the same batch size")
    if torch.any((y < 0) | (y >= logits.shape[1])):
        raise ValueError(f"bin_index outside 0..{logits.shape[1] - 1}")
    log_hazard = F.logsigmoid(logits)
    log_one_minus = F.logsigmoid(-logits)
    # log S_j for j = -1..T-1, with log S_{-1} = 0.
    log_survival = torch.cat(
        [log_one_minus.new_zeros(logits.shape[0], 1), torch.cumsum(log_one_minus, dim=1)], dim=1
    )
    log_s_before = log_survival.gather(1, y).view(-1)
    log_s_at = log_survival.gather(1, y + 1).view(-1)
    log_h_at = log_hazard.gather(1, y).view(-1)
    uncensored = -observed * (log_s_before + log_h_at)
    censored = -(1.0 - observed) * log_s_at
    loss = (1.0 - alpha) * (uncensored + censored) + alpha * uncensored
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
