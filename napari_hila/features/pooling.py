"""Region features from patch features, for files that carry only patches.

CLAM and TRIDENT write one feature per patch; HiLa also needs one per region.
:func:`ensure_regions` lays the region grid over the patch coordinates (regions
start at the slide's top-left corner, as :func:`napari_hila.slides.make_grids`
does) and averages each region's patches.

The region side (level-0 px, :func:`pooled_region_size`) follows the grid of
METHODS: a region is ``region_px`` px at ``target_mpp`` um/px (4096 at 0.5), a
patch ``patch_px`` (256). With the file's level-0 patch side (``patch_size``,
or CLAM/TRIDENT ``coords`` attributes) and its ``mpp``, a region is the whole
number of patches nearest ``region_px * target_mpp / mpp``; without ``mpp`` the
patches are taken to be ``patch_px`` at ``target_mpp``, so a region is
``patch_size * region_px / patch_px`` (16 patches); with ``mpp`` only,
``region_px * target_mpp / mpp``; with neither, 16 patches of 256 px.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from napari_hila.features.store import SlideFeatures
from napari_hila.slides.grids import PATCH_PX, REGION_PX, TARGET_MPP

#: Regions are this many patches wide when a file does not say (4096 / 256).
DEFAULT_PATCHES_PER_REGION = REGION_PX // PATCH_PX


def pooled_region_size(
    attrs: dict,
    region_px: int = REGION_PX,
    patch_px: int = PATCH_PX,
    target_mpp: float = TARGET_MPP,
) -> int:
    """Region side in level-0 px for pooling a patch-only file (rule in the module doc)."""
    patch_size = int(attrs.get("patch_size") or 0)  # level-0 px, as the file records it
    mpp = float(attrs.get("mpp") or 0.0)  # um/px at level 0
    if patch_size > 0 and mpp > 0:
        per_region = max(1, round(region_px * target_mpp / mpp / patch_size))
        return int(per_region * patch_size)
    if patch_size > 0:
        return int(round(patch_size * max(1, round(region_px / patch_px))))
    if mpp > 0:
        return int(round(region_px * target_mpp / mpp))
    return PATCH_PX * DEFAULT_PATCHES_PER_REGION


def region_grid(coords: np.ndarray, region_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Region top-left corners holding the patches, and each patch's region index.

    Regions are numbered row-major, like the grids of ``napari_hila.slides``.
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if not len(coords):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    cells = coords // int(region_size)
    order_keys = cells[:, 1] * (int(cells[:, 0].max()) + 1) + cells[:, 0]
    keys, patch_to_region = np.unique(order_keys, return_inverse=True)
    first = np.zeros(len(keys), np.int64)
    first[patch_to_region[::-1]] = np.arange(len(coords))[::-1]  # a patch of each region
    return cells[first] * int(region_size), patch_to_region.reshape(-1).astype(np.int64)


def mean_per_region(
    features: np.ndarray, patch_to_region: np.ndarray, n_regions: int
) -> np.ndarray:
    """(R, D) mean of the features of each region's patches (zeros where none)."""
    features = np.asarray(features, np.float64)
    sums = np.zeros((n_regions, features.shape[1]), np.float64)
    valid = patch_to_region >= 0
    np.add.at(sums, patch_to_region[valid], features[valid])
    counts = np.bincount(patch_to_region[valid], minlength=n_regions).astype(np.float64)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


def has_regions(feats: SlideFeatures) -> bool:
    """True when the file carries region features its patches point into."""
    return bool(feats.num_regions and (feats.patch_to_region >= 0).any())


def ensure_regions(
    feats: SlideFeatures,
    region_size: int | None = None,
    *,
    region_px: int = REGION_PX,
    patch_px: int = PATCH_PX,
    target_mpp: float = TARGET_MPP,
) -> SlideFeatures:
    """``feats`` with region features; pooled from the patches when the file has none.

    ``region_size`` is in level-0 px; by default the file's own ``region_size``,
    else :func:`pooled_region_size` of the grid ``region_px``/``patch_px`` at
    ``target_mpp`` (a model's card grid at prediction, METHODS' in training).
    Files without coordinates (a bare ``.pt`` tensor) get one whole-slide region.
    """
    if has_regions(feats):
        return feats
    if region_size is None:
        region_size = int(
            feats.attrs.get("region_size")
            or pooled_region_size(feats.attrs, region_px, patch_px, target_mpp)
        )
    if feats.attrs.get("coords_missing"):
        region_coords = np.zeros((1 if feats.num_patches else 0, 2), np.int64)
        patch_to_region = np.zeros(feats.num_patches, np.int64)
    else:
        region_coords, patch_to_region = region_grid(feats.coords, region_size)
    attrs = dict(feats.attrs)
    # the grid the pooled regions stand for, recorded so a model card repeats it at prediction
    attrs.setdefault("patch_px", int(patch_px))
    attrs.setdefault("region_px", int(region_px))
    attrs.setdefault("target_mpp", float(target_mpp))
    attrs.update(
        region_encoder=f"mean({feats.encoder})",
        region_mode="mean",
        region_size=int(region_size),
        region_feature_dim=int(feats.features.shape[1]),
    )
    return replace(
        feats,
        region_features=mean_per_region(feats.features, patch_to_region, len(region_coords)),
        region_coords=region_coords,
        patch_to_region=patch_to_region,
        attrs=attrs,
    )
