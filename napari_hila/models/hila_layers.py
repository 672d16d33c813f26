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
    "AdditivePromptHead",
    "CrossLevelPropagation",
    "LevelAlignment",
    "MutualContrastive",
    "PromptProjection",
    "VisualProjection",
    "align_tokens",
    "init_shared_space",
    "mean_pairwise_cosine",
    "prompt_anchor_loss",
    "select_top_fraction",
    "shared_space_basis",
]


class VisualProjection(nn.Module):
    """H = LayerNorm(MLP(X) [+ A X]): frozen encoder features to the shared width d.

    The optional linear skip ``A X`` lets a model whose features and prompts
    come from one vision-language space start from that space's own cosine
    similarity (see :func:`init_shared_space`); models saved before it had
    none (``skip=False``).
    """

    def __init__(self, in_dim: int, width: int, dropout: float, skip: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width)
        )
        self.skip = nn.Linear(in_dim, width, bias=False) if skip else None
        self.norm = nn.LayerNorm(width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp(features)
        if self.skip is not None:
            hidden = hidden + self.skip(features)
        return self.norm(hidden)


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


def shared_space_basis(in_dim: int, width: int, seed: int = 0) -> torch.Tensor:
    """(width, in_dim) map Q that keeps cosines and has zero-mean outputs.

    Columns are orthonormal and orthogonal to the all-ones vector when
    ``in_dim < width`` (then cos(Qx, Qy) = cos(x, y) exactly and LayerNorm's
    centring leaves Qx unchanged); otherwise rows are orthonormal, a random
    projection that keeps cosines approximately.
    """
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(width, in_dim, generator=generator, dtype=torch.float64)
    ones = torch.full((width, 1), 1.0 / math.sqrt(width), dtype=torch.float64)
    raw = raw - ones @ (ones.T @ raw)
    if in_dim < width:
        basis, _ = torch.linalg.qr(raw)  # (width, in_dim), orthonormal columns
    else:
        rows, _ = torch.linalg.qr(raw.T)  # (in_dim, width)
        basis = rows.T
    return basis.float()


@torch.no_grad()
def init_shared_space(visual: VisualProjection, text: PromptProjection, seed: int = 0) -> None:
    """Start a level from its encoders' shared space: S = cos(x, e) before training.

    For features and prompt embeddings from one vision-language space (CONCH,
    the descriptor with its grounded vocabulary): visual H = LN(Q x) and text
    T = Q e at initialisation (the MLP's and the adapter's last layers start
    at zero), so the plan and the maps mean the space's own similarity from
    the first step, and training refines them.
    """
    in_dim = visual.mlp[0].in_features
    text_dim = text.linear.in_features
    if visual.skip is None or in_dim != text_dim:
        raise ValueError(
            f"a shared space needs a visual skip and equal widths (features {in_dim}, "
            f"text {text_dim})"
        )
    basis = shared_space_basis(in_dim, visual.mlp[-1].out_features, seed)
    visual.skip.weight.copy_(basis)
    text.linear.weight.copy_(basis)
    visual.mlp[-1].weight.zero_()
    visual.mlp[-1].bias.zero_()
    text.adapter[-1].weight.zero_()
    text.adapter[-1].bias.zero_()


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine over distinct pairs of rows (1.0: collapsed onto one direction)."""
    n = vectors.shape[0]
    if n < 2:
        return float("nan")
    unit = F.normalize(vectors.detach().float(), dim=-1)
    gram = unit @ unit.T
    off = gram[~torch.eye(n, dtype=torch.bool, device=gram.device)]
    return float(off.mean())


def prompt_anchor_loss(prompts: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Mean squared change of the prompts' pairwise cosines from their text embeddings'.

    Keeps the projected prompts T as far apart as their texts are, so they
    cannot collapse onto one direction and each keeps its meaning.
    """
    n = prompts.shape[0]
    if n < 2:
        return prompts.new_zeros(())
    unit_t = F.normalize(prompts, dim=-1)
    unit_e = F.normalize(embeddings.detach(), dim=-1)
    off = ~torch.eye(n, dtype=torch.bool, device=prompts.device)
    return ((unit_t @ unit_t.T - unit_e @ unit_e.T)[off] ** 2).mean()


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
    add_aligned_prompt: bool = False


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
    presence: torch.Tensor | None = None  # (B, K) fraction of tokens showing k (set by the head)
    prompt_similarity: torch.Tensor | None = None  # (B, K) s_k = sum_i P~_ik S_ik


#: The head's per-prompt scalars are stored divided by this gain and used times it,
#: so Adam, which moves a parameter by about lr per step, moves them this much
#: faster: at the paper's lr 2e-4 a weight of O(1) is reached within an epoch or
#: two instead of never (an equalised learning rate, as in Karras et al. 2018).
HEAD_GAIN = 10.0


class AdditivePromptHead(nn.Module):
    """One scalar term per prompt; the risk's linear predictor is their sum.

    term_k = a_k * presence_k [+ c_k * s_k / tau] [+ p_k * peak_k] [+ w_k . z_k] + b_k.

    presence_k is the share of the slide's tokens that show attribute k, in
    units of a uniform share (K times the fraction), each prompt judging every
    token on its own: K mean_i sigmoid((S_ik - theta_k) / tau), with a learned
    threshold theta_k that starts at the training cohort's (1 - 1/K) quantile
    of S_k (data-dependent initialisation, as ActNorm's; the first batch's when
    no cohort was given), so about 1/K of the tokens pass at first. Unlike the balanced plan (every prompt
    gets mass 1/K) or a softmax over prompts (a prompt resembling all tissue
    takes most tokens), it says how much of attribute k there is. s_k is the
    prompt's transport-weighted similarity (PLOT; optional, off in shared spaces,
    where it mostly repeats the slide's stain and mix) and z_k its feature,
    optional because the balanced plan spills an abundant attribute's tokens
    into other prompts' z (and so their terms). peak_k, the clearest single
    token's detector output, is for the region level: whether some region is
    made of attribute k (a solid sheet), where presence says how much of the
    slide is. Each prompt reaches the risk
    on its own path, so the decomposition over prompts is exact in the linear
    predictor.
    """

    def __init__(
        self,
        n_prompts: int,
        width: int,
        dropout: float,
        feature_term: bool = True,
        temperature: float = 0.1,
        gain: float = HEAD_GAIN,
        peak_term: bool = False,
        similarity_term: bool = True,
    ) -> None:
        super().__init__()
        self.feature_term = feature_term
        self.temperature = temperature
        self.gain = gain
        self.threshold = nn.Parameter(torch.zeros(n_prompts))
        self.register_buffer("threshold_ready", torch.zeros((), dtype=torch.bool))
        self.weight = nn.Parameter(torch.zeros(n_prompts, width)) if feature_term else None
        self.presence_weight = nn.Parameter(torch.zeros(n_prompts))
        self.similarity_weight = nn.Parameter(torch.zeros(n_prompts)) if similarity_term else None
        self.bias = nn.Parameter(torch.zeros(n_prompts))
        self.peak_weight = nn.Parameter(torch.zeros(n_prompts)) if peak_term else None
        if self.peak_weight is not None:
            nn.init.normal_(self.peak_weight, std=0.1 / gain)
        if self.weight is not None:
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(width) / math.sqrt(max(n_prompts, 1)))
        # Non-zero from the start, so the text side gets its gradient at the first step.
        nn.init.normal_(self.presence_weight, std=0.1 / gain)
        if self.similarity_weight is not None:
            nn.init.normal_(self.similarity_weight, std=0.1 / gain)
        self.dropout = nn.Dropout(dropout)

    @torch.no_grad()
    def start_thresholds(self, similarities: torch.Tensor) -> None:
        """theta_k from (tokens, K) similarities: the (1 - 1/K) quantile of each prompt's.

        Called with the whole training cohort's tokens before training (see
        ``HiLa.initialise_from_data``); one slide's quantile, the fallback when
        nobody did, sits wherever that slide's composition puts it (measured on
        the planted cohort: the raising prompt's presence then followed its
        attribute with r 0.61 instead of 0.9 and its weight took the wrong sign).
        """
        if similarities.shape[0] == 0:
            return
        q = 1.0 - 1.0 / max(similarities.shape[-1], 2)
        self.threshold.copy_(torch.quantile(similarities.float(), q, dim=0) / self.gain)
        self.threshold_ready.fill_(True)

    def shows(self, similarity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, K): how clearly each token shows each prompt, in [0, 1] (0 on padding)."""
        if self.training and not bool(self.threshold_ready):
            self.start_thresholds(similarity.detach()[mask])
        threshold = self.gain * self.threshold
        shows = torch.sigmoid((similarity - threshold) / self.temperature)
        return shows * mask.unsqueeze(-1).to(similarity.dtype)

    def presence(self, similarity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, K) similarities, (B, N) mask -> (B, K) share of tokens showing each prompt.

        In units of a uniform share (K times the fraction: 1 = 1/K of the
        slide), the unit of the maps.
        """
        return self._presence(self.shows(similarity, mask), mask)

    @staticmethod
    def _presence(shows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        counts = mask.sum(dim=1, keepdim=True).to(shows.dtype).clamp(min=1.0)
        return shows.shape[-1] * shows.sum(dim=1) / counts

    def penalty(
        self, sparsity: float, feature_l2: float, ridge: float = 0.0, peak_ridge: float = 0.0
    ) -> torch.Tensor:
        """Penalties on the head's weights, in the units the terms use (gain times stored).

        ``ridge``: L2 on the per-prompt presence and similarity weights. Prompts that
        see one attribute at two levels (dense nuclei, and regions made of them) are
        collinear; unpenalised, which of them carries the effect is an accident of
        the seed (measured on the planted cohort: the patch prompt's sign flipped on
        one seed in three). Ridge shares the effect between them (the grouping
        effect) and shrinks the noisy ones. ``peak_ridge``: L2 on the peak weights,
        which see what only this level shows. ``sparsity``: L1 on the same weights
        (few prompts explain); ``feature_l2``: L2 on Z_k's weights.
        """
        loss = self.bias.new_zeros(())
        scalars = self._scalar_weights()
        if ridge > 0:
            loss = loss + ridge * (self.gain * scalars).pow(2).sum()
        if peak_ridge > 0 and self.peak_weight is not None:
            loss = loss + peak_ridge * (self.gain * self.peak_weight).pow(2).sum()
        if sparsity > 0:
            loss = loss + sparsity * scalars.abs().sum()
            if self.weight is not None:
                loss = loss + sparsity * self.weight.norm(dim=-1).sum()
        if feature_l2 > 0 and self.weight is not None:
            loss = loss + feature_l2 * self.weight.pow(2).sum()
        return loss

    def _scalar_weights(self) -> torch.Tensor:
        """The presence weights, then the similarity weights where the head has them."""
        if self.similarity_weight is None:
            return self.presence_weight
        return torch.cat([self.presence_weight, self.similarity_weight])

    def forward(self, alignment: LevelAlignment) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) per-prompt terms and (B, K) presence of one level."""
        shows = self.shows(alignment.similarity, alignment.mask)
        presence = self._presence(shows, alignment.mask)
        terms = self.gain * (self.presence_weight * presence + self.bias)
        if self.similarity_weight is not None:
            terms = terms + self.gain * (
                self.similarity_weight * alignment.prompt_similarity / self.temperature
            )
        if self.peak_weight is not None:
            # the token that shows prompt k most clearly (0 on a level with no token)
            terms = terms + self.gain * self.peak_weight * shows.amax(dim=1)
        if self.weight is not None:
            terms = terms + (self.dropout(alignment.features) * self.weight).sum(dim=-1)
        return terms, presence


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
    selected tokens and normalised per prompt. Balanced OT gives every prompt
    the same mass, so how much of an attribute is present is carried beside Z:
    s_k = sum_i P~_ik S_ik (the prompt's transport-weighted similarity, as in
    PLOT) here, presence_k by the head (:class:`AdditivePromptHead`). Both are
    differentiable in S, the path by which the text projection learns while
    the plan stays constant. ``add_aligned_prompt`` (older models only) adds
    s_k T_k to Z_k, a shortcut that let prompts collapse.
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
    prompt_similarity = (weights * similarity).sum(dim=1)  # (B, K)
    if settings.add_aligned_prompt:
        features = features + prompt_similarity.unsqueeze(-1) * prompts.unsqueeze(0)
    has_tokens = (counts > 0).view(-1, 1, 1)
    features = torch.where(has_tokens, features, empty_feature.expand_as(features))
    has = has_tokens.view(-1, 1)
    prompt_similarity = torch.where(has, prompt_similarity, torch.zeros_like(prompt_similarity))
    return LevelAlignment(
        tokens,
        mask,
        similarity,
        plan,
        scores,
        selected,
        features,
        iterations,
        None,
        prompt_similarity,
    )


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
