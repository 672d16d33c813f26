"""Slides of the TIFF family read with tifffile + zarr.

This backend also sees pyramids OpenSlide reads as one level: OME-TIFF whose
reduced levels are SubIFDs, and TIFF pyramids whose reduced levels are plain
top-level pages without the reduced-resolution flag. Tiled RGB levels are
read by decoding just the tiles a box touches (``tiles.py``); other layouts
(strips, planar, extra axes) go through tifffile's zarr store. Either way each
level is a dask array chunked at the file's tiles.
"""

from __future__ import annotations

import os
import re
import struct
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile

from napari_hila.errors import SlideError
from napari_hila.slides.arrays import LevelArray
from napari_hila.slides.base import Slide
from napari_hila.slides.tiles import FileBytes, TiledLevel, is_fast_path_page

if TYPE_CHECKING:
    import dask.array as da

_UM_PER_UNIT = {"m": 1e6, "mm": 1e3, "cm": 1e4, "µm": 1.0, "um": 1.0, "nm": 1e-3}


def open_tiff(path: str | os.PathLike) -> tifffile.TiffFile:
    """Open ``path`` with tifffile, or raise SlideError saying it is not a TIFF."""
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, struct.error) as err:
        raise SlideError(
            f"{path}: not a readable TIFF ({err}); the file may be truncated or corrupt"
        ) from err
    try:
        has_image = len(tif.pages) > 0 and len(tif.series) > 0
    except Exception:  # tifffile parses lazily; a broken directory fails here
        has_image = False
    if not has_image:
        tif.close()
        raise SlideError(f"{path}: the TIFF's image directory is missing or corrupt; copy it again")
    return tif


def check_tiff_pixels(path: str | os.PathLike, tif: tifffile.TiffFile) -> None:
    """Raise SlideError unless the main image is 8-bit RGB, naming what is unsupported."""
    if not tif.series:
        raise SlideError(f"{path}: the TIFF holds no image")
    series = tif.series[0]
    page = series.keyframe
    if series.dtype != np.uint8:
        bits = series.dtype.itemsize * 8
        raise SlideError(
            f"{path}: {bits}-bit ({series.dtype}) pixels are not supported; napari-hila reads "
            "8-bit RGB brightfield slides (convert to 8-bit RGB, e.g. with vips or bfconvert)"
        )
    samples = page.samplesperpixel
    grey = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
    if samples == 1 or page.photometric in grey:
        raise SlideError(
            f"{path}: single-channel (grayscale or fluorescence) images are not supported; "
            "napari-hila reads RGB brightfield (e.g. H&E) slides"
        )
    if samples != 3:
        kind = "RGBA (4 samples, with alpha)" if samples == 4 else f"{samples}-sample"
        raise SlideError(
            f"{path}: {kind} images are not supported; napari-hila reads 3-sample RGB slides "
            "(save the slide without an alpha channel)"
        )


def check_tiff_complete(path: str | os.PathLike, tif: tifffile.TiffFile) -> None:
    """Raise SlideError if the file was cut short: its tiles point past its end."""
    size = Path(path).stat().st_size
    subifd_pages = [p for level in tif.series[0].levels[1:] for p in level.pages if p is not None]
    for page in [*tif.pages, *subifd_pages]:
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
        if ends and max(ends) > size:
            raise SlideError(
                f"{path}: the file is truncated ({size} bytes, but its tiles reach byte "
                f"{max(ends)}); copy or download it again"
            )


def tiff_pyramid_series(tif: tifffile.TiffFile) -> list[tifffile.TiffPageSeries]:
    """The levels of the main image: SubIFD/SVS levels, or unflagged top-level pages."""
    main = tif.series[0]
    if len(main.levels) > 1:
        return list(main.levels)
    levels = [main]
    for other in tif.series[1:]:
        prev = levels[-1]
        if (
            other.axes != main.axes
            or other.dtype != main.dtype
            or other.name.lower() in ("thumbnail", "label", "macro")
        ):
            break
        ratio_y = prev.shape[0] / other.shape[0]
        ratio_x = prev.shape[1] / other.shape[1]
        if not (ratio_y > 1.5 and abs(ratio_x - ratio_y) / ratio_y < 0.05):
            break
        levels.append(other)
    return levels


