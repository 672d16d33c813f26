"""Quality-control thumbnails of an extraction: what was taken as tissue, which tiles were encoded.

One PNG per slide: the slide's thumbnail with the background the tissue
detector rejected dimmed, every encoded patch outlined (green) and every
region outlined (yellow), so a reviewer sees at a glance whether pen marks,
glass or folds were taken as tissue, or tissue was missed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.transform import resize

from napari_hila.features.store import load_features
from napari_hila.io_utils import atomic_path
from napari_hila.slides import detect_tissue, open_slide

__all__ = ["qc_image", "write_qc_thumbnail"]

PATCH_COLOUR = np.array([40, 200, 60], np.uint8)
REGION_COLOUR = np.array([250, 210, 0], np.uint8)
BACKGROUND_DIM = 0.35  # share of brightness left on what is not tissue


def _outline(image: np.ndarray, boxes: np.ndarray, colour: np.ndarray) -> None:
    """Draw 1 px rectangle outlines ``(x0, y0, x1, y1)`` (thumbnail px, exclusive ends) in place."""
    h, w = image.shape[:2]
    for x0, y0, x1, y1 in boxes:
        x0, y0 = max(int(x0), 0), max(int(y0), 0)
        x1, y1 = min(int(x1), w) - 1, min(int(y1), h) - 1
        if x1 < x0 or y1 < y0:
            continue
        image[y0, x0 : x1 + 1] = colour
        image[y1, x0 : x1 + 1] = colour
        image[y0 : y1 + 1, x0] = colour
        image[y0 : y1 + 1, x1] = colour


def qc_image(
    thumbnail: np.ndarray,
    downsample: float,
    tissue: np.ndarray,
    patch_coords: np.ndarray,
    patch_size: int,
    region_coords: np.ndarray,
    region_size: int,
) -> np.ndarray:
    """The QC picture: ``thumbnail`` (level-0 px per thumbnail px = ``downsample``) with the
    non-tissue dimmed and the patch and region grids (level-0 top-left corners) outlined."""
    image = np.array(thumbnail[..., :3], np.uint8, copy=True)
    h, w = image.shape[:2]
    mask = resize(tissue.astype(float), (h, w), order=0, anti_aliasing=False) > 0.5
    image[~mask] = (image[~mask] * BACKGROUND_DIM + 255 * (1 - BACKGROUND_DIM) * 0.5).astype(
        np.uint8
    )
    for coords, size, colour in (
        (patch_coords, patch_size, PATCH_COLOUR),
        (region_coords, region_size, REGION_COLOUR),
    ):
        if len(coords):
            corners = np.asarray(coords, float) / downsample
            boxes = np.concatenate([corners, corners + size / downsample], axis=1)
            _outline(image, np.round(boxes).astype(int), colour)
    return image


def write_qc_thumbnail(
    slide_path: str | os.PathLike,
    feature_file: str | os.PathLike,
    out_path: str | os.PathLike,
    max_side: int = 1600,
    mpp: float | None = None,
) -> Path:
    """Write the QC PNG of ``slide_path`` and the grid its ``feature_file`` holds."""
    feats = load_features(feature_file)
    with open_slide(slide_path, mpp=mpp) as slide:
        thumbnail = np.asarray(slide.get_thumbnail(max_side))
        downsample = slide.dimensions[0] / thumbnail.shape[1]
        tissue = detect_tissue(slide).mask
    image = qc_image(
        thumbnail,
        downsample,
        tissue,
        feats.coords,
        feats.patch_size,
        feats.region_coords,
        feats.region_size,
    )
    with atomic_path(out_path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(out_path)
