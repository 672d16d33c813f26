"""The building blocks of HiLa (METHODS 1.2-1.5), batched over padded slides.

Every block takes padded tensors plus masks and never lets a padded token
change a real one's result: padded tokens get zero transport mass, score
-inf (never selected) and are skipped by the scatter of Cross-Level
Propagation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_hila.models.sinkhorn import sinkhorn_log

__all__ = [
    "AlignmentSettings",
    "CrossLevelPropagation",
    "LevelAlignment",
    "MutualContrastive",
    "PromptProjection",
    "VisualProjection",
    "align_tokens",
    "select_top_fraction",
]


class VisualProjection(nn.Module):
    """H = LayerNorm(MLP(X)): frozen encoder features to the shared width d."""

    def __init__(self, in_dim: int, width: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(features))


class PromptProjection(nn.Module):
    """T = E W + alpha * Adapter(E W) on frozen text embeddings E (K x D_t)."""

    def __init__(self, text_dim: int, width: int, alpha: float, reduction: int) -> None:
        super().__init__()
        self.linear = nn.Linear(text_dim, width, bias=False)
        hidden = max(1, width // reduction)
        self.adapter = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.alpha = alpha

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        projected = self.linear(embeddings)
        return projected + self.alpha * self.adapter(projected)


@dataclass(frozen=True)
class AlignmentSettings:
    """How one level aligns its tokens with its prompts (see HiLaConfig)."""

    method: str = "ot"  # "ot" (Sinkhorn plan) or "cosine" (softmax attention, no OT)
    eps: float = 0.1
    max_iter: int = 100
    tol: float = 1e-3
    differentiable: bool = False
    cosine_temperature: float = 0.1
    select_ratio: float = 0.6
    min_selected: int = 4
    add_aligned_prompt: bool = True


@dataclass
class LevelAlignment:
    """What OPL produced at one level for a padded batch."""

    tokens: torch.Tensor  # (B, N, d) projected tokens
    mask: torch.Tensor  # (B, N) valid tokens
    similarity: torch.Tensor  # (B, N, K) cosine similarity S
    plan: torch.Tensor  # (B, N, K) P*, rows sum to 1/M_b, columns to 1/K
    scores: torch.Tensor  # (B, N) a_i = M_b * sum_k P_ik S_ik, -inf on padding
    selected: torch.Tensor  # (B, N) bool selection map
    features: torch.Tensor  # (B, K, d) prompt-specific features Z
    iterations: int = 0


def select_top_fraction(
    scores: torch.Tensor, counts: torch.Tensor, ratio: float, minimum: int
) -> torch.Tensor:
    """Mask of each slide's top ``max(ceil(ratio * M_b), minimum)`` tokens (at most M_b).

    ``scores`` must be -inf on padding so padding ranks last. The count is
    worked out in Python with rounding, so float error (0.6 * 5 =
    3.0000000000000004) never adds a token, on any device.
    """
    sizes = counts.tolist()
    keep = [min(n, max(math.ceil(round(ratio * n, 6)), minimum)) for n in sizes]
    keep = torch.tensor(keep, dtype=torch.long, device=scores.device)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return ranks < keep.unsqueeze(1)


def align_tokens(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    prompts: torch.Tensor,
    settings: AlignmentSettings,
    empty_feature: torch.Tensor,
) -> LevelAlignment:
    """Optimal Prompt Learning at one level (METHODS 1.3).

    Z_k = sum over selected i of P~_ik H_i, with P~ the plan restricted to the
    selected tokens and normalised per prompt. With ``add_aligned_prompt``,
    Z_k also gets s_k T_k, s_k = sum_i P~_ik S_ik (the prompt's transport-
    weighted similarity, as in PLOT): this is the path by which the gradient
    flows through S into the text projection while the plan stays constant.
    A slide with no valid token gets ``empty_feature`` for every prompt.
    """
    unit_tokens = F.normalize(tokens, dim=-1)
    unit_prompts = F.normalize(prompts, dim=-1)
    similarity = unit_tokens @ unit_prompts.transpose(0, 1)  # (B, N, K)
    n_prompts = prompts.shape[0]
    iterations = 0
    if settings.method == "ot":
        result = sinkhorn_log(
            1.0 - similarity,
            mask,
            eps=settings.eps,
            max_iter=settings.max_iter,
            tol=settings.tol,
            differentiable=settings.differentiable,
        )
        plan, iterations = result.plan, result.iterations
    elif settings.method == "cosine":
        # A finite fill keeps gradients finite for a slide with no valid token.
        logits = (similarity / settings.cosine_temperature).masked_fill(~mask.unsqueeze(-1), -1e4)
        plan = torch.softmax(logits, dim=1) * mask.unsqueeze(-1).to(similarity.dtype) / n_prompts
    else:
        raise ValueError(f"alignment must be 'ot' or 'cosine', got {settings.method!r}")

    counts = mask.sum(dim=1)
    scores = counts.unsqueeze(1).to(plan.dtype) * (plan * similarity).sum(dim=-1)
    scores = scores.masked_fill(~mask, -math.inf)
    selected = select_top_fraction(
        scores.detach(), counts, settings.select_ratio, settings.min_selected
    )

    restricted = plan * selected.unsqueeze(-1).to(plan.dtype)
    weights = restricted / restricted.sum(dim=1, keepdim=True).clamp(min=1e-30)
    features = weights.transpose(1, 2) @ tokens  # (B, K, d)
    if settings.add_aligned_prompt:
        alignment = (weights * similarity).sum(dim=1)  # (B, K)
        features = features + alignment.unsqueeze(-1) * prompts.unsqueeze(0)
    has_tokens = (counts > 0).view(-1, 1, 1)
    features = torch.where(has_tokens, features, empty_feature.expand_as(features))
    return LevelAlignment(tokens, mask, similarity, plan, scores, selected, features, iterations)


class CrossLevelPropagation(nn.Module):
    """Recalibrate region tokens with the selected patches inside them (METHODS 1.4).

    h_r = proj(mean of selected patch tokens with pi(i) = r), or a learned
    empty token when none is selected; G = sigmoid(W_g [h; H_r] + b_g);
    H_r' = G * tanh(h) + (1 - G) * tanh(H_r).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project = nn.Linear(width, width)
        self.empty = nn.Parameter(torch.zeros(width))
        self.gate = nn.Linear(2 * width, width)

    def forward(
        self,
        patch_tokens: torch.Tensor,
        patch_selected: torch.Tensor,
        patch_to_region: torch.Tensor,
        region_tokens: torch.Tensor,
        region_mask: torch.Tensor,
    ) -> torch.Tensor:
        batch, n_regions, width = region_tokens.shape
        in_range = (patch_to_region >= 0) & (patch_to_region < n_regions)
        region_index = patch_to_region.clamp(0, n_regions - 1)
        into_real_region = region_mask.gather(1, region_index) & in_range
        use = patch_selected & into_real_region
        flat = (torch.arange(batch, device=use.device).unsqueeze(1) * n_regions + region_index)[use]
        sums = patch_tokens.new_zeros(batch * n_regions, width).index_add(
            0, flat, patch_tokens[use]
        )
        counts = patch_tokens.new_zeros(batch * n_regions).index_add(
            0, flat, patch_tokens.new_ones(flat.shape[0])
        )
        pooled = self.project(sums / counts.clamp(min=1).unsqueeze(1))
        pooled = torch.where((counts > 0).unsqueeze(1), pooled, self.empty.expand_as(pooled))
        pooled = pooled.view(batch, n_regions, width)
        gate = torch.sigmoid(self.gate(torch.cat([pooled, region_tokens], dim=-1)))
        return gate * torch.tanh(pooled) + (1.0 - gate) * torch.tanh(region_tokens)


