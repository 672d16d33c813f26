"""Batched log-domain Sinkhorn against POT, marginals, masking and gradients."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from _model_fixtures import one_torch_thread  # noqa: F401

from napari_hila.models.sinkhorn import sinkhorn_log


def _cost(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.uniform(0.0, 2.0, size=(n, k))  # 1 - cosine similarity lies in [0, 2]


def _pot_plan(cost: np.ndarray, eps: float) -> np.ndarray:
    n, k = cost.shape
    return ot.sinkhorn(
        np.full(n, 1.0 / n),
        np.full(k, 1.0 / k),
        cost,
        eps,
        method="sinkhorn_log",
        numItermax=20000,
        stopThr=1e-13,
    )


@pytest.mark.parametrize("eps", [0.5, 0.1, 0.03])
def test_plan_matches_pot_float64(eps):
    cost = _cost(np.random.default_rng(1), 120, 8)
    ours = sinkhorn_log(torch.from_numpy(cost), eps=eps, max_iter=20000, tol=1e-13)
    np.testing.assert_allclose(ours.plan.numpy(), _pot_plan(cost, eps), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.plan.numpy(), _pot_plan(cost, eps), rtol=1e-7, atol=1e-15)


def test_float32_at_small_eps_matches_pot_float64():
    cost = _cost(np.random.default_rng(2), 300, 16)
    reference = _pot_plan(cost, 0.01)
    ours = sinkhorn_log(torch.from_numpy(cost).float(), eps=0.01, max_iter=5000, tol=1e-6)
    plan = ours.plan.double().numpy()
    assert np.isfinite(plan).all()
    np.testing.assert_allclose(plan, reference, atol=1e-5, rtol=0)
    # Relative to the plan's largest entry, still within 1e-4.
    assert np.abs(plan - reference).max() / reference.max() < 1e-4


def test_marginals_are_uniform_over_valid_tokens():
    rng = np.random.default_rng(3)
    cost = torch.from_numpy(_cost(rng, 50, 6)).float().expand(3, 50, 6).clone()
    mask = torch.zeros(3, 50, dtype=torch.bool)
    mask[0, :50] = True
    mask[1, :17] = True
    mask[2, 5:9] = True  # valid tokens need not be a prefix
    result = sinkhorn_log(cost, mask, eps=0.1, tol=1e-5, max_iter=1000)
    plan = result.plan
    counts = mask.sum(1, keepdim=True).float()
    rows = plan.sum(-1)
    torch.testing.assert_close(rows, mask.float() / counts, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(plan.sum(1), torch.full((3, 6), 1 / 6), atol=1e-5, rtol=0)
    assert torch.all(plan[~mask] == 0)
    assert float(result.error.max()) < 1e-5
    assert result.error.shape == (3,)


def test_batched_equals_one_slide_at_a_time_and_empty_slide_is_zero():
    rng = np.random.default_rng(4)
    sizes = [40, 7, 0, 25]
    n_max = max(sizes)
    cost = torch.from_numpy(rng.uniform(0, 2, (len(sizes), n_max, 5))).float()
    mask = torch.arange(n_max)[None, :] < torch.tensor(sizes)[:, None]
    cost_with_junk = cost.masked_fill(~mask[..., None], 1e6)  # padding must not matter
    batched = sinkhorn_log(cost_with_junk, mask, eps=0.05, tol=1e-7, max_iter=3000).plan
    for b, n in enumerate(sizes):
        if n == 0:
            assert torch.all(batched[b] == 0)
            continue
        single = sinkhorn_log(cost[b, :n], eps=0.05, tol=1e-7, max_iter=3000).plan
        torch.testing.assert_close(batched[b, :n], single, atol=1e-7, rtol=1e-4)


def test_stops_at_tolerance_or_max_iter():
    cost = torch.from_numpy(_cost(np.random.default_rng(5), 200, 16)).float()
    loose = sinkhorn_log(cost, eps=0.1, tol=1e-2)
    tight = sinkhorn_log(cost, eps=0.1, tol=1e-6, max_iter=10000)
    capped = sinkhorn_log(cost, eps=0.01, tol=1e-12, max_iter=7)
    assert loose.iterations < tight.iterations
    assert float(loose.error[0]) < 1e-2 and float(tight.error[0]) < 1e-6
    assert capped.iterations == 7 and float(capped.error[0]) > 1e-12


def test_gradient_only_when_asked():
    cost = torch.from_numpy(_cost(np.random.default_rng(6), 30, 4)).requires_grad_()
    assert not sinkhorn_log(cost).plan.requires_grad
    plan = sinkhorn_log(cost, eps=0.2, differentiable=True, tol=1e-12, max_iter=2000).plan
    (plan * cost).sum().backward()
    assert torch.isfinite(cost.grad).all() and cost.grad.abs().sum() > 0

    # Finite-difference check of d<P, C>/dC in one entry (float64).
    def objective(c: torch.Tensor) -> float:
        p = sinkhorn_log(c, eps=0.2, tol=1e-12, max_iter=2000).plan
        return float((p * c).sum())

    step = torch.zeros_like(cost)
    step[3, 1] = 1e-6
    numeric = (objective(cost.detach() + step) - objective(cost.detach() - step)) / 2e-6
    assert float(cost.grad[3, 1]) == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_gradient_through_masked_batch_is_finite():
    cost = torch.rand(2, 10, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :4] = True  # slide 1 is empty
    plan = sinkhorn_log(cost, mask, differentiable=True).plan
    (plan * cost).sum().backward()
    assert torch.isfinite(cost.grad).all()
    assert torch.all(cost.grad[0, 4:] == 0) and torch.all(cost.grad[1] == 0)


@pytest.mark.parametrize("eps", [0.1, 0.01])
def test_checking_every_tenth_sweep_stops_where_pot_does(eps):
    # POT checks its error after sweeps 1, 11, 21, ...; with check_every=10 ours
    # does too, so both stop after the same sweep with the same plan.
    cost = _cost(np.random.default_rng(7), 400, 16) / 2
    n, k = cost.shape
    _, log = ot.sinkhorn(
        np.full(n, 1.0 / n), np.full(k, 1.0 / k), cost, eps, stopThr=1e-4, log=True
    )
    ours = sinkhorn_log(torch.from_numpy(cost), eps=eps, tol=1e-4, max_iter=1000, check_every=10)
    assert ours.iterations == log["niter"] + 1
    assert (ours.iterations - 1) % 10 == 0
    every = sinkhorn_log(torch.from_numpy(cost), eps=eps, tol=1e-4, max_iter=1000)
    assert every.iterations <= ours.iterations
    assert float(ours.error[0]) <= float(every.error[0])
    with pytest.raises(ValueError, match="check_every"):
        sinkhorn_log(torch.from_numpy(cost), check_every=0)


def test_buckets_group_similar_slides_and_skip_empty_ones():
    from napari_hila.models.sinkhorn import _buckets

    counts = [100, 0, 95, 40, 81, 39, 10]
    assert _buckets(counts, 0.8) == [[0, 2, 4], [3, 5], [6]]
    assert _buckets(counts, float("inf")) == [[0], [2], [4], [3], [5], [6]]


@pytest.mark.parametrize("eps", [0.1, 0.02])
def test_shared_buckets_give_the_plans_of_one_bucket_per_slide(eps):
    # Accelerators solve similar slides together (CPU: one per bucket); padding,
    # gathering and a valid set that is not a prefix must not change a plan.
    from napari_hila.models.sinkhorn import _Settings, _solve_in_buckets

    rng = np.random.default_rng(8)
    sizes = [60, 0, 55, 20, 50]
    cost = torch.from_numpy(rng.uniform(0, 2, (len(sizes), 64, 6)))
    mask = torch.arange(64)[None, :] < torch.tensor(sizes)[:, None]
    mask[3] = False
    mask[3, 10:30] = True  # not a prefix
    settings = _Settings(eps=eps, max_iter=2000, tol=1e-9, check_every=1)
    shared, _, shared_error = _solve_in_buckets(cost, mask, settings, fill=0.8)
    alone, _, alone_error = _solve_in_buckets(cost, mask, settings, fill=float("inf"))
    torch.testing.assert_close(shared, alone, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(shared_error, alone_error, atol=1e-12, rtol=1e-6)
    assert torch.all(shared[~mask] == 0) and torch.all(shared[1] == 0)
