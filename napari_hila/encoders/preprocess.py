"""Tiles -> model input exactly as each encoder's owners prepare images, on any device.

The owners' evaluation transforms, read from their public code:

- CLIP / open_clip (QuiltNet, OpenAI CLIP): ``open_clip.transform.image_transform``:
  ``Resize(size, BICUBIC)`` on the shortest side, ``CenterCrop(size)``, ``ToTensor``,
  ``Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)``; a hub checkpoint's
  ``open_clip_config.json`` may override them under ``preprocess_cfg``
  (``mean``, ``std``, ``interpolation``).
- CONCH: ``conch.open_clip_custom.transform.image_transform`` with the factory's
  OpenAI mean/std: the same bicubic shortest-side resize and centre crop, at 448 px.
- transformers CLIP (PLIP, CLIP): ``CLIPImageProcessor``: ``resample=BICUBIC``,
  ``size={"shortest_edge": 224}``, centre crop, OpenAI mean/std; a model folder's
  ``preprocessor_config.json`` overrides ``image_mean``, ``image_std`` and ``resample``.
- UNI (timm): its model card's ``transforms.Resize(224)`` (torchvision's default,
  bilinear) and ImageNet mean/std.

All of them resize with PIL on 8-bit images: PIL filters antialias (the kernel
widens with the reduction factor; bicubic uses a = -0.5) and run in two
separable passes, horizontal then vertical, rounding and clipping to 0..255
after each. :func:`resize_like_pil` does the same with torch's antialiased
interpolation (on the CPU its 8-bit kernels, ported from PIL; on a GPU float
passes rounded like PIL's), so it runs on the GPU too; both agree with PIL to
1-2 grey levels (PIL's fixed-point weights), where plain bilinear differs by tens
(tests/test_encoders_preprocess.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "PREPROCESS_VERSION",
    "ImagePreprocess",
    "owner_preprocess",
    "resize_like_pil",
    "center_crop",
]

INTERPOLATIONS = ("bicubic", "bilinear")
#: feature files of networks record it: files made before the owners' preprocessing
#: (everything resized bilinear) do not count as cached
PREPROCESS_VERSION = "owners-pil-1"
#: PIL's resampling codes, as transformers' preprocessor_config.json writes ``resample``
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def resize_like_pil(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, 3, H, W) 0..255 -> (N, 3, h, w) as PIL's 8-bit ``Image.resize`` gives it.

    uint8 on the CPU: torch's own 8-bit antialiased kernels (ported from PIL;
    uint8 out). Anything else (a GPU): float passes, width first, then height,
    each antialiased and rounded to whole grey levels, as PIL keeps an 8-bit
    image between its passes (a bicubic overshoot is clipped before the second).
    """
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {mode!r}")
    h, w = int(size[0]), int(size[1])
    if x.dtype == torch.uint8:
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
            return F.interpolate(x, size=(h, w), mode=mode, antialias=True, align_corners=False)
        x = x.float()
    if x.shape[-1] != w:
        x = _resize_pass(x, (x.shape[-2], w), mode)
    if x.shape[-2] != h:
        x = _resize_pass(x, (h, w), mode)
    return x


def _resize_pass(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if x.device.type == "mps":  # no antialiased kernels on MPS: this one pass on the CPU
        return _resize_pass(x.cpu(), size, mode).to(x.device)
    y = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    return y.clamp_(0.0, 255.0).round_()


def shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)`` (and transformers' ``shortest_edge``) output shape."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's ``CenterCrop(size)`` of an image at least ``size`` on each side."""
    top = int(round((x.shape[-2] - size) / 2.0))
    left = int(round((x.shape[-1] - size) / 2.0))
    return x[..., top : top + size, left : left + size]


@dataclass(frozen=True)
class ImagePreprocess:
    """One owner's evaluation transform: shortest-side resize, centre crop, normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    source: str = "registry"  # where these settings were read from

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}"
            )

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 on any device -> normalised (N, 3, size, size) float32."""
        x = tiles.permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            x = resize_like_pil(x, shortest_side_size(h, w, self.size), self.interpolation)
            x = center_crop(x, self.size)
        x = x.float()
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "source": self.source,
        }


def _triple(value, what: str, source: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        from napari_hila.encoders.registry import EncoderError

        raise EncoderError(f"{source}: {what} must have 3 values (RGB), not {value!r}")
    return tuple(values)  # type: ignore[return-value]


def owner_preprocess(spec, image_size: int, weights: Path | None, config: dict | None = None):
    """The transform ``spec``'s owners use, with the overrides their files beside the weights give.

    ``config`` is the side-car config read with the weights (open_clip's
    ``open_clip_config.json`` may carry ``preprocess_cfg``); a transformers
    folder's ``preprocessor_config.json`` is read here.
    """
    from napari_hila.encoders.registry import EncoderError

    base = ImagePreprocess(
        int(image_size),
        tuple(spec.mean or (0.5, 0.5, 0.5)),
        tuple(spec.std or (0.5, 0.5, 0.5)),
        getattr(spec, "interpolation", "bicubic"),
        f"{spec.name}: its owners' evaluation transform",
    )
    folder = None if weights is None else (weights if weights.is_dir() else weights.parent)
    pre = (config or {}).get("preprocess_cfg")
    source, changes = None, {}
    if isinstance(pre, dict):
        source = "open_clip_config.json preprocess_cfg"
        if pre.get("mean") is not None:
            changes["mean"] = _triple(pre["mean"], "mean", source)
        if pre.get("std") is not None:
            changes["std"] = _triple(pre["std"], "std", source)
        if pre.get("interpolation") in INTERPOLATIONS:
            changes["interpolation"] = pre["interpolation"]
    elif folder is not None and (folder / "preprocessor_config.json").is_file():
        path = folder / "preprocessor_config.json"
        source = str(path)
        try:
            hf = json.loads(path.read_text())
        except ValueError as err:
            raise EncoderError(
                f"{path}: not valid JSON ({err}); give the file as shipped"
            ) from None
        if hf.get("image_mean") is not None:
            changes["mean"] = _triple(hf["image_mean"], "image_mean", source)
        if hf.get("image_std") is not None:
            changes["std"] = _triple(hf["image_std"], "image_std", source)
        if "resample" in hf:
            if hf["resample"] not in PIL_RESAMPLE:
                raise EncoderError(
                    f"{path}: resample {hf['resample']!r} is not supported (napari-hila resizes "
                    "bicubic = 3 or bilinear = 2, as CLIP's processors do)"
                )
            changes["interpolation"] = PIL_RESAMPLE[hf["resample"]]
    return replace(base, **changes, source=source) if source else base
