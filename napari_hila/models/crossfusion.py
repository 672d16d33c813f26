"""CrossFusion: multi-scale cross-attention convolutional fusion (METHODS section 2).

Patch features at 5x, 10x and 20x are projected to one width with a learned
scale embedding each. The 10x tokens are the queries of two cross-attention
blocks, one over the 5x tokens (coarse context) and one over the 20x tokens
(fine detail). The three resulting streams (coarse, 10x, fine) each pass a
TransMIL-style block, are stacked and fused by convolutions, and a final
transformer with a class token gives four hazard logits.

Every operation is masked, so a slide gives the same output alone and inside
a padded batch. The "pad the sequence to a square" step lays each slide's
tokens out on its own ceil(sqrt(n)) side square inside the batch's largest
square, with empty cells held at zero (the reference code repeats tokens
instead; zeros keep padding out of the result).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_hila.errors import FeatureFileError
from napari_hila.models.base import SurvivalOutput, survival_from_logits
from napari_hila.models.baselines import _PPEG
from napari_hila.models.batch import SlideBatch
from napari_hila.models.explain import check_single_slide, tile_size_for
from napari_hila.models.registry import register_model
from napari_hila.results import Explanation, LevelExplanation

__all__ = ["CrossFusionConfig", "CrossFusion", "scale_tokens", "magnification"]


@dataclass
class CrossFusionConfig:
    """CrossFusion settings; defaults follow the paper and its public code."""

    patch_dim: int = 1024  # width of the patch features (same encoder at every scale)
    width: int = 512
    heads: int = 8
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    n_bins: int = 4
    nll_alpha: float = 0.2  # uncensored weight of the discrete-time NLL (paper: 0.2)
    coarse_scale: str = "5x"
    query_scale: str = "10x"
    fine_scale: str = "20x"
    main_scale: str = (
        "20x"  # magnification of SlideBatch.patch_features, used when absent from scales
    )
    explain_top_fraction: float = 0.1  # share of tiles marked "selected" in the explanation
    explain_query_chunk: int = 512  # 10x queries per step when building cross-attention maps


def magnification(name: str) -> float:
    """'10x' -> 10.0; raises ValueError for a name that is not a magnification."""
    try:
        return float(name.lower().rstrip("x"))
    except ValueError:
        raise ValueError(f"scale name {name!r} is not a magnification such as '10x'") from None


def scale_tokens(
    batch: SlideBatch, name: str, main_scale: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, mask, coords) of one magnification from a batch."""
    if name in batch.scales:
        return batch.scales[name]
    if name == main_scale:
        return batch.patch_features, batch.patch_mask, batch.patch_coords
    have = sorted(batch.scales) + [f"{main_scale} (patch features)"]
    raise FeatureFileError(
        f"CrossFusion needs patch features at {name} but the features hold only {', '.join(have)}; "
        "extract them again with the multi-magnification mode (`napari-hila extract --multiscale`)"
    )


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
        self.attn = Attention(cfg.width, cfg.heads, cfg.dropout)
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
        self.attn = Attention(cfg.width, cfg.heads, cfg.dropout)
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
    ppeg: _PPEG, tokens: torch.Tensor, grid: SquareGrid, has_class: bool
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
        self.ppeg = _PPEG(cfg.width)
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
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Sequential(nn.Linear(half, cfg.width), nn.LayerNorm(cfg.width))

    def forward(self, streams: list[torch.Tensor], grid: SquareGrid) -> torch.Tensor:
        stacked = torch.stack([grid.to_image(s) for s in streams], dim=1)  # (B, 3, D, S, S)
        mixed = grid.to_image(grid.from_image(self.mix(stacked)[:, 0]))  # keep empty cells at zero
        conv = self.skip(mixed) + sum(c(mixed) for c in self.convs)
        fused = grid.from_image(self.drop(self.act(conv)))
        return self.out(fused)


