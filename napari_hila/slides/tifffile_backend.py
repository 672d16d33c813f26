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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile

from napari_hila.errors import SlideError
from napari_hila.slides.arrays import LevelArray
from napari_hila.slides.base import Slide
from napari_hila.slides.pixels import (
    PixelLayout,
    compression_name,
    pixel_layout,
    tifffile_decode_problem,
)
from napari_hila.slides.tiff_checks import (
    Damage,
    data_damage,
    directory_damage,
    log_warnings,
    tifffile_log,
)
from napari_hila.slides.tiles import FileBytes, TiledLevel, is_fast_path_page

if TYPE_CHECKING:
    import dask.array as da

_UM_PER_UNIT = {"m": 1e6, "mm": 1e3, "cm": 1e4, "µm": 1.0, "um": 1.0, "nm": 1e-3}


@dataclass
class OpenedTiff:
    """A TiffFile with what opening it found: tifffile's log lines and damaged pages."""

    tif: tifffile.TiffFile
    log: list[str]
    damage: list[Damage]  # top-level pages whose tags or tiles run past the end of the file
    walked: bool = True  # False: the directory walk could not run (NDPI past 4 GiB)


def open_tiff(path: str | os.PathLike) -> OpenedTiff:
    """Open ``path`` with tifffile after checking it is whole.

    Raises SlideError saying "truncated" when the directory chain runs past
    the end of the file, "corrupt" when the bytes are there but unreadable.
    """
    damage = directory_damage(path)
    walked = damage is not None
    damage = damage or []
    cut = [d for d in damage if d.chain]
    if cut:
        raise _truncated(path, cut[0])
    with tifffile_log() as messages:
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError, struct.error) as err:
            raise SlideError(f"{path}: not a readable TIFF ({err}); the file is corrupt") from err
        try:
            has_image = len(tif.pages) > 0 and len(tif.series) > 0
        except Exception:  # tifffile parses lazily; a broken directory fails here
            has_image = False
    if not has_image:
        tif.close()
        raise SlideError(f"{path}: the TIFF's image directory is corrupt; copy it again")
    return OpenedTiff(tif, list(messages), damage, walked)


def _truncated(path: str | os.PathLike, damage: Damage) -> SlideError:
    size = Path(path).stat().st_size
    return SlideError(
        f"{path}: the file is truncated ({size} bytes, but {damage.what}); "
        "copy or download it again"
    )


@dataclass
class TiffSurvey:
    """What the opener learns from one parse of a TIFF, handed on to :class:`TifffileSlide`."""

    levels: list[tifffile.TiffPageSeries]
    associated: dict[str, tifffile.TiffPageSeries]
    #: How the samples become RGB, or the SlideError saying why they cannot.
    layout: PixelLayout | SlideError
    #: Why tifffile cannot decode the pixels (unsupported compression), or None.
    decode_problem: str | None
    #: Messages for the user: damaged associated images, tifffile's log, in our words.
    warnings: list[str] = field(default_factory=list)

    @property
    def fast(self) -> bool:
        """Every level is tiled 8-bit and decodable tile by tile (``tiles.py``)."""
        return self.decode_problem is None and all(
            s.axes in ("YX", "YXS") and is_fast_path_page(s.keyframe) for s in self.levels
        )