def _level_dask(series: tifffile.TiffPageSeries) -> da.Array:
    """One level through tifffile's zarr store (a multi-level series opens as a group)."""
    import dask.array as da
    import zarr

    node = zarr.open(series.aszarr(level=0), mode="r")
    level = node if isinstance(node, zarr.Array) else node["0"]
    return _to_yxs(da.from_zarr(level, name=False), series.axes)


def _to_yxs(array: da.Array, axes: str) -> da.Array:
    """Reorder/squeeze a level to (y, x, samples)."""
    for i in reversed(range(len(axes))):
        if axes[i] not in "YXS" and array.shape[i] == 1:
            array = array[(slice(None),) * i + (0,)]
            axes = axes[:i] + axes[i + 1 :]
    if axes == "SYX":
        array = array.transpose(1, 2, 0)
    elif axes != "YXS":
        raise SlideError(f"image axes {axes!r} are not supported; expected an RGB 2D slide")
    return array


def _parse_svs_description(description: str) -> dict[str, str]:
    props = {}
    for item in description.split("|")[1:]:
        key, sep, value = item.partition("=")
        if sep:
            props[f"aperio.{key.strip()}"] = value.strip()
    return props


def _ome_physical_size(ome_xml: str) -> dict[str, str]:
    props: dict[str, str] = {}
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return props
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            props["ome.PhysicalSizeX"] = el.attrib["PhysicalSizeX"]
            props["ome.PhysicalSizeXUnit"] = unit
            if "PhysicalSizeY" in el.attrib:
                props["ome.PhysicalSizeY"] = el.attrib["PhysicalSizeY"]
            break
        if tag == "Objective" and "NominalMagnification" in el.attrib:
            props["ome.NominalMagnification"] = el.attrib["NominalMagnification"]
    return props


def _resolution_mpp(page: tifffile.TiffPage) -> float | None:
    unit = page.tags.get("ResolutionUnit")
    xres = page.tags.get("XResolution")
    if unit is None or xres is None:
        return None
    num, den = xres.value
    if not num or not den:
        return None
    um = {tifffile.RESUNIT.CENTIMETER: 1e4, tifffile.RESUNIT.INCH: 25400.0}.get(unit.value)
    return um * den / num if um else None


