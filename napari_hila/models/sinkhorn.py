"""Entropic optimal transport between a slide's tokens and K prompts (log domain).

Solves, for each slide b of a padded batch,

    P*_b = argmin_P <P, C_b> - eps * H(P),  P 1 = u_b,  P^T 1 = v,

with u_b = 1/M_b on the M_b valid tokens (0 on padding) and v = 1/K, by
Sinkhorn iterations on the dual potentials in the log domain, so small eps
(down to 0.01 in float32) neither underflows nor overflows. All slides run
together on padded tensors with masks; there is no loop over slides.

The stopping rule is the L1 norm of the column-marginal violation,
``sum_k |sum_i P_ik - 1/K|`` (the rows are exact after each update), checked
every iteration against ``tol`` for each slide separately. POT's ``ot.sinkhorn`` uses the L2 norm of the
same violation, which is never larger, so at equal tolerance this rule is at
least as strict.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

__all__ = ["SinkhornResult", "sinkhorn_log"]

# Potential given to padded tokens (in units of eps): exp() of it is exactly 0
# in float32 and float64, yet it keeps every quantity finite so gradients
# through masked entries are 0 rather than NaN.
_MASKED_POTENTIAL = -1.0e5
_EXP_FLOOR = -80.0


@dataclass
class SinkhornResult:
    """The transport plan and how the solver got there."""

    plan: torch.Tensor  # (B, N, K), 0 on padded tokens
    iterations: int  # iterations run by the slowest slide
    error: torch.Tensor  # (B,) final L1 column-marginal error per slide


def sinkhorn_log(
    cost: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-3,
    differentiable: bool = False,
) -> SinkhornResult:
    """Entropic OT plan between tokens and prompts with uniform marginals.

    ``cost`` is (B, N, K) (or (N, K) for one slide), ``mask`` (B, N) marks valid
    tokens. By default the iterations run without autograd and the plan is a
    constant (gradients then reach the model through whatever the plan
    weighs); ``differentiable=True`` back-propagates through every iteration.
    A slide without valid tokens gets an all-zero plan and error 0.
    """
    if eps <= 0:
        raise ValueError(f"Sinkhorn eps must be positive, got {eps}")
    single = cost.dim() == 2
    if single:
        cost = cost.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    if cost.dim() != 3:
        raise ValueError(f"cost must be (B, N, K) or (N, K), got shape {tuple(cost.shape)}")
    batch, n_tokens, n_prompts = cost.shape
    if mask is None:
        mask = torch.ones(batch, n_tokens, dtype=torch.bool, device=cost.device)
    mask = mask.bool()

    grad_mode = contextlib.nullcontext() if differentiable else torch.no_grad()
    with grad_mode:
        plan, iterations, error = _iterate(cost, mask, eps, max_iter, tol, n_prompts)
    if single:
        plan, error = plan[0], error[0:1]
    return SinkhornResult(plan, iterations, error)


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log-sum-exp along ``dim``; in place on temporaries when no graph is recorded.

    Terms more than 80 below the largest are floored at exp(-80) ~ 2e-35 of
    it: numerically irrelevant, but it keeps exp() off its very slow
    denormal path (tens of times slower on CPU), which small eps and padding
    would otherwise hit on most entries.
    """
    peak = x.amax(dim=dim, keepdim=True)
    if torch.is_grad_enabled():
        shifted = torch.clamp(x - peak, min=_EXP_FLOOR)
        return torch.log(torch.exp(shifted).sum(dim=dim)) + peak.squeeze(dim)
    return (x - peak).clamp_(min=_EXP_FLOOR).exp_().sum(dim=dim).log_().add_(peak.squeeze(dim))


def _iterate(
    cost: torch.Tensor, mask: torch.Tensor, eps: float, max_iter: int, tol: float, n_prompts: int
) -> tuple[torch.Tensor, int, torch.Tensor]:
    # Work on (B, K, N): both reductions then run along contiguous memory or
    # across K rows of it, much faster than reducing a trailing axis of 16.
    valid = mask.unsqueeze(1)  # (B, 1, N)
    log_kernel = torch.where(valid, -cost.transpose(1, 2) / eps, cost.new_zeros(()))
    log_kernel = log_kernel.contiguous()
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1).to(cost.dtype)
    log_u = -torch.log(counts)  # (B, 1), broadcast over tokens
    log_v = -math.log(n_prompts)
    target_v = 1.0 / n_prompts
    masked = cost.new_full((), _MASKED_POTENTIAL)

    f = torch.where(mask, cost.new_zeros(()), masked)  # (B, N) token potentials / eps
    g = cost.new_zeros(cost.shape[0], n_prompts)  # (B, K) prompt potentials / eps
    log_col = _logsumexp(log_kernel + f.unsqueeze(1), dim=2)
    error = cost.new_zeros(cost.shape[0])
    # Slides stop one by one: a converged slide's potentials are frozen, so a
    # slide gets the same plan in any batch as on its own.
    active = mask.any(dim=1)
    iterations = 0
    while iterations < max_iter and bool(active.any()):
        iterations += 1
        g = torch.where(active.unsqueeze(1), log_v - log_col, g)
        f_next = torch.where(mask, log_u - _logsumexp(log_kernel + g.unsqueeze(2), dim=1), masked)
        f = torch.where(active.unsqueeze(1), f_next, f)
        log_col = _logsumexp(log_kernel + f.unsqueeze(1), dim=2)
        # Rows are exact now; the columns are off by exp(g + log_col) - v.
        error_next = (torch.exp(g + log_col) - target_v).abs().sum(dim=1)
        error = torch.where(active, error_next, error)
        active = active & (error.detach() >= tol)
    plan = torch.exp(log_kernel + f.unsqueeze(1) + g.unsqueeze(2))
    plan = torch.where(valid, plan, plan.new_zeros(())).transpose(1, 2)
    return plan, iterations, error.detach()
