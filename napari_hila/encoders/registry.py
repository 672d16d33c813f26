"""The one encoder registry: a name maps to how to load it and what it gives.

Vision encoders turn RGB tiles into vectors, text encoders turn prompt texts
into vectors. Nothing here downloads anything: encoders that need weights take
a local path, and the defaults (``hila-descriptor``, ``minilm``) need none.

>>> from napari_hila.encoders import get_vision_encoder
>>> enc = get_vision_encoder("hila-descriptor")
>>> enc.encode(tiles).shape  # doctest: +SKIP
(N, 48)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from napari_hila.devices import resolve_device
from napari_hila.errors import HilaError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderError(HilaError):
    """An encoder name is unknown, or its weights are missing or do not fit."""


class VisionEncoder(Protocol):
    name: str
    version: str
    output_dim: int
    input_size: int
    device: torch.device

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, output_dim) float32."""


class TextEncoder(Protocol):
    name: str
    version: str
    output_dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """K texts -> (K, output_dim) float32, rows of unit length."""


Loader = Callable[["EncoderSpec", "Path | None", torch.device], object]


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """What the registry knows about an encoder before loading it (built by keyword)."""

    name: str
    kind: str  # "vision" or "text"
    loader: Loader
    needs_weights: bool
    version: str
    description: str
    input_size: int | None = None  # side in pixels the tiles are resized to (vision)
    mean: tuple[float, float, float] | None = None  # normalisation (vision)
    std: tuple[float, float, float] | None = None
    output_dim: int | None = None  # None: read from the weights
    interpolation: str = "bicubic"  # the owners' resize (vision): "bicubic" or "bilinear"


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add ``spec`` to the registry (a name may be registered once)."""
    if spec.kind not in ("vision", "text"):
        raise ValueError(f"encoder kind must be 'vision' or 'text', not {spec.kind!r}")
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def available_encoders(kind: str | None = None) -> list[str]:
    """Registered encoder names, optionally only one kind ("vision" or "text")."""
    _ensure_builtins()
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def get_encoder_spec(name: str) -> EncoderSpec:
    """The spec of ``name``; an unknown name lists the known ones."""
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise EncoderError(f"unknown encoder {name!r}; known encoders: {known}") from None


def _load(name: str, kind: str, weights: str | os.PathLike | None, device: str) -> object:
    spec = get_encoder_spec(name)
    if spec.kind != kind:
        others = ", ".join(available_encoders(kind))
        raise EncoderError(
            f"{name!r} is a {spec.kind} encoder, not a {kind} one; use one of {others}"
        )
    path = Path(weights).expanduser() if weights else None
    where = "given"
    if path is None and spec.needs_weights:
        from napari_hila.encoders.userconfig import config_path, configured

        path, where = configured(name), f"named in {config_path()}"
        if path is None:
            flag = "--text-weights" if kind == "text" else "--weights"
            raise EncoderError(
                f"encoder {name!r} needs local weights: pass {flag} PATH (a checkpoint file or "
                f"a model directory) or add '{name.removesuffix('-text')}: PATH' to "
                f"{config_path()} (or the file $NAPARI_HILA_ENCODERS names); napari-hila "
                "never downloads weights"
            )
    if path is not None and not path.exists():
        raise EncoderError(f"{path}: weights {_where(name, path, where)} not found; check the path")
    return spec.loader(spec, path, resolve_device(device))


def _where(name: str, path: Path, where: str = "given") -> str:
    """``weights <where>`` for a message: given, or named in the encoders config."""
    from napari_hila.encoders.userconfig import config_path, configured

    if where == "given" and configured(name) == path:
        where = f"named in {config_path()}"
    return f"{where} for encoder {name!r}"


def resolve_weights(name: str, weights: str | os.PathLike | None = None) -> Path | None:
    """The weights ``name`` would load: ``weights`` if given, else the encoders config's entry."""
    if weights:
        return Path(weights).expanduser()
    if not get_encoder_spec(name).needs_weights:
        return None
    from napari_hila.encoders.userconfig import configured

    return configured(name)