class TifffileSlide(Slide):
    """A TIFF-family slide opened with tifffile; levels are zarr arrays."""

    backend = "tifffile"

    def __init__(self, path: str | os.PathLike) -> None:
        self._tif = open_tiff(path)
        try:
            check_tiff_pixels(path, self._tif)
            check_tiff_complete(path, self._tif)
            self._levels = tiff_pyramid_series(self._tif)
            self._bytes = FileBytes(path)
            # tiled RGB levels are decoded tile by tile (fast path); anything else via zarr
            self._tiled = [
                TiledLevel(s.keyframe, self._bytes)
                if s.axes == "YXS" and is_fast_path_page(s.keyframe)
                else None
                for s in self._levels
            ]
            self._zarr_arrays = [
                None if tiled else _level_dask(s)
                for tiled, s in zip(self._tiled, self._levels, strict=True)
            ]
        except SlideError:
            self.close()
            raise
        except Exception as err:  # tifffile/zarr raise many kinds on corrupt files
            self.close()
            raise SlideError(
                f"{path}: cannot read the TIFF's image ({err}); the file may be corrupt"
            ) from err
        page = self._levels[0].keyframe
        props, mpp, power, vendor = self._metadata(page)
        shapes = [
            t.shape if t else z.shape for t, z in zip(self._tiled, self._zarr_arrays, strict=True)
        ]
        dims = [(shape[1], shape[0]) for shape in shapes]
        w0 = dims[0][0]
        h0 = dims[0][1]
        downsamples = [((w0 / w) + (h0 / h)) / 2 for w, h in dims]
        tile = (page.tilewidth or page.imagewidth, page.tilelength or page.rowsperstrip or 1)
        associated = {
            s.name.lower(): s
            for s in self._tif.series
            if s.name.lower() in ("thumbnail", "label", "macro")
        }
        self._associated = associated
        super().__init__(
            path,
            level_dimensions=dims,
            level_downsamples=downsamples,
            tile_size=tile,
            mpp=mpp,
            objective_power=power,
            vendor=vendor,
            properties=props,
            associated_image_names=sorted(associated),
        )

    def _metadata(
        self, page: tifffile.TiffPage
    ) -> tuple[dict[str, str], float | None, float | None, str]:
        tif = self._tif
        props: dict[str, str] = {}
        for tag in page.tags:
            if tag.name in (
                "ImageDescription",
                "Software",
                "Make",
                "Model",
                "DateTime",
                "ResolutionUnit",
            ):
                props[f"tiff.{tag.name}"] = str(
                    tag.value.name if hasattr(tag.value, "name") else tag.value
                )
        mpp = power = None
        vendor = "generic-tiff"
        if tif.is_svs:
            vendor = "aperio"
            props.update(_parse_svs_description(page.description))
            mpp = _float(props.get("aperio.MPP"))
            power = _float(props.get("aperio.AppMag"))
        elif tif.is_ome and tif.ome_metadata:
            vendor = "ome-tiff"
            ome = _ome_physical_size(tif.ome_metadata)
            props.update(ome)
            size = _float(ome.get("ome.PhysicalSizeX"))
            factor = _UM_PER_UNIT.get(ome.get("ome.PhysicalSizeXUnit", "µm"))
            mpp = size * factor if size and factor else None
            power = _float(ome.get("ome.NominalMagnification"))
        if mpp is None:
            mpp = _resolution_mpp(page)
        for i, (w, h) in enumerate((s.shape[1], s.shape[0]) for s in self._levels):
            props[f"tifffile.level[{i}].width"] = str(w)
            props[f"tifffile.level[{i}].height"] = str(h)
        props["tifffile.series"] = self._levels[0].kind
        return props, mpp, power, vendor

    def _read_level_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        try:
            tiled = self._tiled[level]
            if tiled is not None:
                return tiled.read_box(x, y, w, h)
            box = self._zarr_arrays[level][y : y + h, x : x + w]
            return np.asarray(box.compute(scheduler="sync"))
        except Exception as err:
            raise SlideError(
                f"{self.path}: reading level {level} at ({x}, {y}) failed ({err}); "
                "the file is probably truncated or corrupt"
            ) from err

    def _stream_level_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        tiled = self._tiled[level]
        if tiled is None:
            return self._read_level_box(level, x, y, w, h)
        try:
            return tiled.read_box(x, y, w, h, cached=False)
        except Exception as err:
            raise SlideError(
                f"{self.path}: reading level {level} at ({x}, {y}) failed ({err}); "
                "the file is probably truncated or corrupt"
            ) from err

    def _reduced_level(self, level: int, scale: int) -> LevelArray | None:
        tiled = self._tiled[level]
        if tiled is None or not tiled.supports_scale(scale):
            return None
        w, h = self.level_dimensions[level]
        return LevelArray(partial(self._read_reduced_box, level, scale), w // scale, h // scale)

    def _read_reduced_box(
        self, level: int, scale: int, x: int, y: int, w: int, h: int
    ) -> np.ndarray:
        try:
            return self._tiled[level].read_box(x, y, w, h, scale=scale)
        except Exception as err:
            raise SlideError(
                f"{self.path}: reading level {level} at 1/{scale} at ({x}, {y}) failed ({err}); "
                "the file is probably truncated or corrupt"
            ) from err

    def read_associated(self, name: str) -> np.ndarray:
        series = self._associated.get(name)
        if series is None:
            raise SlideError(
                f"{self.path}: no associated image {name!r}; "
                f"this slide has {', '.join(self.associated_image_names) or 'none'}"
            )
        image = np.asarray(series.asarray())
        return image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)

    def close(self) -> None:
        self._tif.close()
        if getattr(self, "_bytes", None) is not None:
            self._bytes.close()


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    match = re.match(r"\s*[-+]?\d*\.?\d+(e[-+]?\d+)?", value, re.IGNORECASE)
    return float(match.group(0)) if match else None
