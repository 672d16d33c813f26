"""Attention-MIL baselines on patch features: ABMIL and TransMIL (METHODS 1.7).

Both explain themselves with their patch attention as the one map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from napari_hila.models.attention import MultiHeadSelfAttention
from napari_hila.models.base import SurvivalOutput, survival_from_logits
from napari_hila.models.batch import SlideBatch
from napari_hila.models.explain import attention_explanation, forward_for_explanation
from napari_hila.models.registry import register_model
from napari_hila.results import Explanation

__all__ = ["ABMIL", "ABMILConfig", "PPEG", "TransMIL", "TransMILConfig"]


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over valid tokens; a finite fill keeps an empty slide NaN-free."""
    weights = torch.softmax(logits.masked_fill(~mask, -1e4), dim=-1)
    return weights * mask.to(weights.dtype)


class _AttentionMIL(nn.Module):
    """Shared explain(): forward() puts the (B, N) patch attention in details."""

    attention_text = "attention weight"

    @torch.no_grad()
    def explain(
        self, batch: SlideBatch, tile_sizes: Mapping[str, int] | None = None
    ) -> Explanation:
        output = forward_for_explanation(self, batch)
        attention = output.details["attention"]
        return attention_explanation(output, batch, attention, tile_sizes, self.attention_text)


@dataclass
class ABMILConfig:
    patch_dim: int = 1024
    hidden_dim: int = 256
    attention_dim: int = 128
    dropout: float = 0.25
    n_bins: int = 4
    nll_alpha: float = 0.0  # uncensored weight of the NLL, read by the trainer


@register_model("abmil", ABMILConfig, "gated attention MIL on patch features (Ilse et al. 2018)")
class ABMIL(_AttentionMIL):
    """Gated attention pooling: a_i ∝ exp(w^T (tanh(V h_i) * sigmoid(U h_i)))."""

    attention_text = "gated attention weight"

    def __init__(self, config: ABMILConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Sequential(
            nn.Linear(config.patch_dim, config.hidden_dim), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.attention_v = nn.Linear(config.hidden_dim, config.attention_dim)
        self.attention_u = nn.Linear(config.hidden_dim, config.attention_dim)
        self.attention_w = nn.Linear(config.attention_dim, 1)
        self.classifier = nn.Linear(config.hidden_dim, config.n_bins)

    def forward(self, batch: SlideBatch) -> SurvivalOutput:
        tokens = self.embed(batch.patch_features)
        gated = torch.tanh(self.attention_v(tokens)) * torch.sigmoid(self.attention_u(tokens))
        attention = _masked_softmax(self.attention_w(gated).squeeze(-1), batch.patch_mask)
        pooled = (attention.unsqueeze(-1) * tokens).sum(dim=1)
        return survival_from_logits(self.classifier(pooled), attention=attention)


@dataclass
class TransMILConfig:
    patch_dim: int = 1024
    hidden_dim: int = 256  # 512 in the paper; 256 like the other models here
    n_heads: int = 8
    dropout: float = 0.1
    n_bins: int = 4
    landmarks: int = 128  # Nystrom landmarks (paper: width / 2); 0 = exact attention
    pinv_iterations: int = 6
    nll_alpha: float = 0.0  # uncensored weight of the NLL, read by the trainer


class PPEG(nn.Module):
    """Pyramid position encoding: depthwise convolutions 7/5/3 on the token square."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, k, padding=k // 2, groups=width) for k in (7, 5, 3)
        )

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls_token, tokens = x[:, :1], x[:, 1:]
        grid = tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


@register_model("transmil", TransMILConfig, "TransMIL: correlated MIL with PPEG (Shao et al. 2021)")
class TransMIL(_AttentionMIL):
    """TransMIL: Nystrom attention (``landmarks``) or exact attention (``landmarks = 0``).

    Each slide is padded to a square side x side grid by repeating its own
    first tokens (as in the paper), so slides run one at a time: the square
    depends on the slide's own token count, and padding never mixes slides.
    """

    attention_text = "class-token attention in the last TransMIL layer (mean over heads)"

    def __init__(self, config: TransMILConfig) -> None:
        super().__init__()
        if config.hidden_dim % config.n_heads:
            raise ValueError("TransMIL hidden_dim must be divisible by n_heads")
        self.config = config
        width = config.hidden_dim
        self.embed = nn.Sequential(nn.Linear(config.patch_dim, width), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        attention = (config.n_heads, config.dropout, config.landmarks, config.pinv_iterations)
        self.layer1 = MultiHeadSelfAttention(width, *attention)
        self.ppeg = PPEG(width)
        self.layer2 = MultiHeadSelfAttention(width, *attention)
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, config.n_bins)

    def _one_slide(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_tokens = features.shape[0]
        tokens = self.embed(features).unsqueeze(0)
        if n_tokens == 0:
            tokens = tokens.new_zeros(1, 1, tokens.shape[-1])
        side = math.ceil(math.sqrt(tokens.shape[1]))
        extra = side * side - tokens.shape[1]
        sources = torch.arange(extra, device=tokens.device) % tokens.shape[1]
        x = torch.cat([self.cls_token, tokens, tokens[:, sources]], dim=1)
        x = self.ppeg(self.layer1(x), side)
        # Class-token attention on the tokens: the square's padding copies give
        # theirs to the originals, then it is renormalised without the class token.
        raw = self.layer2.class_attention(x)[0, 1:]
        attention = raw[: tokens.shape[1]].index_add(0, sources, raw[tokens.shape[1] :])
        attention = (attention / attention.sum().clamp(min=1e-12))[:n_tokens]
        x = self.norm(self.layer2(x))
        return x[0, 0], attention

    def forward(self, batch: SlideBatch) -> SurvivalOutput:
        pooled, attentions = [], []
        width = batch.patch_mask.shape[1]
        for b in range(batch.batch_size):
            valid = batch.patch_mask[b]
            summary, attention = self._one_slide(batch.patch_features[b][valid])
            pooled.append(summary)
            attentions.append(attention.new_zeros(width).masked_scatter(valid, attention))
        logits = self.classifier(torch.stack(pooled))
        return survival_from_logits(logits, attention=torch.stack(attentions))
