"""Slides read through OpenSlide (openslide-python with openslide-bin).

OpenSlide reads every vendor format it knows (.svs .ndpi .mrxs .scn .bif .vms,
tiled TIFF) and keeps its own tile cache, which makes it the fastest choice
wherever it sees the file's whole pyramid.
"""

from __future__ import annotations

import os

import numpy as np
import openslide

from napari_hila.errors import SlideError
from napari_hila.slides.base import Slide
from napari_hila.slides.pixels import rgba_over_white

#: Where OpenSlide's ``openslide.mpp-x`` comes from, by vendor (for messages).
_MPP_ORIGIN = {
    "aperio": "Aperio MPP",
    "dicom": "DICOM PixelSpacing",
    "generic-tiff": "TIFF resolution tags",
}


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _hint(err: Exception) -> str:
    """What to do about an OpenSlide error: convert what it does not support, else copy again."""
    if "nsupported" in str(err):
        return "convert it to a tiled JPEG TIFF (vips tiffsave --compression jpeg --tile --pyramid)"
    return "the file may be corrupt: copy it again"


class OpenSlideSlide(Slide):
    """A slide opened with OpenSlide."""

    backend = "openslide"

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as err:
            raise SlideError(
                f"{path}: OpenSlide cannot read this file ({err}); {_hint(err)}"
            ) from err
        props = dict(self._osr.properties)
        vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "unknown"
        level0 = "openslide.level[0]"
        tile_w = int(props.get(f"{level0}.tile-width", 0)) or 256
        tile_h = int(props.get(f"{level0}.tile-height", 0)) or 256
        super().__init__(
            path,
            level_dimensions=list(self._osr.level_dimensions),
            level_downsamples=list(self._osr.level_downsamples),
            tile_size=(tile_w, tile_h),
            mpp=_float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X)),
            mpp_origin=_MPP_ORIGIN.get(vendor, f"{vendor} metadata"),
            objective_power=_float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
            vendor=vendor,
            properties=props,
            associated_image_names=sorted(self._osr.associated_images.keys()),
        )

    def _read_level_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        # level-0 origin of the level pixel (x, y); rounding keeps it on that
        # pixel for pyramids whose downsample is not an exact integer
        origin = (int(round(x * ds)), int(round(y * ds)))
        try:
            image = self._osr.read_region(origin, level, (w, h))
        except openslide.OpenSlideError as err:
            raise SlideError(
                f"{self.path}: reading level {level} at {origin} failed ({err}); {_hint(err)}"
            ) from err
        return rgba_over_white(np.asarray(image))

    def read_associated(self, name: str) -> np.ndarray:
        if name not in self.associated_image_names:
            raise SlideError(
                f"{self.path}: no associated image {name!r}; "
                f"this slide has {', '.join(self.associated_image_names) or 'none'}"
            )
        return rgba_over_white(np.asarray(self._osr.associated_images[name]))

    def close(self) -> None:
        self._osr.close()
