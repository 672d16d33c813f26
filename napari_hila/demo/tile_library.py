"""A library of real H&E tiles, measured and grouped by morphology (demo cohort, synthetic).

Tiles are read from the bundled sample slide with the same tile reader and
encoder that feature extraction uses, so a virtual patient's features are
exactly what extraction would compute for those pixels. Each tissue tile is
put in one morphology group from two descriptor measurements a pathologist
can read: the background (glass, fat) fraction and the nuclear area fraction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["TileLibrary", "build_tile_library", "CATEGORIES"]

#: Morphology groups, in the order of ``TileLibrary.category`` codes.
CATEGORIES = ("dense nuclei", "mixed", "stroma", "sparse edge")
DENSE, MIXED, STROMA, SPARSE = range(4)

_BACKGROUND = "background fraction (glass, fat)"
_NUCLEAR = "nuclear area fraction (of tissue)"
MAX_BACKGROUND = 0.5  # tiles emptier than this are not tissue (tissue detection drops them)
EDGE_BACKGROUND = 0.2  # tissue tiles with more background than this are "sparse edge"


@dataclass
class TileLibrary:
    """Tissue tiles of one slide with their features and morphology group."""

    images: np.ndarray  # (N, px, px, 3) uint8, as the encoder saw them
    features: np.ndarray  # (N, D) float32
    category: np.ndarray  # (N,) int8, index into CATEGORIES
    nuclear_fraction: np.ndarray  # (N,)
    background_fraction: np.ndarray  # (N,)
    source_coords: np.ndarray  # (N, 2) level-0 (x, y) in the source slide
    encoder: str
    encoder_version: str
    source: str

    def indices(self, category: int) -> np.ndarray:
        return np.flatnonzero(self.category == category)

    def counts(self) -> dict[str, int]:
        return {name: int((self.category == i).sum()) for i, name in enumerate(CATEGORIES)}


def _column(feature_names, name: str) -> int:
    names = list(feature_names)
    if name not in names:
        raise ValueError(f"the encoder has no feature {name!r}; the demo needs the hila-descriptor")
    return names.index(name)


def categorise(background: np.ndarray, nuclear: np.ndarray) -> np.ndarray:
    """Morphology group per tile (-1: not tissue): nuclear-fraction terciles of the solid tissue."""
    category = np.full(len(background), -1, np.int8)
    tissue = background < MAX_BACKGROUND
    solid = tissue & (background < EDGE_BACKGROUND)
    category[tissue & ~solid] = SPARSE
    if solid.any():
        low, high = np.quantile(nuclear[solid], [1 / 3, 2 / 3])
        category[solid & (nuclear >= high)] = DENSE
        category[solid & (nuclear < high) & (nuclear > low)] = MIXED
        category[solid & (nuclear <= low)] = STROMA
    return category


def build_tile_library(
    slide_path: str | os.PathLike | None = None,
    stride_px: int = 128,
    patch_px: int = 256,
    target_mpp: float = 0.5,
    encoder_name: str = "hila-descriptor",
) -> TileLibrary:
    """Read overlapping tiles (every ``stride_px`` level-0 px) and measure them.

    Overlapping tiles give more distinct views of the little tissue a small
    sample has; the groups come from :func:`categorise`.
    """
    from napari_hila.encoders.registry import get_vision_encoder
    from napari_hila.features.tile_reader import read_tile
    from napari_hila.resources import sample_slide_path
    from napari_hila.slides import open_slide

    path = slide_path or sample_slide_path()
    encoder = get_vision_encoder(encoder_name, device="cpu")
    out_px = int(getattr(encoder, "input_size", None) or patch_px)
    with open_slide(path) as slide:
        mpp = slide.mpp or target_mpp
        size = int(round(patch_px * target_mpp / mpp))
        width, height = slide.level_dimensions[0]
        xs = np.arange(0, width - size + 1, stride_px)
        ys = np.arange(0, height - size + 1, stride_px)
        coords = np.array([(x, y) for y in ys for x in xs], np.int64)
        images = np.stack([read_tile(slide, x, y, size, out_px, 0) for x, y in coords])
    features = encoder.encode(images)
    names = encoder.feature_names
    background = features[:, _column(names, _BACKGROUND)]
    nuclear = features[:, _column(names, _NUCLEAR)]
    category = categorise(background, nuclear)
    keep = category >= 0
    return TileLibrary(
        images=images[keep],
        features=features[keep].astype(np.float32),
        category=category[keep],
        nuclear_fraction=nuclear[keep],
        background_fraction=background[keep],
        source_coords=coords[keep],
        encoder=encoder.name,
        encoder_version=str(encoder.version),
        source=str(path),
    )