class MutualContrastive(nn.Module):
    """Patch/region prototype contrast against memory queues (METHODS 1.5).

    The queues are buffers (saved with the model, ignored at inference). The
    loss uses a copy of the queues as they were before this batch; the batch's
    prototypes are enqueued right after (detached), so they serve as
    negatives from the next step on.
    """

    def __init__(self, width: int, dim: int, queue_size: int, temperature: float) -> None:
        super().__init__()
        self.project_patch = nn.Linear(width, dim)
        self.project_region = nn.Linear(width, dim)
        self.temperature = temperature
        self.register_buffer("queue_patch", torch.zeros(queue_size, dim))
        self.register_buffer("queue_region", torch.zeros(queue_size, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))

    def forward(self, patch_summary: torch.Tensor, region_summary: torch.Tensor) -> torch.Tensor:
        g_patch = F.normalize(self.project_patch(patch_summary), dim=-1)
        g_region = F.normalize(self.project_region(region_summary), dim=-1)
        filled = int(self.queue_filled)
        past_patch = self.queue_patch[:filled].clone()
        past_region = self.queue_region[:filled].clone()
        loss = self._info_nce(g_patch, g_region, past_region)
        loss = loss + self._info_nce(g_region, g_patch, past_patch)
        self._enqueue(g_patch.detach(), g_region.detach())
        return loss

    def _info_nce(
        self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        positive_logit = (anchor * positive).sum(dim=-1, keepdim=True)
        logits = torch.cat([positive_logit, anchor @ negatives.transpose(0, 1)], dim=1)
        target = torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device)
        return F.cross_entropy(logits / self.temperature, target)

    @torch.no_grad()
    def _enqueue(self, g_patch: torch.Tensor, g_region: torch.Tensor) -> None:
        size = self.queue_patch.shape[0]
        if size == 0:
            return
        g_patch, g_region = g_patch[-size:], g_region[-size:]
        slots = (int(self.queue_next) + torch.arange(g_patch.shape[0])) % size
        self.queue_patch[slots.to(self.queue_patch.device)] = g_patch
        self.queue_region[slots.to(self.queue_region.device)] = g_region
        self.queue_next.fill_((int(self.queue_next) + g_patch.shape[0]) % size)
        self.queue_filled.fill_(min(size, int(self.queue_filled) + g_patch.shape[0]))
