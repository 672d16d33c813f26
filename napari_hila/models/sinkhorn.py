"""Entropic optimal transport between a slide's tokens and K prompts.

Solves, for each slide b of a padded batch,

    P*_b = argmin_P <P, C_b> - eps * H(P),  P 1 = u_b,  P^T 1 = v,

with u_b = 1/M_b on the M_b valid tokens (0 on padding) and v = 1/K. Each
slide stops on its own, so its plan does not depend on the batch it is in.
Slides are solved in buckets of similar token counts (on a CPU, one slide per
bucket), each bucket's valid tokens gathered into one tensor, so little work
is spent on padding.

Two solvers, chosen per bucket from the cost's range, both the same Sinkhorn
sweeps (v then u) and the same iterates in exact arithmetic:

- plain scalings on K = exp(-(C - min_k C)/eps) (each token's row shifted by
  its smallest cost, which the token scaling absorbs) when no entry of K is
  below e^-_PLAIN_SPAN: one exponential in all, then two matrix-vector
  products per sweep;
- otherwise (small eps) the problem stays in the log domain (dual potentials
  f, g and the log-kernel -C/eps) and the scalings are relative to the current
  plan ("absorption", Schmitzer 2019): the multiplicative updates run on
  exp(f + g - C/eps), which is the plan itself and so well scaled, and a
  scaling that drifts beyond e^{+-_ABSORB} is folded back into the potentials
  and the kernel re-exponentiated. Stable down to eps = 0.01 in float32.

The stopping rule is POT's: the L2 norm of the column-marginal violation,
``||P^T 1 - 1/K||_2`` (rows are exact after each sweep), checked against
``tol`` for each slide after sweeps 1, 1 + n, 1 + 2n, ... (``check_every``
n; POT checks every 10th). The error costs nothing extra (the next sweep
needs the same product), and the plain loop reads it on the host only at
those checks (the log-domain loop also reads, each sweep, whether a scaling
must be folded in).
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
# Plain scalings when every row-shifted exponent lies within [-_PLAIN_SPAN, 0]:
# K's entries stay >= e^-40 ~ 4e-18 and the scalings within float32's range.
_PLAIN_SPAN = 40.0
# On an accelerator a bucket's slides have at least this share of its widest
# slide's tokens. On a CPU every slide is its own bucket: torch's batched
# matrix-vector product there took 4x the time of one product per slide
# (8 slides of 5,000-18,000 tokens, K = 16).
_BUCKET_FILL = 0.8


@dataclass
class SinkhornResult:
    """The transport plan and how the solver got there."""

    plan: torch.Tensor  # (B, N, K), 0 on padded tokens
    iterations: int  # sweeps run by the slowest slide
    error: torch.Tensor  # (B,) final L2 column-marginal error per slide


def sinkhorn_log(
    cost: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-3,
    differentiable: bool = False,
    check_every: int = 1,
) -> SinkhornResult:
    """Entropic OT plan between tokens and prompts with uniform marginals.

    ``cost`` is (B, N, K) (or (N, K) for one slide), ``mask`` (B, N) marks valid
    tokens. By default the iterations run without autograd and the plan is a
    constant (gradients then reach the model through whatever the plan
    weighs); ``differentiable=True`` back-propagates through every iteration.
    ``check_every`` n: the error is compared with ``tol`` after sweeps 1, 1 + n,
    ... (1: after every sweep). A slide without valid tokens gets an all-zero
    plan and error 0.
    """
    if eps <= 0:
        raise ValueError(f"Sinkhorn eps must be positive, got {eps}")
    if check_every < 1:
        raise ValueError(f"Sinkhorn check_every must be at least 1, got {check_every}")
    single = cost.dim() == 2
    if single:
        cost = cost.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    if cost.dim() != 3:
        raise ValueError(f"cost must be (B, N, K) or (N, K), got shape {tuple(cost.shape)}")
    settings = _Settings(eps, max_iter, tol, check_every)
    grad_mode = contextlib.nullcontext() if differentiable else torch.no_grad()
    with grad_mode:
        if mask is None or bool(mask.all()):
            plan, iterations, error = _solve(cost, None, settings)
        else:
            fill = math.inf if cost.device.type == "cpu" else _BUCKET_FILL
            plan, iterations, error = _solve_in_buckets(cost, mask.bool(), settings, fill)
    if single:
        plan, error = plan[0], error[0:1]
    return SinkhornResult(plan, iterations, error.detach())


@dataclass(frozen=True)
class _Settings:
    eps: float
    max_iter: int
    tol: float
    check_every: int


def _buckets(counts: list[int], fill: float) -> list[list[int]]:
    """Slides with tokens grouped by similar counts (``fill`` of the widest), widest first."""
    order = sorted((b for b, n in enumerate(counts) if n > 0), key=lambda b: -counts[b])
    buckets: list[list[int]] = []
    for b in order:
        if buckets and counts[b] >= fill * counts[buckets[-1][0]]:
            buckets[-1].append(b)
        else:
            buckets.append([b])
    return buckets


def _solve_in_buckets(
    cost: torch.Tensor, mask: torch.Tensor, settings: _Settings, fill: float
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Each bucket's valid tokens gathered (a slice when they are a prefix), solved, put back."""
    batch, n_tokens, n_prompts = cost.shape
    counts = mask.sum(dim=1).tolist()
    # (B, K, N) as the solvers' plans (so the copies below are contiguous), zero
    # where no bucket writes: slides without tokens and each slide's padding
    plan = cost.new_empty(batch, n_prompts, n_tokens)
    for b, n in enumerate(counts):
        plan[b, :, n:] = 0.0
    error = cost.new_zeros(batch)
    iterations = 0
    for bucket in _buckets(counts, fill):
        width, lengths = counts[bucket[0]], [counts[b] for b in bucket]
        # valid tokens are a prefix when none lies beyond the count
        places = [
            torch.nonzero(mask[b]).squeeze(1) if bool(mask[b, counts[b] :].any()) else None
            for b in bucket
        ]
        if all(place is None for place in places):
            part_cost = cost[bucket[0] : bucket[0] + 1, :width] if len(bucket) == 1 else None
            if part_cost is None:
                part_cost = cost[torch.tensor(bucket, device=cost.device), :width]
        else:
            part_cost = torch.stack(
                [
                    cost[b, :width] if place is None else _padded(cost[b, place], width)
                    for b, place in zip(bucket, places, strict=True)
                ]
            )
        part, sweeps, part_error = _solve(
            part_cost, None if min(lengths) == width else lengths, settings
        )
        for j, (b, place) in enumerate(zip(bucket, places, strict=True)):
            if place is not None:
                plan[b, :, : counts[b]] = 0.0
            tokens = slice(0, counts[b]) if place is None else place
            plan[b, :, tokens] = part[j, : counts[b]].transpose(0, 1)
            error[b] = part_error[j]
        iterations = max(iterations, sweeps)
    return plan.transpose(1, 2), iterations, error


