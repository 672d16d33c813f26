"""Patch and region grids over the tissue, in level-0 pixels.

Patches are ``patch_px`` wide at ``target_mpp`` (256 px at 0.5 um/px, i.e.
20x-equivalent) and regions ``region_px`` (4096 px): on a 0.25 um/px (40x)
slide that is 512 and 8192 level-0 px, which encoders later resize. Both grids
start at the slide's top-left corner and regions are whole multiples of
patches, so every patch lies in exactly one region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_hila.slides.base import Slide
from napari_hila.slides.tissue import TissueMask

#: A patch is kept when at least this share of it is tissue (CLAM and TRIDENT
#: use similar values; lower keeps more tissue borders, higher fewer).
DEFAULT_MIN_TISSUE = 0.25
#: The tiling grid of METHODS: patches of 256 px and regions of 4096 px at 0.5 um/px (20x).
#: The one definition; features, models, cards and the CLI import these.
PATCH_PX, REGION_PX, TARGET_MPP = 256, 4096, 0.5
#: Scanner mpp values sit near nominal magnifications (0.2525 or 0.2431 for
#: 40x, 0.499 or 0.504 for 20x); a scale within this relative distance of a
#: power of two is snapped to it, so a 40x slide gets exactly 512 px patches.
SNAP_TOLERANCE = 0.05


@dataclass(frozen=True)
class TilingGrids:
    """Kept patches, the regions that contain them, and the map between the two."""

    patch_coords: np.ndarray  # (M, 2) int64 level-0 (x, y) of top-left corners
    patch_size: int  # level-0 px side
    region_coords: np.ndarray  # (R, 2) int64
    region_size: int
    patch_to_region: np.ndarray  # (M,) int64 index into region_coords
    patch_tissue: np.ndarray  # (M,) float32 tissue fraction of each kept patch
    patch_px: int
    region_px: int
    target_mpp: float
    mpp: float
    min_tissue: float

    @property
    def num_patches(self) -> int:
        return int(len(self.patch_coords))

    @property
    def num_regions(self) -> int:
        return int(len(self.region_coords))

    def settings(self) -> dict:
        """The grid a model is trained with (stored in its card)."""
        return {
            "patch_px": self.patch_px,
            "region_px": self.region_px,
            "target_mpp": self.target_mpp,
        }


def level0_scale(mpp: float, target_mpp: float) -> float:
    """Level-0 px per target px, snapped to a power of two when the scan is nominal."""
    scale = target_mpp / mpp
    nearest = 2.0 ** round(np.log2(scale))
    return nearest if abs(scale - nearest) / nearest <= SNAP_TOLERANCE else scale


def patch_tissue_fractions(
    tissue: TissueMask, patch_size: int, columns: int, rows: int
) -> np.ndarray:
    """(rows, columns) tissue fraction of every patch-grid cell, from the mask."""
    mask = tissue.mask
    h, w = mask.shape
    # pixel counts are integers: int32 holds any view's count at 4 bytes a pixel
    # (a float64 copy and two float64 cumsums took 32), with the same fractions
    integral = np.zeros((h + 1, w + 1), np.int32)
    np.cumsum(mask, axis=0, dtype=np.int32, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
    step = patch_size / tissue.downsample
    edges_x = np.clip(np.round(np.arange(columns + 1) * step).astype(int), 0, w)
    edges_y = np.clip(np.round(np.arange(rows + 1) * step).astype(int), 0, h)
    # a patch smaller than one mask pixel still covers the pixel it falls in
    x1 = np.maximum(edges_x[1:], np.minimum(edges_x[:-1] + 1, w))
    y1 = np.maximum(edges_y[1:], np.minimum(edges_y[:-1] + 1, h))
    x0, y0 = edges_x[:-1], edges_y[:-1]
    total = integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0] + integral[y0][:, x0]
    area = np.outer(y1 - y0, x1 - x0)
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)


def make_grids(
    slide: Slide,
    tissue: TissueMask,
    patch_px: int = PATCH_PX,
    region_px: int = REGION_PX,
    target_mpp: float = TARGET_MPP,
    min_tissue: float = DEFAULT_MIN_TISSUE,
) -> TilingGrids:
    """Patches with enough tissue and the region cells holding at least one of them.

    Patches lie wholly inside the slide; a region may reach past its edge, and
    a slide smaller than one region gets one region at (0, 0).
    """
    if region_px % patch_px:
        raise ValueError(f"region_px ({region_px}) must be a multiple of patch_px ({patch_px})")
    scale = level0_scale(slide.mpp, target_mpp)
    patch_size = max(1, round(patch_px * scale))
    region_size = patch_size * (region_px // patch_px)
    width, height = slide.dimensions
    columns, rows = width // patch_size, height // patch_size
    fractions = patch_tissue_fractions(tissue, patch_size, columns, rows)
    rr, cc = np.nonzero(fractions >= min_tissue)  # row-major order
    patch_coords = np.stack([cc, rr], axis=1).astype(np.int64) * patch_size
    per_region = region_px // patch_px
    cell = np.stack([cc // per_region, rr // per_region], axis=1).astype(np.int64)
    if len(cell):
        stride = columns // per_region + 1  # region columns, for a row-major sort key
        keys, patch_to_region = np.unique(cell[:, 1] * stride + cell[:, 0], return_inverse=True)
        region_cells = np.stack([keys % stride, keys // stride], axis=1)
    else:
        patch_to_region = np.zeros(0, np.int64)
        region_cells = np.zeros((0, 2), np.int64)
    return TilingGrids(
        patch_coords=patch_coords,
        patch_size=int(patch_size),
        region_coords=(region_cells * region_size).astype(np.int64),
        region_size=int(region_size),
        patch_to_region=np.asarray(patch_to_region, np.int64).reshape(-1),
        patch_tissue=fractions[rr, cc].astype(np.float32),
        patch_px=int(patch_px),
        region_px=int(region_px),
        target_mpp=float(target_mpp),
        mpp=float(slide.mpp),
        min_tissue=float(min_tissue),
    )
