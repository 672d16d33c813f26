"""Building blocks of CrossFusion: masked attention, the square token layout, fusion.

Every block takes masks so padded tokens never reach a real token's output;
VPTSurv reuses :class:`Attention` and :func:`feed_forward`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_hila.models.baselines import PPEG

if TYPE_CHECKING:
    from napari_hila.models.crossfusion import CrossFusionConfig

__all__ = [
    "Attention",
    "feed_forward",
    "CrossAttentionBlock",
    "TransformerLayer",
    "SquareGrid",
    "positional_conv",
    "SquareTransformer",
    "ConvolutionalFusion",
]


class Attention(nn.Module):
    """Multi-head attention over a masked context via ``scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def _qkv(self, x: torch.Tensor, context: torch.Tensor):
        k, v = self.key_value(context).chunk(2, dim=-1)
        return self._split(self.query(x)), self._split(k), self._split(v)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        q, k, v = self._qkv(x, context)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=context_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        b, h, n, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * dh))

    def weights(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        """Head-averaged attention weights (B, N, M), for explanations."""
        q, k, _ = self._qkv(x, context)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~context_mask[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1).mean(dim=1)


def feed_forward(width: int, ratio: float, dropout: float) -> nn.Sequential:
    hidden = int(width * ratio)
    return nn.Sequential(
        nn.Linear(width, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, width),
        nn.Dropout(dropout),
    )


class CrossAttentionBlock(nn.Module):
    """Queries attend to a context; residual, LayerNorm, then a residual feed-forward."""

    def __init__(self, cfg: CrossFusionConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg.width, cfg.heads, cfg.attention_dropout)
        self.norm = nn.LayerNorm(cfg.width)
        self.ff = feed_forward(cfg.width, cfg.mlp_ratio, cfg.dropout)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.norm(queries + self.attn(queries, context, context_mask))
        return x + self.ff(x)


class TransformerLayer(nn.Module):
    """Pre-norm self-attention and feed-forward, padded tokens masked as keys."""

    def __init__(self, cfg: CrossFusionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg.width, cfg.heads, cfg.attention_dropout)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.ff = feed_forward(cfg.width, cfg.mlp_ratio, cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.ff(self.norm2(x))

    def class_attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention of token 0 (the class token) to every token (B, N)."""
        h = self.norm1(x)
        return self.attn.weights(h[:, :1], h, mask)[:, 0]


class SquareGrid:
    """Each slide's tokens laid out row by row on its own square inside one (S x S) grid."""

    def __init__(self, mask: torch.Tensor) -> None:
        counts = mask.sum(dim=1)
        sides = torch.ceil(torch.sqrt(counts.clamp_min(1).double())).long()
        self.side = int(sides.max())
        rank = mask.long().cumsum(dim=1) - 1
        cell = (rank // sides[:, None]) * self.side + rank % sides[:, None]
        self.dump = self.side * self.side  # padded tokens land in an extra, discarded cell
        self.index = torch.where(mask, cell, torch.full_like(cell, self.dump))
        self.token_mask = mask
        self.mask = torch.zeros(mask.shape[0], self.dump + 1, dtype=torch.bool, device=mask.device)
        self.mask.scatter_(1, self.index, mask)
        self.mask = self.mask[:, : self.dump]

    def scatter(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, S*S, D) grid, empty cells zero."""
        b, _, d = tokens.shape
        grid = tokens.new_zeros(b, self.dump + 1, d)
        grid.scatter_(
            1, self.index[..., None].expand(-1, -1, d), tokens * self.token_mask[..., None]
        )
        return grid[:, : self.dump]

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """(B, S*S) per-cell values -> (B, N) per-token values (0 on padded tokens)."""
        safe = self.index.clamp(max=self.dump - 1)
        return values.gather(1, safe) * self.token_mask

    def to_image(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, S*S, D) -> (B, D, S, S) with empty cells zero."""
        grid = grid * self.mask[..., None]
        return grid.transpose(1, 2).reshape(grid.shape[0], grid.shape[2], self.side, self.side)

    def from_image(self, image: torch.Tensor) -> torch.Tensor:
        return image.flatten(2).transpose(1, 2) * self.mask[..., None]


def positional_conv(
    ppeg: PPEG, tokens: torch.Tensor, grid: SquareGrid, has_class: bool
) -> torch.Tensor:
    """TransMIL's PPEG (7/5/3 depthwise convolutions) on the square layout, empty cells held at zero."""
    if not has_class:
        tokens = torch.cat([tokens.new_zeros(tokens.shape[0], 1, tokens.shape[2]), tokens], dim=1)
    cells = grid.mask[..., None]
    out = ppeg(torch.cat([tokens[:, :1], tokens[:, 1:] * cells], dim=1), grid.side)
    out = torch.cat([out[:, :1], out[:, 1:] * cells], dim=1)
    return out if has_class else out[:, 1:]


class SquareTransformer(nn.Module):
    """TransMIL-style block: attention, positional convolution, attention (optional class token)."""

    def __init__(self, cfg: CrossFusionConfig, class_token: bool) -> None:
        super().__init__()
        self.first = TransformerLayer(cfg)
        # channels-last weights make oneDNN's depthwise convolutions several times faster on CPUs
        self.ppeg = PPEG(cfg.width).to(memory_format=torch.channels_last)
        self.second = TransformerLayer(cfg)
        self.norm = nn.LayerNorm(cfg.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width)) if class_token else None
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    def forward(self, tokens: torch.Tensor, grid: SquareGrid, need_weights: bool = False):
        mask = grid.mask
        x = tokens
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        weights = []
        if need_weights and self.cls is not None:
            weights.append(self.first.class_attention(x, mask))
        x = positional_conv(self.ppeg, self.first(x, mask), grid, has_class=self.cls is not None)
        if need_weights and self.cls is not None:
            weights.append(self.second.class_attention(x, mask))
        x = self.norm(self.second(x, mask))
        return x, weights


class ConvolutionalFusion(nn.Module):
    """Stack the three streams, mix them with a 1x1 convolution, then 7/5/3 grouped convolutions."""

    def __init__(self, cfg: CrossFusionConfig) -> None:
        super().__init__()
        half = cfg.width // 2
        self.mix = nn.Conv3d(3, 1, kernel_size=1)
        self.convs = nn.ModuleList(
            nn.Conv2d(cfg.width, half, k, padding=k // 2, groups=half) for k in (7, 5, 3)
        )
        self.skip = nn.Conv2d(cfg.width, half, 1, groups=half)
        self.convs.to(memory_format=torch.channels_last)
        self.skip.to(memory_format=torch.channels_last)
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Sequential(nn.Linear(half, cfg.width), nn.LayerNorm(cfg.width))

    def forward(self, streams: list[torch.Tensor], grid: SquareGrid) -> torch.Tensor:
        stacked = torch.stack([grid.to_image(s) for s in streams], dim=1)  # (B, 3, D, S, S)
        mixed = grid.to_image(grid.from_image(self.mix(stacked)[:, 0]))  # keep empty cells at zero
        mixed = mixed.contiguous(memory_format=torch.channels_last)
        conv = self.skip(mixed) + sum(c(mixed) for c in self.convs)
        fused = grid.from_image(self.drop(self.act(conv)))
        return self.out(fused)
