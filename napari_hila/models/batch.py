"""Padding slides of different sizes into one batch, with masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from napari_hila.features.store import SlideFeatures


@dataclass
class SlideBatch:
    """B slides padded to the largest; ``*_mask`` is True on real tokens.

    ``patch_to_region`` holds each patch's region index within its slide, -1 for
    padding or a patch outside every region. ``scales`` carries extra
    magnifications (CrossFusion) as name -> (features, mask, coords).
    """

    patch_features: torch.Tensor  # (B, M, Dp)
    patch_mask: torch.Tensor  # (B, M) bool
    patch_coords: torch.Tensor  # (B, M, 2) long
    region_features: torch.Tensor  # (B, R, Dr)
    region_mask: torch.Tensor  # (B, R) bool
    region_coords: torch.Tensor  # (B, R, 2) long
    patch_to_region: torch.Tensor  # (B, M) long
    scales: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.patch_features.shape[0])

    def to(self, device: torch.device | str) -> SlideBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device)
            elif f.name == "scales":
                moved[f.name] = {k: tuple(t.to(device) for t in v) for k, v in value.items()}
            else:
                moved[f.name] = {k: t.to(device) for k, t in value.items()}
        return SlideBatch(**moved)


def _pad(
    arrays: Sequence[np.ndarray], fill: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack arrays of shape (n_i, ...) into (B, max n, ...) plus a (B, max n) mask."""
    longest = max((len(a) for a in arrays), default=0)
    longest = max(longest, 1)  # keep a real axis even for all-empty input
    tail = next((a.shape[1:] for a in arrays if a.ndim > 1), ())
    out = torch.full((len(arrays), longest, *tail), fill, dtype=dtype)
    mask = torch.zeros((len(arrays), longest), dtype=torch.bool)
    for i, arr in enumerate(arrays):
        n = len(arr)
        if n:
            out[i, :n] = torch.as_tensor(np.asarray(arr), dtype=dtype)
            mask[i, :n] = True
    return out, mask


def collate(slides: Sequence[SlideFeatures]) -> SlideBatch:
    """Pad a list of slides into a :class:`SlideBatch` (CPU tensors)."""
    if not slides:
        raise ValueError("collate needs at least one slide")
    pf, pm = _pad([s.features for s in slides], 0.0, torch.float32)
    pc, _ = _pad([s.coords for s in slides], 0, torch.long)
    rf, rm = _pad([s.region_features for s in slides], 0.0, torch.float32)
    rc, _ = _pad([s.region_coords for s in slides], 0, torch.long)
    p2r, _ = _pad([s.patch_to_region for s in slides], -1, torch.long)
    scale_names = set.intersection(*(set(s.scales) for s in slides)) if slides[0].scales else set()
    scales = {}
    for name in sorted(scale_names):
        f, m = _pad([s.scales[name][0] for s in slides], 0.0, torch.float32)
        c, _ = _pad([s.scales[name][1] for s in slides], 0, torch.long)
        scales[name] = (f, m, c)
    extra_names = set.intersection(*(set(s.extras) for s in slides)) if slides[0].extras else set()
    extras = {}
    for name in sorted(extra_names):
        dtype = (
            torch.long if np.issubdtype(slides[0].extras[name].dtype, np.integer) else torch.float32
        )
        extras[name], _ = _pad(
            [s.extras[name] for s in slides], -1 if dtype == torch.long else 0.0, dtype
        )
    return SlideBatch(pf, pm, pc, rf, rm, rc, p2r, scales, extras)