def survey_tiff(path: str | os.PathLike, opened: OpenedTiff) -> TiffSurvey:
    """Levels, associated images, pixel layout and completeness of an open TIFF.

    Raises SlideError ("truncated") when a level's data or tags run past the
    end of the file; a cut associated image (label, macro) is dropped with a warning.
    """
    tif, log = opened.tif, opened.log
    levels = tiff_pyramid_series(tif)
    associated = {
        s.name.lower(): s for s in tif.series if s.name.lower() in ("thumbnail", "label", "macro")
    }
    level_pages = [p for s in levels for p in s.pages if p is not None]
    level_indices = {p.index for p in level_pages}
    # the walk covers top-level pages; SubIFD levels (and all, if it could not run) here
    unwalked = [
        p
        for p in [*level_pages, *(s.keyframe for s in associated.values())]
        if not (opened.walked and isinstance(p.index, int))
    ]
    damage = opened.damage + data_damage(path, unwalked)
    warnings = []
    for item in damage:
        if not item.essential:
            warnings.append(
                f"{path}: {item.what}, past the end of the file ({Path(path).stat().st_size} "
                "bytes); that tag is ignored, the pixels do not need it"
            )
            continue
        if item.page is None or item.page in level_indices:
            raise _truncated(path, item)
        lost = [n for n, series in associated.items() if series.keyframe.index == item.page]
        for name in lost:
            del associated[name]
        what = f"its {lost[0]} image" if lost else f"image {item.page + 1} (not a level)"
        warnings.append(
            f"{path}: the file is truncated ({item.what}): {what} is lost, the slide's "
            "levels are whole; copy the file again to get it back"
        )
    try:
        layout: PixelLayout | SlideError = pixel_layout(path, levels[0])
    except SlideError as err:
        layout = err
    problems = {tifffile_decode_problem(s.keyframe) for s in levels} - {None}
    log = [m for m in log if "invalid value offset" not in m] if damage else list(log)
    return TiffSurvey(
        levels=levels,
        associated=associated,
        layout=layout,
        decode_problem=sorted(problems)[0] if problems else None,
        warnings=warnings + log_warnings(path, log),
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
    if axes == "YX":
        array = array[..., None]
    elif axes == "SYX":
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

    def __init__(
        self,
        path: str | os.PathLike,
        opened: OpenedTiff | None = None,
        survey: TiffSurvey | None = None,
    ) -> None:
        """Open ``path``; the opener passes the file and ``survey`` it already made."""
        if opened is None:
            opened, survey = open_tiff(path), None
        self._tif = opened.tif
        try:
            survey = survey or survey_tiff(path, opened)
            if isinstance(survey.layout, SlideError):
                raise survey.layout
            if survey.decode_problem:
                raise SlideError(
                    f"{path}: the file holds {survey.decode_problem}; open it with the "
                    "openslide backend, or convert it (e.g. vips tiffsave --compression jpeg)"
                )
            self._layout = survey.layout
            self._levels = survey.levels
            self._bytes = FileBytes(path)
            # tiled levels are decoded tile by tile (fast path); anything else via zarr
            self._tiled = [
                TiledLevel(s.keyframe, self._bytes, layout=self._layout)
                if s.axes in ("YX", "YXS") and is_fast_path_page(s.keyframe)
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
                f"{path}: cannot read the TIFF's image ({err}); the file is corrupt"
            ) from err
        page = self._levels[0].keyframe
        props, mpp, mpp_origin, power, vendor = self._metadata(page)
        shapes = [
            t.shape if t else z.shape for t, z in zip(self._tiled, self._zarr_arrays, strict=True)
        ]
        dims = [(shape[1], shape[0]) for shape in shapes]
        w0 = dims[0][0]
        h0 = dims[0][1]
        downsamples = [((w0 / w) + (h0 / h)) / 2 for w, h in dims]
        tile = (page.tilewidth or page.imagewidth, page.tilelength or page.rowsperstrip or 1)
        self._associated = survey.associated
        super().__init__(
            path,
            level_dimensions=dims,
            level_downsamples=downsamples,
            tile_size=tile,
            mpp=mpp,
            mpp_origin=mpp_origin,
            objective_power=power,
            vendor=vendor,
            properties=props,
            associated_image_names=sorted(self._associated),
        )
        self.open_warnings = list(survey.warnings)

    def _metadata(
        self, page: tifffile.TiffPage
    ) -> tuple[dict[str, str], float | None, str, float | None, str]:
        """Properties, mpp and where it came from, objective power, vendor.

        Vendor metadata (Aperio MPP, OME PhysicalSizeX) comes before the
        resolution tags, which image writers fill with 72 dpi defaults.
        """
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
        mpp_origin = ""
        vendor = "generic-tiff"
        if tif.is_svs:
            vendor = "aperio"
            props.update(_parse_svs_description(page.description))
            mpp, mpp_origin = _float(props.get("aperio.MPP")), "Aperio MPP"
            power = _float(props.get("aperio.AppMag"))
        elif tif.is_ome and tif.ome_metadata:
            vendor = "ome-tiff"
            ome = _ome_physical_size(tif.ome_metadata)
            props.update(ome)
            size = _float(ome.get("ome.PhysicalSizeX"))
            factor = _UM_PER_UNIT.get(ome.get("ome.PhysicalSizeXUnit", "µm"))
            mpp = size * factor if size and factor else None
            mpp_origin = "OME PhysicalSizeX"
            power = _float(ome.get("ome.NominalMagnification"))
        if mpp is None:
            mpp, mpp_origin = _resolution_mpp(page), "TIFF resolution tags"
        for i, (w, h) in enumerate((s.shape[1], s.shape[0]) for s in self._levels):
            props[f"tifffile.level[{i}].width"] = str(w)
            props[f"tifffile.level[{i}].height"] = str(h)
        props["tifffile.series"] = self._levels[0].kind
        return props, mpp, mpp_origin, power, vendor

    def _read_level_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        try:
            tiled = self._tiled[level]
            if tiled is not None:
                return tiled.read_box(x, y, w, h)
            box = self._zarr_arrays[level][y : y + h, x : x + w]
            return self._layout.to_rgb(np.asarray(box.compute(scheduler="sync")))
        except Exception as err:
            raise self._read_failed(level, x, y, err) from err

    def _stream_level_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        tiled = self._tiled[level]
        if tiled is None:
            return self._read_level_box(level, x, y, w, h)
        try:
            return tiled.read_box(x, y, w, h, cached=False)
        except Exception as err:
            raise self._read_failed(level, x, y, err) from err

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
            raise self._read_failed(level, x, y, err, f" at 1/{scale}") from err

    def _read_failed(
        self, level: int, x: int, y: int, err: Exception, scale: str = ""
    ) -> SlideError:
        """The error for a tile that does not decode, naming the compression.

        The file was checked whole at open, so a tile of a codec tifffile knows
        that fails is corrupt; old-style JPEG is a family of layouts tifffile
        reads only in part, so there the layout, not the bytes, is the cause.
        """
        page = self._levels[level].keyframe
        where = f"{self.path}: reading level {level}{scale} at ({x}, {y}) failed ({err})"
        if page.compression == tifffile.COMPRESSION.OJPEG:
            return SlideError(
                f"{where}: tifffile decodes only {compression_name(page)} tiles that hold whole "
                "JPEG streams, and OpenSlide reads none; convert the file (vips tiffsave "
                "--compression jpeg --tile --pyramid)"
            )
        return SlideError(
            f"{where}; its {compression_name(page)} tile data is corrupt: copy the file again"
        )

    def read_associated(self, name: str) -> np.ndarray:
        series = self._associated.get(name)
        if series is None:
            raise SlideError(
                f"{self.path}: no associated image {name!r}; "
                f"this slide has {', '.join(self.associated_image_names) or 'none'}"
            )
        with tifffile_log():  # a damaged label is this message, not a log line
            try:
                image = np.asarray(series.asarray())
            except Exception as err:
                raise SlideError(
                    f"{self.path}: the {name} image cannot be decoded ({err}); it is corrupt"
                ) from err
        try:
            return pixel_layout(self.path, series).to_rgb(image)
        except SlideError:  # an unusual label (e.g. 1-bit): its first three samples, or grey
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
