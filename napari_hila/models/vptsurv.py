"""VPTSurv: end-to-end multi-source visual prompt tuning on raw tiles (METHODS section 3).

A frozen ViT encodes each tile. Every encoder layer gets a small adaptor
(down-projection to ``adaptor_dim``, an attention layer whose keys and values
are visual prompts, up-projection, added to the layer's output). The prompts
come from two sources, both embedded with the frozen patch embedding:

- scale prompt: the 2 x 2 block of grid tiles around the tile, resized to one tile;
- structure prompt: the tile with its low spatial frequencies removed
  (inverse FFT of the FFT times a high-pass mask).

Each tile's tokens are pooled to one token; a two-layer decoder lets learned
survival queries cross-attend to the tile tokens and outputs hazards. Only the
adaptors and the decoder train. Tiles arrive as a :class:`TileBatch` that reads
pixels chunk by chunk, so inference over 1000+ tiles never holds them all.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from napari_hila.encoders.preprocess import ImagePreprocess, owner_preprocess
from napari_hila.errors import Cancelled, HilaError
from napari_hila.features.tile_bags import InMemoryTiles, TileBatch, tile_batch
from napari_hila.models.base import SurvivalOutput, survival_from_logits
from napari_hila.models.crossfusion_layers import Attention, feed_forward
from napari_hila.models.registry import register_model
from napari_hila.results import Explanation, LevelExplanation
from napari_hila.slides.grids import TARGET_MPP

__all__ = ["VPTSurvConfig", "VPTSurv", "high_pass", "PromptAdaptor", "RANDOM_ENCODER"]

Progress = Callable[[str, float], None]

#: Tiles per slide in ``napari-hila bench model`` (time grows linearly with the tile count).
BENCH_TILES = 32

#: Recorded as the encoder's source when a ViT was built without pretrained weights.
RANDOM_ENCODER = "random initialisation (no pretrained weights given; for tests only)"


@dataclass
class VPTSurvConfig:
    """VPTSurv settings. Values the paper does not give are marked (not from the paper)."""

    encoder: str = "vit"  # encoder registry name: fixes the owners' pre-processing
    encoder_weights: str = ""  # local ViT checkpoint, read when a new model is built
    encoder_source: str = ""  # where the frozen weights came from (recorded, never read)
    vit: dict = field(default_factory=dict)  # ViTConfig fields; filled from the checkpoint
    # the owners' transform of ``encoder`` (mean, std, interpolation, source; the size is the
    # ViT's): filled when the model is built, from the registry and the files beside the
    # weights (preprocessor_config.json, open_clip_config.json), as the encoder itself reads
    # them; saved with the model, so a loaded model prepares tiles as it was trained
    preprocessing: dict = field(default_factory=dict)
    adaptor_dim: int = 24
    adaptor_heads: int = 1  # (not from the paper)
    # structure prompt: frequencies below this many cycles/pixel are removed (not from the paper)
    highpass_cutoff: float = 0.05
    tile_pooling: str = "mean"  # "mean" of the patch tokens or the "cls" token (not from the paper)
    decoder_dim: int = 256  # (not from the paper)
    decoder_heads: int = 4  # (not from the paper)
    decoder_layers: int = 2
    num_queries: int = 4  # learned survival queries (not from the paper)
    dropout: float = 0.1
    n_bins: int = 4
    nll_alpha: float = 0.0
    train_tiles: int = 200  # tiles sampled per slide per training step
    inference_tiles: int = 1000  # tiles per slide at inference (all when the slide has fewer)
    target_mpp: float = TARGET_MPP  # tile resolution, um/px
    tile_seed: int = 0  # tile sampling: the same (seed, epoch, slide) always gives the same tiles
    tile_chunk: int = 32  # tiles through the encoder at once (bounds memory)
    # recompute encoder activations in backward: training memory per chunk, not per slide
    checkpoint_tiles: bool = True
    explain_top_fraction: float = 0.1

    #: models saved before ``preprocessing`` resized every tile bilinearly
    LEGACY_DEFAULTS: ClassVar[dict] = {"preprocessing": {"interpolation": "bilinear"}}

    @property
    def tile_px(self) -> int:
        return int(self.vit.get("image_size", 224))


_PREPROCESS_KEYS = ("mean", "std", "interpolation", "source")


def encoder_preprocessing(config: VPTSurvConfig, tower: nn.Module | None = None) -> ImagePreprocess:
    """Tiles -> ViT input as the encoder's owners prepare them (``encoders.preprocess``).

    The registry's transform of ``config.encoder`` at the ViT's size, overridden by
    the files beside ``tower``'s weights (read as ``ViTEncoder`` reads them, so VPTSurv
    and features of the same weights see the same pixels), then by ``config.preprocessing``.
    """
    from napari_hila.encoders.registry import get_encoder_spec

    spec = get_encoder_spec(config.encoder)
    weights = getattr(tower, "weights_path", None)
    base = owner_preprocess(spec, config.tile_px, weights, getattr(tower, "weights_config", None))
    saved = dict(config.preprocessing)
    unknown = sorted(set(saved) - {*_PREPROCESS_KEYS, "size"})
    if unknown:
        raise ValueError(f"preprocessing: unknown keys {unknown}; known: {list(_PREPROCESS_KEYS)}")
    for key in ("mean", "std"):
        if key in saved:
            values = tuple(float(v) for v in saved[key])
            if len(values) != 3:
                raise ValueError(f"preprocessing {key} needs 3 values (RGB), not {saved[key]!r}")
            saved[key] = values
    saved.pop("size", None)  # always the ViT's input size
    return replace(base, **saved)


def high_pass(images: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Remove spatial frequencies below ``cutoff`` cycles/pixel from (..., H, W) images.

    Inverse FFT of the FFT times a circular high-pass mask; the mean (zero
    frequency) is always removed, frequencies at or above ``cutoff`` kept as they are.
    """
    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h, device=images.device)[:, None]
    fx = torch.fft.fftfreq(w, device=images.device)[None, :]
    keep = (fy.square() + fx.square()).sqrt() >= cutoff
    keep[0, 0] = False
    spectrum = torch.fft.fft2(images.float())
    return torch.fft.ifft2(spectrum * keep).real


