"""A compact Vision Transformer whose state-dict keys follow timm's ViT layout.

UNI-style checkpoints (timm layout, optional layer scale) load directly; the
open_clip and transformers CLIP layouts are renamed onto it by
:mod:`napari_hila.encoders.checkpoints`, so every ViT here has one structure:

``patch_embed.proj`` (Conv2d) -> prepend ``cls_token`` -> add ``pos_embed`` ->
``norm_pre`` (Identity unless CLIP) -> ``blocks[i]`` -> ``norm`` -> class token ->
``head`` (Identity, or CLIP's projection as a bias-free Linear).

Each ``blocks[i]`` is ``x = x + ls1(attn(norm1(x)))`` then
``x = x + ls2(mlp(norm2(x)))`` with ``attn.qkv``, ``attn.proj``, ``mlp.fc1``,
``mlp.fc2``; ``ls1``/``ls2`` are Identity without layer scale. Code that adapts
layers (VPTSurv) iterates ``model.blocks`` and wraps or hooks single blocks;
:meth:`VisionTransformer.embed` and :meth:`VisionTransformer.pool` give the
steps before and after the blocks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ViTConfig:
    """Shape of a ViT; :mod:`checkpoints` infers it from the weights."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    layer_scale: bool = False
    pre_norm: bool = False  # CLIP's ln_pre
    proj_dim: int | None = None  # CLIP's image projection
    act: str = "gelu"  # "gelu" or "quick_gelu" (OpenAI CLIP)
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    patch_bias: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, L, width)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not divisible by {cfg.heads} heads")
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.act = QuickGELU() if cfg.act == "quick_gelu" else nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.ls2 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT with a class token; ``forward`` returns the (projected) class embedding."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, cfg.width) * 0.02)
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.head = (
            nn.Linear(cfg.width, cfg.proj_dim, bias=False) if cfg.proj_dim else nn.Identity()
        )

    @property
    def output_dim(self) -> int:
        return int(self.config.proj_dim or self.config.width)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> tokens (B, 1 + L, width) before the blocks."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm_pre(x + self.pos_embed)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the blocks -> the output embedding (B, output_dim)."""
        return self.head(self.norm(tokens)[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.pool(x)


PRECISION_ENV = "NAPARI_HILA_PRECISION"  # float32, bfloat16, float16 or auto (default)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for encoding on ``device``.

    "auto" (default, or ``$NAPARI_HILA_PRECISION``): bfloat16 on a CUDA GPU that
    supports it, else float16 on CUDA and MPS, float32 on the CPU. Mixed precision
    runs matrix products in the low dtype under autocast (norms and softmax stay
    float32); tests/test_encoders_vl.py measures the embeddings' agreement with
    float32.
    """
    import os

    choice = (precision or os.environ.get(PRECISION_ENV) or "auto").lower()
    if choice != "auto":
        if choice not in _DTYPES:
            from napari_hila.encoders.registry import EncoderError

            raise EncoderError(
                f"precision {choice!r} unknown ({PRECISION_ENV}); use auto, " + ", ".join(_DTYPES)
            )
        return _DTYPES[choice]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


class ViTEncoder:
    """A ViT image tower behind the vision-encoder interface.

    ``encode`` prepares tiles as the weights' owners do (``preprocessing``, an
    :class:`~napari_hila.encoders.preprocess.ImagePreprocess`: bicubic or bilinear
    shortest-side resize as PIL does it, centre crop, the owners' mean/std) and
    returns one embedding per tile, in batches, under autocast when ``precision``
    asks for bfloat16/float16 (see :func:`resolve_precision`); tiles reach a GPU
    through pinned host memory. ``model`` is the tower itself (a
    ``VisionTransformer``, or CONCH's ``ConchVisual`` around one, for code that
    adapts its blocks). ``dtype`` is what the tower runs in, recorded in feature files.
    """

    def __init__(
        self,
        model: nn.Module,
        spec,
        device: torch.device,
        batch_size: int = 32,
        precision: str | None = None,
        preprocessing=None,
    ):
        from napari_hila.encoders.preprocess import owner_preprocess

        self.model = model.eval().to(device)
        self.name = spec.name
        self.version = str(getattr(model, "weights_digest", "local"))
        self.device = device
        self.dtype = resolve_precision(precision, device)
        self.input_size = int(model.config.image_size)
        self.output_dim = model.output_dim
        self.batch_size = batch_size
        self.preprocessing = preprocessing or owner_preprocess(
            spec,
            self.input_size,
            getattr(model, "weights_path", None),
            getattr(model, "weights_config", None),
        )

    def preprocess(self, tiles: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> normalised (N, 3, S, S) float32 on the device."""
        x = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        return self.preprocessing(x)

    @torch.no_grad()
    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, output_dim) float32."""
        mixed = self.dtype != torch.float32
        out = []
        for i in range(0, len(tiles), self.batch_size):
            pixels = self.preprocess(tiles[i : i + self.batch_size])
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=mixed):
                out.append(self.model(pixels).float().cpu())
        if not out:
            return np.zeros((0, self.output_dim), np.float32)
        return torch.cat(out).numpy()
