"""Discrete-time NLL and time bins, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _model_fixtures import one_torch_thread  # noqa: F401

from napari_hila.errors import CohortError
from napari_hila.survival.losses import make_time_bins, nll_loss, time_to_bin


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _hand_nll(logits: list[float], y: int, event: int, alpha: float) -> float:
    """Zadeh & Schmid with 0-based bin y: S_{-1} = 1, S_j = prod_{l<=j} (1 - h_l)."""
    h = [_sigmoid(v) for v in logits]
    survival = [1.0]
    for hazard in h:
        survival.append(survival[-1] * (1.0 - hazard))
    c = 1 - event
    uncensored = -(1 - c) * (math.log(survival[y]) + math.log(h[y]))
    censored = -c * math.log(survival[y + 1])
    return (1 - alpha) * (uncensored + censored) + alpha * uncensored


PATIENTS = [  # logits, bin, event
    ([0.3, -1.2, 0.5, 2.0], 0, 1),
    ([-0.7, 0.1, -0.4, 1.1], 2, 1),
    ([1.5, -0.2, 0.0, -2.5], 1, 0),  # censored in bin 1: survived bins 0 and 1
    ([-2.0, -1.0, 0.8, 0.4], 3, 0),  # censored in the last bin
    ([0.9, 0.9, -3.0, 0.2], 3, 1),
]


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0])
def test_nll_matches_hand_computation(alpha):
    logits = torch.tensor([p[0] for p in PATIENTS], dtype=torch.float64)
    bins = torch.tensor([p[1] for p in PATIENTS])
    events = torch.tensor([p[2] for p in PATIENTS])
    expected = [_hand_nll(*p, alpha) for p in PATIENTS]
    per_patient = nll_loss(logits, bins, events, alpha=alpha, reduction="none")
    np.testing.assert_allclose(per_patient.numpy(), expected, rtol=1e-12)
    assert float(nll_loss(logits, bins, events, alpha=alpha)) == pytest.approx(np.mean(expected))
    assert float(nll_loss(logits, bins, events, alpha=alpha, reduction="sum")) == pytest.approx(
        np.sum(expected)
    )


def test_censored_patient_only_penalised_for_dying_early():
    # Censored in bin 1: the loss is -log S_1 and does not depend on later hazards.
    base = torch.tensor([[0.2, -0.3, 5.0, 5.0]])
    changed = torch.tensor([[0.2, -0.3, -5.0, -5.0]])
    args = (torch.tensor([1]), torch.tensor([0]))
    assert float(nll_loss(base, *args)) == pytest.approx(float(nll_loss(changed, *args)))


def test_nll_is_finite_with_extreme_logits_and_has_gradient():
    logits = torch.tensor(
        [[80.0, -80.0, 60.0, -60.0], [-90.0, -90.0, -90.0, -90.0]], requires_grad=True
    )
    loss = nll_loss(logits, torch.tensor([1, 3]), torch.tensor([1, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    # S_0 h_1 with h_0 = sigmoid(80), h_1 = sigmoid(-80): -log = 80 + 80 (up to exp(-80)).
    per = nll_loss(logits.detach(), torch.tensor([1, 3]), torch.tensor([1, 0]), reduction="none")
    assert float(per[0]) == pytest.approx(160.0, rel=1e-6)


def test_nll_rejects_bins_outside_range():
    with pytest.raises(ValueError, match="bin_index"):
        nll_loss(torch.zeros(1, 4), torch.tensor([4]), torch.tensor([1]))


def test_time_bins_are_quartiles_of_uncensored_times():
    times = np.array([2.0, 5, 7, 11, 13, 17, 19, 23, 100, 1])
    events = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1])
    edges = make_time_bins(times, events, n_bins=4)
    observed = np.array([2.0, 5, 11, 13, 19, 23, 1])
    assert edges[0] == 0 and np.isinf(edges[-1])
    np.testing.assert_allclose(edges[1:-1], np.quantile(observed, [0.25, 0.5, 0.75]))
    # 1 and 2 in bin 0; censored 100 beyond every event in the last bin.
    bins = time_to_bin(times, edges)
    assert bins.tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 3, 0]
    # An edge belongs to the bin it starts.
    assert time_to_bin(np.array([edges[1], edges[2]]), edges).tolist() == [1, 2]


def test_time_bins_need_events():
    with pytest.raises(CohortError, match="uncensored"):
        make_time_bins(np.array([1.0, 2.0]), np.array([0, 0]))
    with pytest.raises(CohortError, match="non-negative"):
        make_time_bins(np.array([-1.0, 2.0]), np.array([1, 1]))
