"""Slides, tissue masks and grids as napari layer-data tuples (no Qt, no napari import).

The reader, the sample-data contribution and ``napari-hila view`` all build
their layers here, so a slide looks and measures the same wherever it opens.
Layer coordinates are micrometres: scale = (mpp, mpp), units um.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_hila.errors import SlideError
from napari_hila.slides.base import Slide, assumed_mpp_message
from napari_hila.slides.grids import TilingGrids
from napari_hila.slides.tissue import TissueMask

LayerDataTuple = tuple[Any, dict[str, Any], str]


def mpp_warning(slide: Slide) -> str | None:
    """The message napari shows when the slide does not say its pixel size."""
    return assumed_mpp_message(
        slide,
        "set the scanner's value in the HiLa survival dock's um/px field "
        "(or --mpp on the command line)",
    )


def slide_metadata(slide: Slide) -> dict[str, Any]:
    """Everything the file says, plus how napari-hila read it, for ``layer.metadata``."""
    return {
        "path": str(slide.path),
        "backend": slide.backend,
        "vendor": slide.vendor,
        "mpp": slide.mpp,
        "mpp_is_assumed": slide.mpp_is_assumed,
        "mpp_source": slide.mpp_source,
        "mpp_note": slide.mpp_note,
        "objective_power": slide.objective_power,
        "fingerprint": slide.fingerprint(),
        "tile_size": list(slide.tile_size),
        "levels": slide.describe_levels(),
        "pyramid_downsamples": slide.pyramid_downsamples(),
        "associated_images": list(slide.associated_image_names),
        "properties": dict(slide.properties),
        "warnings": list(slide.open_warnings),
    }


class ForgivingLevel:
    """A level view that shows unreadable tiles as white and says so once.

    napari slices layers while drawing; an exception there would surface as a
    traceback. A corrupt tile instead becomes one notification via ``notify``.
    """

    def __init__(self, level: Any, notify: Callable[[str], None], reported: list[bool]) -> None:
        self._level = level
        self._notify = notify
        self._reported = reported  # shared by all levels of one slide
        self.shape, self.dtype, self.ndim = level.shape, level.dtype, level.ndim

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self._level[key]
        except SlideError as err:
            if not self._reported:
                self._reported.append(True)
                self._notify(f"{err}; unreadable tiles are shown white")
            return np.array(np.broadcast_to(np.uint8(255), self.shape)[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype)


def slide_layer_data(
    slide: Slide, name: str | None = None, notify: Callable[[str], None] | None = None
) -> LayerDataTuple:
    """A multiscale RGB image layer of ``slide`` in micrometres.

    ``notify`` receives one message if tiles turn out unreadable while napari
    draws (default: a Python warning, which napari shows as a notification).
    """
    kwargs = {
        "name": name or slide.path.name,
        "multiscale": True,
        "rgb": True,
        "scale": (slide.mpp, slide.mpp),
        "units": ("um", "um"),
        # fixed limits: napari would otherwise compute them from the pixels
        "contrast_limits": (0, 255),
        "metadata": slide_metadata(slide),
    }
    # plain array views, not dask: napari slices them straight into a tile decode
    notify = notify or (lambda message: warnings.warn(message, RuntimeWarning, stacklevel=2))
    reported: list[bool] = []
    levels = [ForgivingLevel(level, notify, reported) for level in slide.level_arrays()]
    return (levels, kwargs, "image")


def tissue_layer_data(tissue: TissueMask, mpp: float, name: str = "tissue") -> LayerDataTuple:
    """The tissue mask as a labels layer (1 = tissue) over the slide."""
    scale = tissue.downsample * mpp
    kwargs = {
        "name": name,
        "scale": (scale, scale),
        # mask pixel centres sit half a mask pixel in from the level-0 corner
        "translate": ((scale - mpp) / 2, (scale - mpp) / 2),
        "units": ("um", "um"),
        "opacity": 0.35,
        "metadata": {"tissue_fraction": tissue.tissue_fraction, "downsample": tissue.downsample},
    }
    return (tissue.mask.astype(np.uint8), kwargs, "labels")


def grid_rectangles(coords: np.ndarray, size: int) -> np.ndarray:
    """(N, 4, 2) rectangle corners (row, col) in level-0 px for a shapes layer."""
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    x, y = coords[:, 0], coords[:, 1]
    corners = [(y, x), (y, x + size), (y + size, x + size), (y + size, x)]
    return np.stack([np.stack(c, axis=1) for c in corners], axis=1) - 0.5


def grid_layer_data(grids: TilingGrids, which: str = "region") -> LayerDataTuple:
    """Patch or region outlines as a shapes layer over the slide."""
    if which == "region":
        coords, size, colour = grids.region_coords, grids.region_size, "yellow"
    elif which == "patch":
        coords, size, colour = grids.patch_coords, grids.patch_size, "cyan"
    else:
        raise ValueError(f"which must be 'patch' or 'region', got {which!r}")
    kwargs = {
        "name": f"{which}s ({len(coords)})",
        "shape_type": "rectangle",
        "edge_color": colour,
        "face_color": "transparent",
        "edge_width": max(1.0, size / 64),
        "scale": (grids.mpp, grids.mpp),
        "units": ("um", "um"),
        "metadata": {"tile_size": size, **grids.settings()},
    }
    return (grid_rectangles(coords, size), kwargs, "shapes")
