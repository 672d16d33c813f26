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
from torch import nn

from napari_hila.errors import FeatureFileError
from napari_hila.features.multiscale import parse_magnification
from napari_hila.features.store import SlideFeatures
from napari_hila.models.base import SurvivalOutput, survival_from_logits
from napari_hila.models.batch import SlideBatch, collate
from napari_hila.models.crossfusion_layers import (
    ConvolutionalFusion,
    CrossAttentionBlock,
    SquareGrid,
    SquareTransformer,
)
from napari_hila.models.explain import check_single_slide, tile_size_for
from napari_hila.models.registry import register_model
from napari_hila.results import Explanation, LevelExplanation

__all__ = [
    "CrossFusionConfig",
    "CrossFusion",
    "scale_tokens",
    "synthetic_multiscale_slide",
]


@dataclass
class CrossFusionConfig:
    """CrossFusion settings; defaults follow the paper and its public code."""

    patch_dim: int = 1024  # width of the patch features (same encoder at every scale)
    width: int = 512
    heads: int = 8
    mlp_ratio: float = 2.0
    dropout: float = 0.1  # on projections and feed-forward layers
    # Dropout on attention weights makes CPU attention keep the whole (N x M) matrix
    # for backward (gigabytes at 20x); the reference uses none in cross-attention.
    attention_dropout: float = 0.0
    n_bins: int = 4
    nll_alpha: float = 0.2  # uncensored weight of the discrete-time NLL (paper: 0.2)
    coarse_scale: str = "5x"
    query_scale: str = "10x"
    fine_scale: str = "20x"
    main_scale: str = (
        "20x"  # magnification of SlideBatch.patch_features, used when absent from scales
    )
    explain_top_fraction: float = 0.1  # share of tiles marked "selected" in the explanation
    explain_query_chunk: int = 128  # 10x queries per step for the explanation maps (bounds memory)


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
        "extract them again with the multi-magnification mode "
        "(`napari-hila extract SLIDES --out DIR --magnifications 5x,10x,20x`)"
    )


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

    @classmethod
    def bench_batch(
        cls, n_patches: int, n_regions: int, seed: int = 0, feature_dim: int = 1024
    ) -> SlideBatch:
        """A synthetic slide for ``napari-hila bench model``: ``n_patches`` 20x tiles, their 10x and 5x parents."""
        return collate([synthetic_multiscale_slide(n_patches, feature_dim, seed)])

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
        scores = columns[:, 0].copy()
        columns *= len(columns)  # relative to a uniform share, the scale of every map
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
        return int(round(main_size * parse_magnification(main) / parse_magnification(scale)))


def synthetic_multiscale_slide(n_patches: int, feature_dim: int, seed: int = 0) -> SlideFeatures:
    """Random features on a square 20x grid (256 px tiles) with the 10x and 5x tiles covering it."""
    rng = np.random.default_rng(seed)
    side = max(1, int(math.ceil(math.sqrt(n_patches))))
    index = np.arange(n_patches)
    c20 = np.stack([index % side, index // side], axis=1).astype(np.int64) * 256
    c10 = np.unique(c20 // 512 * 512, axis=0)
    c5 = np.unique(c20 // 1024 * 1024, axis=0)

    def features(n: int) -> np.ndarray:
        return rng.normal(size=(n, feature_dim)).astype(np.float32)

    return SlideFeatures(
        features=features(len(c20)),
        coords=c20,
        region_features=np.zeros((0, feature_dim), np.float32),
        region_coords=np.zeros((0, 2), np.int64),
        patch_to_region=np.full(len(c20), -1, np.int64),
        scales={"10x": (features(len(c10)), c10), "5x": (features(len(c5)), c5)},
    )
