"""Whole-slide images: one opener, two backends, lazy pyramids, tissue and grids.

>>> from napari_hila.slides import open_slide, detect_tissue, make_grids
>>> with open_slide("slide.svs") as slide:                     # doctest: +SKIP
...     grids = make_grids(slide, detect_tissue(slide))
...     tile = slide.read_region(tuple(grids.patch_coords[0]), 0, (grids.patch_size,) * 2)
"""

from napari_hila.slides.base import ASSUMED_MPP, Slide
from napari_hila.slides.grids import DEFAULT_MIN_TISSUE, TilingGrids, make_grids
from napari_hila.slides.opener import BACKENDS, MPP_RANGE, SLIDE_SUFFIXES, check_mpp, open_slide
from napari_hila.slides.tissue import TissueMask, detect_tissue

__all__ = [
    "ASSUMED_MPP",
    "BACKENDS",
    "DEFAULT_MIN_TISSUE",
    "MPP_RANGE",
    "SLIDE_SUFFIXES",
    "Slide",
    "TilingGrids",
    "TissueMask",
    "check_mpp",
    "detect_tissue",
    "make_grids",
    "open_slide",
]
