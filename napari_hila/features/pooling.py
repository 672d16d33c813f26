"""Region features from patch features, for files that carry only patches.

CLAM and TRIDENT write one feature per patch; HiLa also needs one per region.
:func:`ensure_regions` lays the region grid over the patch coordinates (regions
start at the slide's top-left corner, as :func:`napari_hila.slides.make_grids`
does) and averages each region's patches.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from napari_hila.features.store import SlideFeatures

#: Regions are this many patches wide when a file does not say (4096 / 256).
DEFAULT_PATCHES_PER_REGION = 16


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


def ensure_regions(feats: SlideFeatures, region_size: int | None = None) -> SlideFeatures:
    """``feats`` with region features; pooled from the patches when the file has none.

    ``region_size`` is in level-0 px; by default the file's own, else 16 patches.
    Files without coordinates (a bare ``.pt`` tensor) get one whole-slide region.
    """
    if feats.num_regions and (feats.patch_to_region >= 0).any():
        return feats
    if region_size is None:
        region_size = int(
            feats.attrs.get("region_size") or feats.patch_size * DEFAULT_PATCHES_PER_REGION
        )
    if feats.attrs.get("coords_missing"):
        region_coords = np.zeros((1 if feats.num_patches else 0, 2), np.int64)
        patch_to_region = np.zeros(feats.num_patches, np.int64)
    else:
        region_coords, patch_to_region = region_grid(feats.coords, region_size)
    attrs = dict(feats.attrs)
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
