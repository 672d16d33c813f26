"""Tissue detection on a low-resolution view of the slide.

Stained tissue is coloured and glass is grey-white, so the saturation of an
~8 um/px thumbnail separates them: Otsu's threshold on saturation, kept within
fixed bounds (so a blank slide stays blank), dark pixels (pen, folds, debris edges)
excluded, loose strands joined, then specks removed and small holes filled by physical area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_hila.slides.base import Slide

#: um per pixel of the image tissue detection runs on.
TISSUE_MPP = 8.0
#: Otsu's saturation threshold is kept within these bounds: clean glass stays
#: below 0.07, and on slides that are mostly tissue Otsu would otherwise split
#: pale pink stroma from purple nuclei instead of tissue from glass.
MIN_SATURATION = 0.07
MAX_SATURATION = 0.15
#: Objects smaller than this (um^2) are specks, holes smaller than this are filled.
MIN_TISSUE_AREA_UM2 = 5_000.0
MAX_HOLE_AREA_UM2 = 20_000.0


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask; pixel (r, c) covers level-0 px (c, r) * downsample."""

    mask: np.ndarray  # (h, w) bool
    downsample: float  # level-0 px per mask px

    @property
    def tissue_fraction(self) -> float:
        """Share of the slide area that is tissue (0-1)."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in 0-1 of an (h, w, 3) uint8 image (float32, one plane).

    Works on the uint8 channel max and min, so no float copy of the RGB image is made.
    """
    high = rgb.max(axis=2)
    spread = high - rgb.min(axis=2)  # uint8: max >= min, no wrap-around
    np.maximum(high, 1, out=high)
    return np.divide(spread, high, dtype=np.float32)


def tissue_from_rgb(rgb: np.ndarray, um_per_px: float) -> np.ndarray:
    """Boolean tissue mask of an RGB overview whose pixels are ``um_per_px`` wide."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import closing, disk

    sat = ndimage.median_filter(saturation(rgb), size=3)
    if float(sat.max() - sat.min()) < 1e-3:
        threshold = MIN_SATURATION
    else:
        threshold = min(max(float(threshold_otsu(sat)), MIN_SATURATION), MAX_SATURATION)
    # mean brightness > 30 without a float copy: the channel sum is exact in uint16
    mask = (sat > threshold) & (rgb.sum(axis=2, dtype=np.uint16) > 90)
    del sat  # 4 bytes a pixel: not held through the morphology below
    # join strands of loose tissue (fat, stroma) before judging object size
    mask = closing(mask, disk(max(1, round(16 / um_per_px))))
    px_area = um_per_px**2
    mask = remove_small_objects(mask, max(1, int(MIN_TISSUE_AREA_UM2 / px_area)))
    return ~remove_small_objects(~mask, max(1, int(MAX_HOLE_AREA_UM2 / px_area)))


def remove_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` without its 4-connected objects of at most ``max_size`` px.

    As scikit-image's (``max_size``, connectivity 1; the complement fills holes),
    with int32 labels: half the memory on a large view.
    """
    from scipy import ndimage

    labels, count = ndimage.label(mask, output=np.int32)
    sizes = np.zeros(count + 1, np.int64)
    for row in range(0, labels.shape[0], 256):  # bincount copies to int64: a band at a time
        sizes += np.bincount(labels[row : row + 256].ravel(), minlength=count + 1)
    small = sizes <= max_size
    small[0] = False  # the background stays as it is
    return mask & ~small[labels]


def detect_tissue(slide: Slide, target_mpp: float = TISSUE_MPP) -> TissueMask:
    """Find the tissue of ``slide`` on a ``target_mpp`` um/px view (default 8).

    Reads a coarse pyramid level block by block into the view, so memory is
    the view plus a few blocks for any slide size; with an assumed mpp the
    physical areas are approximate.
    """
    downsample = max(1.0, target_mpp / slide.mpp)
    w0, h0 = slide.dimensions
    # at least 16 px a side, as a tiny slide's view would otherwise be empty
    downsample = max(1.0, min(downsample, max(w0, h0) / 16))
    thumb, actual_downsample = slide.read_reduced(downsample)
    mask = tissue_from_rgb(thumb, actual_downsample * slide.mpp)
    return TissueMask(mask=mask, downsample=actual_downsample)
