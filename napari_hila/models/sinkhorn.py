"""Entropic optimal transport between a slide's tokens and K prompts.

Solves, for each slide b of a padded batch,

    P*_b = argmin_P <P, C_b> - eps * H(P),  P 1 = u_b,  P^T 1 = v,

with u_b = 1/M_b on the M_b valid tokens (0 on padding) and v = 1/K. All
slides run together on padded tensors with masks; there is no loop over
slides, and each slide stops on its own so its plan does not depend on the
batch it is in.

Stability down to eps = 0.01 in float32 comes from keeping the problem in the
log domain (dual potentials f, g, the log-kernel -C/eps) and iterating on
scalings *relative to the current plan* ("absorption", Schmitzer 2019): the
cheap multiplicative Sinkhorn updates run on exp(f + g - C/eps), which is the
plan itself and so well scaled, and whenever a scaling drifts beyond
e^{+-_ABSORB} it is folded back into the potentials and the kernel is
re-exponentiated. This gives log-domain robustness at the cost of two
matrix-vector products per iteration.

The stopping rule is POT's: the L2 norm of the column-marginal violation,
``||P^T 1 - 1/K||_2`` (rows are exact after each update), checked every
iteration against ``tol`` for each slide.
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
# exp() arguments are floored here: exp(-80) ~ 2e-35 is numerically nothing,
# and it keeps exp() off its denormal path, tens of times slower on CPU.
_EXP_FLOOR = -80.0
# Scalings beyond e^{+-_ABSORB} are folded into the potentials.
_ABSORB = 12.0


@dataclass
class SinkhornResult:
    """The transport plan and how the solver got there."""

    plan: torch.Tensor  # (B, N, K), 0 on padded tokens
    iterations: int  # iterations run by the slowest slide
    error: torch.Tensor  # (B,) final L2 column-marginal error per slide


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
    """log-sum-exp along ``dim``, with the exp floor (see ``_EXP_FLOOR``)."""
    peak = x.amax(dim=dim, keepdim=True)
    shifted = torch.clamp(x - peak, min=_EXP_FLOOR)
    return torch.log(torch.exp(shifted).sum(dim=dim)) + peak.squeeze(dim)


def _iterate(
    cost: torch.Tensor, mask: torch.Tensor, eps: float, max_iter: int, tol: float, n_prompts: int
) -> tuple[torch.Tensor, int, torch.Tensor]:
    # (B, K, N) layout: both products below then stream over contiguous N.
    valid = mask.unsqueeze(1)  # (B, 1, N)
    log_kernel = torch.where(valid, -cost.transpose(1, 2) / eps, cost.new_zeros(()))
    log_kernel = log_kernel.contiguous()
    has_tokens = mask.any(dim=1)
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1).to(cost.dtype)
    row_target = torch.where(mask, 1.0 / counts, cost.new_zeros(()))  # (B, N)
    col_target = 1.0 / n_prompts
    masked = cost.new_full((), _MASKED_POTENTIAL)

    # One log-domain sweep gives potentials whose plan is already well scaled.
    f = torch.where(mask, cost.new_zeros(()), masked)  # (B, N) token potentials / eps
    g = -math.log(n_prompts) - _logsumexp(log_kernel + f.unsqueeze(1), dim=2)  # (B, K)
    f = torch.where(
        mask, torch.log(counts) * -1 - _logsumexp(log_kernel + g.unsqueeze(2), dim=1), masked
    )

    def current_plan_kernel(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        exponent = torch.clamp(log_kernel + f.unsqueeze(1) + g.unsqueeze(2), min=_EXP_FLOOR)
        return torch.where(valid, torch.exp(exponent), cost.new_zeros(()))

    kernel = current_plan_kernel(f, g)  # (B, K, N)
    u = mask.to(cost.dtype)  # (B, N) token scalings on top of f
    v = cost.new_ones(cost.shape[0], n_prompts)  # (B, K) prompt scalings on top of g
    one = cost.new_ones(())
    col = torch.bmm(kernel, u.unsqueeze(-1)).squeeze(-1)  # (B, K) = K~ u
    error = cost.new_zeros(cost.shape[0])
    active = has_tokens.clone()
    iterations = 0
    while iterations < max_iter and bool(active.any()):
        iterations += 1
        step = active.unsqueeze(1)
        v = torch.where(step, col_target / torch.where(col > 0, col, one), v)
        row = torch.bmm(v.unsqueeze(1), kernel).squeeze(1)  # (B, N) = v K~
        u = torch.where(step & mask, row_target / torch.where(mask, row, one), u)
        col = torch.bmm(kernel, u.unsqueeze(-1)).squeeze(-1)
        # Rows are exact now; the columns are off by v * col - 1/K.
        error = torch.where(active, torch.linalg.vector_norm(v * col - col_target, dim=1), error)
        active = active & (error.detach() >= tol)
        log_u = torch.log(torch.where(mask, u, one))
        log_v = torch.log(v)
        if bool((log_u.detach().abs().amax() > _ABSORB) | (log_v.detach().abs().amax() > _ABSORB)):
            f = torch.where(mask, f + log_u, masked)
            g = g + log_v
            kernel = current_plan_kernel(f, g)
            u, v = mask.to(cost.dtype), torch.ones_like(v)
            col = torch.bmm(kernel, u.unsqueeze(-1)).squeeze(-1)
    plan = u.unsqueeze(1) * kernel * v.unsqueeze(2)
    plan = torch.where(valid, plan, plan.new_zeros(())).transpose(1, 2)
    return plan, iterations, error.detach()