@register_model(
    "crossfusion",
    CrossFusionConfig,
    "CrossFusion: 5x/10x/20x features, cross-attention from 10x, convolutional fusion (MIDL 2026)",
    inputs="multiscale",
)
class CrossFusion(nn.Module):
    """CrossFusion survival model on three magnifications of patch features."""

    def __init__(self, config: CrossFusionConfig) -> None:
        super().__init__()
        self.config = cfg = config
        names = (cfg.coarse_scale, cfg.query_scale, cfg.fine_scale)
        self.project = nn.ModuleDict(
            {
                self._key(n): nn.Sequential(
                    nn.Linear(cfg.patch_dim, cfg.width), nn.LayerNorm(cfg.width)
                )
                for n in names
            }
        )
        self.scale_embedding = nn.ParameterDict(
            {self._key(n): nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02) for n in names}
        )
        self.coarse_cross = CrossAttentionBlock(cfg)
        self.fine_cross = CrossAttentionBlock(cfg)
        self.streams = nn.ModuleDict(
            {s: SquareTransformer(cfg, class_token=False) for s in ("coarse", "query", "fine")}
        )
        self.fusion = ConvolutionalFusion(cfg)
        self.final = SquareTransformer(cfg, class_token=True)
        self.head = nn.Linear(cfg.width, cfg.n_bins)

    @staticmethod
    def _key(scale: str) -> str:
        return "s" + scale.replace(".", "_")  # ModuleDict keys may not contain dots

    def _embed(self, batch: SlideBatch, scale: str):
        feats, mask, _ = scale_tokens(batch, scale, self.config.main_scale)
        if feats.shape[-1] != self.config.patch_dim:
            raise FeatureFileError(
                f"{scale} features have width {feats.shape[-1]} but this CrossFusion model expects "
                f"{self.config.patch_dim}; extract features with the encoder the model was trained on"
            )
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            raise FeatureFileError(
                f"a slide has no tissue tiles at {scale}; CrossFusion needs all three magnifications"
            )
        key = self._key(scale)
        return self.project[key](feats) + self.scale_embedding[key], mask

    def forward(self, batch: SlideBatch, need_weights: bool = False) -> SurvivalOutput:
        cfg = self.config
        coarse, coarse_mask = self._embed(batch, cfg.coarse_scale)
        query, query_mask = self._embed(batch, cfg.query_scale)
        fine, fine_mask = self._embed(batch, cfg.fine_scale)
        from_coarse = self.coarse_cross(query, coarse, coarse_mask)
        from_fine = self.fine_cross(query, fine, fine_mask)

        grid = SquareGrid(query_mask)
        streams = [
            self.streams[name](grid.scatter(tokens), grid)[0]
            for name, tokens in (("coarse", from_coarse), ("query", query), ("fine", from_fine))
        ]
        fused = self.fusion(streams, grid)
        out, weights = self.final(fused, grid, need_weights=need_weights)
        logits = self.head(out[:, 0])
        details = {}
        if need_weights:
            # Class-token attention over the grid cells, mapped back to the 10x tokens.
            details["class_attention"] = [grid.gather(w[:, 1:]) for w in weights]
            details["cross_inputs"] = (query, coarse, coarse_mask, fine, fine_mask, query_mask)
        return survival_from_logits(logits, **details)

    @torch.no_grad()
    def _cross_maps(
        self,
        block: CrossAttentionBlock,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        query_weight: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context-token attention weighted by the class attention, and its plain mean over queries."""
        real = query[0, query_mask[0]][None]
        weight = query_weight[query_mask[0]]
        weighted = context.new_zeros(context.shape[1])
        mean = context.new_zeros(context.shape[1])
        step = max(1, self.config.explain_query_chunk)
        for start in range(0, real.shape[1], step):
            attn = block.attn.weights(real[:, start : start + step], context, context_mask)[0]
            weighted += weight[start : start + step] @ attn
            mean += attn.sum(dim=0)
        return weighted, mean / max(real.shape[1], 1)

    @torch.no_grad()
    def explain(
        self, batch: SlideBatch, tile_sizes: Mapping[str, int] | None = None
    ) -> Explanation:
        """Risk, survival and per-magnification attention maps for a batch of one slide.

        ``tile_sizes`` maps a magnification (or "patch" for the main one) to its
        level-0 tile side; missing ones come from the coordinate spacing.
        """
        check_single_slide(batch)
        cfg = self.config
        out = self.forward(batch, need_weights=True)
        query, coarse, coarse_mask, fine, fine_mask, query_mask = out.details["cross_inputs"]
        first, last = (a[0] for a in out.details["class_attention"])
        last = last / last.sum().clamp_min(1e-12)
        first = first / first.sum().clamp_min(1e-12)
        coarse_w, coarse_mean = self._cross_maps(
            self.coarse_cross, query, query_mask, coarse, coarse_mask, last
        )
        fine_w, fine_mean = self._cross_maps(
            self.fine_cross, query, query_mask, fine, fine_mask, last
        )

        q = cfg.query_scale
        levels = {
            q: self._level(
                batch,
                tile_sizes,
                q,
                query_mask[0],
                [last, first],
                ["class attention", "class attention (first layer)"],
                [
                    f"Attention of the final transformer's class token to each {q} tile (last layer, mean over heads)",
                    f"Attention of the final transformer's class token to each {q} tile (first layer, mean over heads)",
                ],
            ),
        }
        for scale, weighted, mean, role in (
            (cfg.coarse_scale, coarse_w, coarse_mean, "coarse"),
            (cfg.fine_scale, fine_w, fine_mean, "fine"),
        ):
            mask = coarse_mask[0] if role == "coarse" else fine_mask[0]
            levels[scale] = self._level(
                batch,
                tile_sizes,
                scale,
                mask,
                [weighted, mean],
                ["class attention via cross-attention", "mean cross-attention"],
                [
                    f"Class-token attention of the {q} tiles carried to the {scale} tiles through the "
                    f"{role} cross-attention (sum over {q} queries of class weight x cross-attention)",
                    f"Cross-attention each {scale} tile receives from the {q} tiles, averaged over queries",
                ],
            )
        return Explanation(
            risk=float(out.risk[0]),
            hazards=out.hazards[0].cpu().numpy().astype(np.float32),
            survival=out.survival[0].cpu().numpy().astype(np.float32),
            levels=levels,
        )

    def _level(
        self,
        batch: SlideBatch,
        tile_sizes: Mapping[str, int] | None,
        scale: str,
        mask: torch.Tensor,
        maps: list[torch.Tensor],
        names: list[str],
        texts: list[str],
    ) -> LevelExplanation:
        _, _, coords = scale_tokens(batch, scale, self.config.main_scale)
        real = mask.cpu().numpy()
        columns = np.stack([m.detach().cpu().numpy()[real] for m in maps], axis=1).astype(
            np.float32
        )
        columns /= np.maximum(columns.sum(axis=0, keepdims=True), 1e-12)  # each map sums to 1
        scores = columns[:, 0]
        keep = max(1, int(math.ceil(self.config.explain_top_fraction * len(scores))))
        selected = np.zeros(len(scores), bool)
        selected[np.argsort(-scores, kind="stable")[:keep]] = True
        tile_coords = coords[0].cpu().numpy()[real].astype(np.int64)
        return LevelExplanation(
            level=scale,
            coords=tile_coords,
            tile_size=self._tile_size(batch, scale, tile_sizes),
            scores=scores,
            selected=selected,
            maps=columns,
            map_names=names,
            map_texts=texts,
        )

    def _tile_size(
        self, batch: SlideBatch, scale: str, tile_sizes: Mapping[str, int] | None
    ) -> int:
        """Level-0 side of one tile at ``scale``: given, else the coordinate step, else by magnification."""
        main = self.config.main_scale
        sizes = dict(tile_sizes or {})
        if main not in sizes and "patch" in sizes:
            sizes[main] = sizes["patch"]
        _, mask, coords = scale_tokens(batch, scale, main)
        xy = coords[0][mask[0]].cpu().numpy()
        if scale in sizes or len(np.unique(xy[:, 0])) > 1 or len(np.unique(xy[:, 1])) > 1:
            return tile_size_for(scale, xy, sizes)
        _, main_mask, main_coords = scale_tokens(batch, main, main)
        main_size = tile_size_for(main, main_coords[0][main_mask[0]].cpu().numpy(), sizes)
        return int(round(main_size * magnification(main) / magnification(scale)))