def _padded(rows: torch.Tensor, width: int) -> torch.Tensor:
    """``rows`` followed by copies of its first row up to ``width`` rows."""
    return torch.cat([rows, rows[:1].expand(width - len(rows), -1)])


def _solve(
    cost: torch.Tensor, lengths: list[int] | None, settings: _Settings
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """One bucket: (B, N, K) cost whose slide b has valid tokens ``:lengths[b]`` (None: all)."""
    batch, n_tokens, _ = cost.shape
    lengths = lengths or [n_tokens] * batch
    ranges = [torch.aminmax(cost[b, :n].detach()) for b, n in enumerate(lengths)]
    low = torch.stack([r.min for r in ranges]).view(batch, 1, 1)
    spread = float(torch.stack([r.max - r.min for r in ranges]).amax())
    valid = None
    if min(lengths) < n_tokens:
        valid = torch.arange(n_tokens, device=cost.device) < torch.tensor(
            lengths, device=cost.device
        ).unsqueeze(1)
    if spread <= _PLAIN_SPAN * settings.eps:
        return _plain_sweeps(cost, valid, low, settings)
    full = torch.ones(batch, n_tokens, dtype=torch.bool, device=cost.device)
    return _absorbing_sweeps(cost, full if valid is None else valid, settings)


def _plain_sweeps(
    cost: torch.Tensor, valid: torch.Tensor | None, low: torch.Tensor, settings: _Settings
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Sinkhorn on K = exp(-(C - min C)/eps), whose entries all lie in [e^-_PLAIN_SPAN, 1]."""
    batch, n_tokens, n_prompts = cost.shape
    # (B, K, N) layout: both products below then stream over contiguous N.
    if torch.is_grad_enabled() and cost.requires_grad:  # out= does not record a graph
        kernel = (cost.transpose(1, 2) * (-1.0 / settings.eps)).contiguous()
    else:
        kernel = cost.new_empty(batch, n_prompts, n_tokens)
        torch.mul(cost.transpose(1, 2), -1.0 / settings.eps, out=kernel)
    kernel = torch.exp(kernel + low / settings.eps)
    if valid is None:
        row_target: torch.Tensor | float = 1.0 / n_tokens
        padding = None
        u = cost.new_ones(batch, n_tokens)
    else:
        kernel = torch.where(valid.unsqueeze(1), kernel, kernel.new_zeros(()))
        u = valid.to(cost.dtype)
        row_target = u / u.sum(dim=1, keepdim=True)
        padding = 1.0 - u  # a padded token's row sum is 0: divide 0 by 1 there
    col_target = 1.0 / n_prompts
    col = torch.bmm(kernel, u.unsqueeze(2)).squeeze(2)  # (B, K) = K^T u
    v = torch.ones_like(col)
    error = cost.new_zeros(batch)
    active = torch.ones(batch, dtype=torch.bool, device=cost.device)
    several = batch > 1
    sweeps = 0
    while sweeps < settings.max_iter:
        sweeps += 1
        v_new = col_target / col
        v = torch.where(active.unsqueeze(1), v_new, v) if several else v_new
        row = torch.bmm(v.unsqueeze(1), kernel).squeeze(1)  # (B, N) = K v
        u_new = row_target / (row if padding is None else row + padding)
        u = torch.where(active.unsqueeze(1), u_new, u) if several else u_new
        col = torch.bmm(kernel, u.unsqueeze(2)).squeeze(2)
        if (sweeps - 1) % settings.check_every == 0:
            # rows are exact now; the columns are off by v * K^T u - 1/K
            now = torch.linalg.vector_norm(v * col - col_target, dim=1)
            error = torch.where(active, now, error)
            active = active & (now.detach() >= settings.tol)
            if not bool(active.any()):
                break
    if torch.is_grad_enabled() and kernel.requires_grad:
        plan = u.unsqueeze(1) * kernel * v.unsqueeze(2)
    else:  # the kernel is not needed any more: scale it in place
        plan = kernel.mul_(u.unsqueeze(1)).mul_(v.unsqueeze(2))
    return plan.transpose(1, 2), sweeps, error


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log-sum-exp along ``dim``, with the exp floor (see ``_EXP_FLOOR``)."""
    peak = x.amax(dim=dim, keepdim=True)
    shifted = torch.clamp(x - peak, min=_EXP_FLOOR)
    return torch.log(torch.exp(shifted).sum(dim=dim)) + peak.squeeze(dim)


def _absorbing_sweeps(
    cost: torch.Tensor, mask: torch.Tensor, settings: _Settings
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Log-domain potentials with plain scalings on top, folded in when they drift."""
    eps, n_prompts = settings.eps, cost.shape[2]
    # (B, K, N) layout: both products below then stream over contiguous N.
    valid = mask.unsqueeze(1)  # (B, 1, N)
    log_kernel = torch.where(valid, -cost.transpose(1, 2) / eps, cost.new_zeros(()))
    log_kernel = log_kernel.contiguous()
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1).to(cost.dtype)
    row_target = torch.where(mask, 1.0 / counts, cost.new_zeros(()))  # (B, N)
    col_target = 1.0 / n_prompts
    masked = cost.new_full((), _MASKED_POTENTIAL)

    # The first sweep in the log domain gives potentials whose plan is well scaled.
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
    error = torch.linalg.vector_norm(col - col_target, dim=1)
    active = error.detach() >= settings.tol
    sweeps = 1
    while sweeps < settings.max_iter and bool(active.any()):
        sweeps += 1
        step = active.unsqueeze(1)
        v = torch.where(step, col_target / torch.where(col > 0, col, one), v)
        row = torch.bmm(v.unsqueeze(1), kernel).squeeze(1)  # (B, N) = v K~
        u = torch.where(step & mask, row_target / torch.where(mask, row, one), u)
        col = torch.bmm(kernel, u.unsqueeze(-1)).squeeze(-1)
        if (sweeps - 1) % settings.check_every == 0:
            # Rows are exact now; the columns are off by v * col - 1/K.
            now = torch.linalg.vector_norm(v * col - col_target, dim=1)
            error = torch.where(active, now, error)
            active = active & (now.detach() >= settings.tol)
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
    return plan, sweeps, error