def weights_status(name: str, weights: str | os.PathLike | None = None) -> tuple[bool, str]:
    """``(found, sentence)``: where ``name``'s weights are, or how to give them (for the dock)."""
    from napari_hila.encoders.userconfig import config_path

    if not get_encoder_spec(name).needs_weights:
        return True, f"{name}: needs no weights"
    path = resolve_weights(name, weights)
    if path is None:
        return False, (
            f"{name}: weights not found; add '{name.removesuffix('-text')}: PATH' to "
            f"{config_path()} (napari-hila never downloads weights)"
        )
    if not path.exists():
        return False, f"{name}: {path} does not exist; fix the path in {config_path()}"
    return True, f"{name}: {path}"


def encoder_version(name: str, weights: str | os.PathLike | None = None) -> str | None:
    """The version features of ``name`` record, without loading the encoder.

    The weights' digest (``sha256:...``) for encoders with weights, the built-in
    version otherwise; None when the weights are neither given nor configured.
    A missing weights file is an :class:`EncoderError` here, before any slide is read.
    """
    spec = get_encoder_spec(name)
    if not spec.needs_weights:
        return spec.version
    path = resolve_weights(name, weights)
    if path is None:
        return None
    if not path.exists():
        raise EncoderError(f"{path}: weights {_where(name, path)} not found; check the path")
    from napari_hila.encoders.checkpoints import weights_digest

    return weights_digest(path)


def get_vision_encoder(
    name: str = "hila-descriptor", weights: str | os.PathLike | None = None, device: str = "auto"
) -> VisionEncoder:
    """Load a vision encoder by name; ``weights`` is a local file or directory."""
    return _load(name, "vision", weights, device)  # type: ignore[return-value]


def get_text_encoder(
    name: str = "minilm", weights: str | os.PathLike | None = None, device: str = "auto"
) -> TextEncoder:
    """Load a text encoder by name; ``weights`` is a local file or directory."""
    return _load(name, "text", weights, device)  # type: ignore[return-value]


# -- built-in encoders ---------------------------------------------------------------------


def _load_descriptor(spec: EncoderSpec, weights: Path | None, device: torch.device) -> object:
    from napari_hila.encoders.descriptor import DescriptorEncoder

    return DescriptorEncoder()


def _load_minilm(spec: EncoderSpec, weights: Path | None, device: torch.device) -> object:
    from napari_hila.encoders.text import MiniLMTextEncoder

    return MiniLMTextEncoder(weights, device)


def _load_descriptor_vocabulary(
    spec: EncoderSpec, weights: Path | None, device: torch.device
) -> object:
    from napari_hila.encoders.vocabulary import DescriptorVocabularyEncoder

    return DescriptorVocabularyEncoder()


def _load_vit(spec: EncoderSpec, weights: Path | None, device: torch.device) -> object:
    from napari_hila.encoders.checkpoints import load_vision_tower
    from napari_hila.encoders.vit import ViTEncoder

    model = load_vision_tower(weights, VIT_LAYOUTS.get(spec.name))
    return ViTEncoder(model, spec, device)


#: the owners' layouts each named ViT is distributed in (``vit`` takes any)
VIT_LAYOUTS = {
    "uni": ("timm",),
    "conch-trunk": ("conch",),
    "quiltnet": ("open_clip",),
    "clip": ("open_clip", "transformers"),
    "plip": ("transformers",),
}


def _load_conch(spec: EncoderSpec, weights: Path | None, device: torch.device) -> object:
    from napari_hila.encoders.vl import load_conch_vision

    return load_conch_vision(spec, weights, device)


def _load_tower_text(spec: EncoderSpec, weights: Path | None, device: torch.device) -> object:
    from napari_hila.encoders.userconfig import configured
    from napari_hila.encoders.vl import load_tower_text

    return load_tower_text(spec, weights, device, tokenizer=configured(spec.name, "tokenizer"))


_BUILTINS_DONE = False