class PromptAdaptor(nn.Module):
    """Down-project, attend to the visual prompts (keys and values), up-project.

    The up-projection starts at zero, so an untrained adaptor leaves the frozen
    encoder's output exactly as it was.
    """

    def __init__(self, width: int, bottleneck: int, heads: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = nn.GELU()
        self.attn = Attention(bottleneck, heads, 0.0)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        queries = self.act(self.down(tokens))
        context = self.act(self.down(prompts))
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        return self.up(self.attn(queries, context, mask))


class DecoderLayer(nn.Module):
    """Survival queries: self-attention, cross-attention to the tile tokens, feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads, dropout)
        self.norm3 = nn.LayerNorm(width)
        self.ff = feed_forward(width, 2.0, dropout)

    def forward(
        self,
        queries: torch.Tensor,
        tiles: torch.Tensor,
        mask: torch.Tensor,
        need_weights: bool = False,
    ):
        h = self.norm1(queries)
        queries = queries + self.self_attn(
            h, h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        )
        h = self.norm2(queries)
        weights = self.cross_attn.weights(h, tiles, mask) if need_weights else None
        queries = queries + self.cross_attn(h, tiles, mask)
        return queries + self.ff(self.norm3(queries)), weights


def build_frozen_vit(config: VPTSurvConfig) -> nn.Module:
    """The encoder: from ``encoder_weights`` when given, else an empty ViT of shape ``config.vit``.

    An empty ViT is what a saved model is loaded into (its weights come with the
    model file), or a tiny random ViT for tests. Training from a random encoder
    without saying so is refused.
    """
    from napari_hila.encoders.vit import VisionTransformer, ViTConfig

    if config.encoder_weights:
        from napari_hila.encoders.checkpoints import load_vision_tower

        weights = Path(config.encoder_weights).expanduser()
        if not weights.exists():
            raise HilaError(
                f"{weights}: ViT weights for VPTSurv not found; give encoder_weights the path of a "
                "local checkpoint file or model directory (napari-hila never downloads weights)"
            )
        tower = load_vision_tower(weights)
        config.vit = dict(tower.config.to_dict())
        # read with the weights (their folder's preprocessor_config.json, ...), kept in the config
        config.preprocessing = encoder_preprocessing(config, tower).to_dict()
        config.encoder_source = str(config.encoder_weights)
        config.encoder_weights = ""  # the frozen weights travel with the model file from here on
    elif config.vit:
        tower = VisionTransformer(ViTConfig(**config.vit))
        config.encoder_source = config.encoder_source or RANDOM_ENCODER
    else:
        raise HilaError(
            "VPTSurv needs a ViT encoder: set encoder_weights=PATH to a local ViT checkpoint "
            "(e.g. `--set encoder_weights=/models/uni/pytorch_model.bin`); napari-hila never downloads weights"
        )
    for param in tower.parameters():
        param.requires_grad_(False)
    return tower.eval()


@register_model(
    "vptsurv",
    VPTSurvConfig,
    "VPTSurv: end-to-end visual prompt tuning of a frozen ViT on raw tiles (arXiv 2409.03804)",
    inputs="tiles",
)
class VPTSurv(nn.Module):
    """VPTSurv survival model; input is a :class:`~napari_hila.features.tile_bags.TileBatch`."""

    def __init__(self, config: VPTSurvConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.encoder = build_frozen_vit(cfg)
        self.preprocessing = encoder_preprocessing(cfg)
        cfg.preprocessing = self.preprocessing.to_dict()  # saved with the model
        width = int(self.encoder.config.width)
        self.adaptors = nn.ModuleList(
            PromptAdaptor(width, cfg.adaptor_dim, cfg.adaptor_heads) for _ in self.encoder.blocks
        )
        self.tile_proj = nn.Sequential(
            nn.Linear(width, cfg.decoder_dim), nn.LayerNorm(cfg.decoder_dim)
        )
        self.queries = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.decoder_dim) * 0.02)
        self.decoder = nn.ModuleList(
            DecoderLayer(cfg.decoder_dim, cfg.decoder_heads, cfg.dropout)
            for _ in range(cfg.decoder_layers)
        )
        self.head = nn.Sequential(
            nn.LayerNorm(cfg.decoder_dim), nn.Linear(cfg.decoder_dim, cfg.n_bins)
        )

    @classmethod
    def bench_config(cls) -> dict:
        """Settings for ``napari-hila bench model``: a ViT-S/16 shape at 224 px (random weights)."""
        vit = dict(image_size=224, patch_size=16, width=384, depth=12, heads=6, mlp_dim=1536)
        return {"vit": vit, "tile_chunk": BENCH_TILES}

    @classmethod
    def bench_batch(cls, n_patches: int, n_regions: int, seed: int = 0) -> TileBatch:
        """``BENCH_TILES`` random 224 px tiles of one slide (the token counts do not apply)."""
        rng = np.random.default_rng(seed)
        shape = (BENCH_TILES, 224, 224, 3)
        tiles = rng.integers(0, 256, shape, dtype=np.uint8)
        context = rng.integers(0, 256, shape, dtype=np.uint8)
        coords = np.stack([np.arange(BENCH_TILES) % 8, np.arange(BENCH_TILES) // 8], 1) * 448
        return TileBatch([InMemoryTiles(tiles, context, coords.astype(np.int64), 448, "bench")])

    def train(self, mode: bool = True) -> VPTSurv:
        super().train(mode)
        self.encoder.eval()  # frozen: never in training mode
        return self

    def batch_from_bags(self, bags, epoch: int = 0, train: bool = True) -> TileBatch:
        """Sample tiles from slides (:class:`SlideRef` or paths): ``train_tiles`` or ``inference_tiles`` each."""
        cfg = self.config
        n_tiles = cfg.train_tiles if train else cfg.inference_tiles
        return tile_batch(
            bags, n_tiles, cfg.tile_px, cfg.target_mpp, cfg.tile_seed, epoch if train else 0
        )

    def card_inputs(self) -> dict:
        """What the model card records about the inputs: the frozen encoder and the tile grid."""
        cfg = self.config
        encoder = {
            "name": cfg.encoder,
            "version": cfg.encoder_source,
            "dim": int(self.encoder.config.width),
            "dtype": "float32",  # no autocast: the adaptors train through the frozen ViT
            "device": str(self.encoder.pos_embed.device),
            "preprocessing": self.preprocessing.to_dict(),
        }
        return {
            "encoders": {"patch": encoder},  # no region encoder: tiles only
            "grid": {
                "patch_px": cfg.tile_px,
                "target_mpp": cfg.target_mpp,
                "tiles_per_slide": cfg.inference_tiles,
                "inputs": "tiles",
            },
        }

    # -- tiles -> one token per tile ---------------------------------------------------
    def _pixels(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 -> (n, 3, S, S) float on the model's device, prepared as the
        encoder's owners do (:attr:`preprocessing`: their resize filter, crop, mean/std)."""
        x = torch.as_tensor(np.ascontiguousarray(images), device=self.encoder.pos_embed.device)
        return self.preprocessing(x)

    @torch.no_grad()
    def _prompt_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen patch embedding plus patch positions: (n, L, width)."""
        return self.encoder.patch_embed(images) + self.encoder.pos_embed[:, 1:]

    def _encode_pixels(self, pixels: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        prompts = torch.cat(
            [
                self._prompt_tokens(context),
                self._prompt_tokens(high_pass(pixels, self.config.highpass_cutoff)),
            ],
            dim=1,
        )
        with torch.no_grad():
            tokens = self.encoder.embed(pixels)
        for block, adaptor in zip(self.encoder.blocks, self.adaptors, strict=True):
            tokens = block(tokens) + adaptor(tokens, prompts)
        tokens = self.encoder.norm(tokens)
        return tokens[:, 1:].mean(dim=1) if self.config.tile_pooling == "mean" else tokens[:, 0]

    def encode_tiles(self, tiles: np.ndarray, context: np.ndarray) -> torch.Tensor:
        """(n, H, W, 3) uint8 tiles and their 2 x 2 context -> (n, width) tile tokens."""
        pixels, ctx = self._pixels(tiles), self._pixels(context)
        if self.training and self.config.checkpoint_tiles and torch.is_grad_enabled():
            return checkpoint(self._encode_pixels, pixels, ctx, use_reentrant=False)
        return self._encode_pixels(pixels, ctx)

    def tile_tokens(
        self,
        batch: TileBatch,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode every slide chunk by chunk: (B, N, width) tokens and a (B, N) mask.

        ``progress("tiles", fraction)`` is called after each chunk and ``cancel``
        checked before each, so a viewer stays responsive and can stop the job.
        """
        per_slide = []
        total = max(1, sum(len(t) for t in batch.slides))
        done = 0
        for tiles in batch.slides:
            if len(tiles) == 0:
                raise HilaError("a slide has no tiles to encode; check its tissue detection")
            chunks = []
            for pixels, context in tiles.chunks(self.config.tile_chunk):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("VPTSurv stopped while encoding tiles")
                chunks.append(self.encode_tiles(pixels, context))
                done += len(pixels)
                if progress is not None:
                    progress("tiles", done / total)
            per_slide.append(torch.cat(chunks))
        longest = max(len(t) for t in per_slide)
        width = per_slide[0].shape[1]
        tokens = per_slide[0].new_zeros(len(per_slide), longest, width)
        mask = torch.zeros(len(per_slide), longest, dtype=torch.bool, device=tokens.device)
        for i, t in enumerate(per_slide):
            tokens[i, : len(t)] = t
            mask[i, : len(t)] = True
        return tokens, mask

    # -- tile tokens -> hazards --------------------------------------------------------
    def decode(
        self, tokens: torch.Tensor, mask: torch.Tensor, need_weights: bool = False
    ) -> SurvivalOutput:
        memory = self.tile_proj(tokens)
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        weights = []
        for layer in self.decoder:
            queries, w = layer(queries, memory, mask, need_weights)
            weights.append(w)
        logits = self.head(queries.mean(dim=1))
        details = {"cross_attention": weights} if need_weights else {}
        return survival_from_logits(logits, **details)

    def forward(
        self,
        batch: TileBatch,
        need_weights: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> SurvivalOutput:
        tokens, mask = self.tile_tokens(batch, progress, cancel)
        return self.decode(tokens, mask, need_weights)

    @torch.no_grad()
    def explain(
        self,
        batch: TileBatch,
        tile_sizes: Mapping[str, int] | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Explanation:
        """Risk, survival and the decoder's cross-attention over the slide's tiles."""
        if batch.batch_size != 1:
            raise ValueError(f"explain() takes a batch of one slide, got {batch.batch_size}")
        out = self.forward(batch, need_weights=True, progress=progress, cancel=cancel)
        weights = out.details["cross_attention"]  # per layer (1, Q, N), rows sum to 1
        last, first = weights[-1][0], weights[0][0]
        columns = [last.mean(dim=0), first.mean(dim=0), *last]
        names = ["cross-attention (last layer)", "cross-attention (first layer)"]
        names += [f"query {k + 1} (last layer)" for k in range(last.shape[0])]
        texts = [
            "Attention of the survival queries to each tile in the last decoder layer (mean over queries and heads)",
            "Attention of the survival queries to each tile in the first decoder layer (mean over queries and heads)",
        ]
        texts += [
            f"Attention of survival query {k + 1} to each tile, last decoder layer"
            for k in range(last.shape[0])
        ]
        maps = torch.stack(columns, dim=1).cpu().numpy().astype(np.float32)
        maps /= np.maximum(maps.sum(axis=0, keepdims=True), 1e-12)
        scores = maps[:, 0].copy()
        maps *= len(maps)  # relative to a uniform share, the scale of every map
        keep = max(1, int(math.ceil(self.config.explain_top_fraction * len(scores))))
        selected = np.zeros(len(scores), bool)
        selected[np.argsort(-scores, kind="stable")[:keep]] = True
        tiles = batch.slides[0]
        size = int((tile_sizes or {}).get("tiles", tiles.tile_size))
        level = LevelExplanation(
            level="tiles",
            coords=np.asarray(tiles.coords, np.int64),
            tile_size=size,
            scores=scores,
            selected=selected,
            maps=maps,
            map_names=names,
            map_texts=texts,
        )
        return Explanation(
            risk=float(out.risk[0]),
            hazards=out.hazards[0].cpu().numpy().astype(np.float32),
            survival=out.survival[0].cpu().numpy().astype(np.float32),
            levels={"tiles": level},
            contribution_method="none: VPTSurv has no prompts with texts",
        )