def _ensure_builtins() -> None:
    global _BUILTINS_DONE
    if _BUILTINS_DONE:
        return
    _BUILTINS_DONE = True
    from napari_hila.encoders.descriptor import DESCRIPTOR_DIM, DESCRIPTOR_VERSION

    register_encoder(
        EncoderSpec(
            name="hila-descriptor",
            kind="vision",
            loader=_load_descriptor,
            input_size=256,
            output_dim=DESCRIPTOR_DIM,
            needs_weights=False,
            version=DESCRIPTOR_VERSION,
            description="weight-free H&E descriptor: stains, nuclei, texture, background "
            "(fast on a CPU)",
        )
    )
    register_encoder(
        EncoderSpec(
            name="minilm",
            kind="text",
            loader=_load_minilm,
            output_dim=384,
            needs_weights=False,
            version="all-MiniLM-L6-v2",
            description="all-MiniLM-L6-v2 sentence embeddings, shipped with the package (offline)",
        )
    )
    from napari_hila.encoders.vocabulary import VOCABULARY_VERSION

    register_encoder(
        EncoderSpec(
            name="descriptor-vocabulary",
            kind="text",
            loader=_load_descriptor_vocabulary,
            output_dim=DESCRIPTOR_DIM,
            needs_weights=False,
            version=f"{VOCABULARY_VERSION}+descriptor{DESCRIPTOR_VERSION}",
            description="prompt words -> weights on named hila-descriptor dimensions (no weights; pairs "
            "with the hila-descriptor vision encoder)",
        )
    )
    # ViTs from local weights. The layout (timm, open_clip, transformers CLIP) is detected
    # from the checkpoint; the name fixes the pre-processing the weights were trained with
    # (encoders.preprocess: the owners' resize filter, crop and mean/std; a hub folder's
    # open_clip_config.json or preprocessor_config.json overrides mean/std and filter).
    vits = [
        (
            "vit",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "bilinear",
            "timm-layout ViT checkpoint (ImageNet normalisation)",
        ),
        (
            "uni",
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "bilinear",  # UNI's model card: transforms.Resize(224), torchvision's default
            "UNI (ViT-L/16, timm layout with layer scale)",
        ),
        (
            "conch-trunk",
            448,
            CLIP_MEAN,
            CLIP_STD,
            "bicubic",
            "CONCH's ViT-B/16 trunk alone: class token, 768-d, before CoCa's pooling and "
            "projection (not in the text tower's space)",
        ),
        (
            "clip",
            224,
            CLIP_MEAN,
            CLIP_STD,
            "bicubic",
            "CLIP image tower (open_clip or transformers layout)",
        ),
        (
            "plip",
            224,
            CLIP_MEAN,
            CLIP_STD,
            "bicubic",
            "PLIP image tower (transformers CLIP directory)",
        ),
        (
            "quiltnet",
            224,
            CLIP_MEAN,
            CLIP_STD,
            "bicubic",
            "QuiltNet image tower (open_clip checkpoint)",
        ),
    ]
    for name, size, mean, std, resize, text in vits:
        register_encoder(
            EncoderSpec(
                name=name,
                kind="vision",
                loader=_load_vit,
                input_size=size,
                mean=mean,
                std=std,
                needs_weights=True,
                version="local",
                description=text,
                interpolation=resize,
            )
        )
    register_encoder(
        EncoderSpec(
            name="conch",
            kind="vision",
            loader=_load_conch,
            input_size=448,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            needs_weights=True,
            version="local",
            description="CONCH image embedding (CoCa ViT-B/16 at 448 px: attention pooling, layer norm, "
            "projection; 512-d, shares conch-text's space)",
        )
    )
    texts = {
        "conch": "CONCH text tower (the same checkpoint; CONCH's tokenizer JSON)",
        "clip": "CLIP text tower (open_clip checkpoint or transformers CLIP directory)",
        "plip": "PLIP text tower (transformers CLIP directory with tokenizer files)",
        "quiltnet": "QuiltNet text tower (open_clip checkpoint with CLIP's tokenizer files)",
    }
    for name, text in texts.items():
        register_encoder(
            EncoderSpec(
                name=f"{name}-text",
                kind="text",
                loader=_load_tower_text,
                needs_weights=True,
                version="local",
                description=text,
            )
        )
