"""Slides of the TIFF family read with tifffile + zarr.

This backend also sees pyramids OpenSlide reads as one level: OME-TIFF whose
reduced levels are SubIFDs, and TIFF pyramids whose reduced levels are plain
top-level pages without the reduced-resolution flag. Tiled RGB levels are
read by decoding just the tiles a box touches (``tiff_tile_reads.py``); other layouts
(strips, planar, extra axes) go through tifffile's zarr store. Either way each
level is a dask array chunked at the file's tiles.
"""

from __future__ import annotations

import io
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
    RGB,
    PixelLayout,
    compression_name,
    pixel_layout,
    tifffile_decode_problem,
)
from napari_hila.slides.tiff_checks import (
    Damage,
    DirectoryWalk,
    FileUpTo,
    data_damage,
    log_warnings,
    tifffile_log,
    walk_directories,
)
from napari_hila.slides.tiff_tile_reads import FileBytes, TiledLevel, is_fast_path_page

if TYPE_CHECKING:
    import dask.array as da

_UM_PER_UNIT = {"m": 1e6, "mm": 1e3, "cm": 1e4, "µm": 1.0, "um": 1.0, "nm": 1e-3}


class OpenedTiff:
    """A TIFF as the opener found it: its directory walk, tifffile's log lines, and a TiffFile.

    The TiffFile is opened on first use: a plain pyramid is read from the walk
    alone (``walked_tiff.py``) and needs tifffile only for associated images.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        walk: DirectoryWalk | None,
        tif: tifffile.TiffFile | None = None,
        log: list[str] | None = None,
    ) -> None:
        self.path = path
        self.walk = walk
        self.log = log if log is not None else []
        self._tif = tif
        self._source: io.BufferedReader | None = None

    @property
    def damage(self) -> list[Damage]:
        """Top-level pages whose tags or tiles run past the end of the file, and chain cuts."""
        return self.walk.damage if self.walk is not None else []

    @property
    def walked(self) -> bool:
        """False: the directory walk could not run (NDPI past 4 GiB)."""
        return self.walk is not None

    @property
    def tif(self) -> tifffile.TiffFile:
        if self._tif is None:
            cut_at = self.walk.cut_at if self.walk is not None else None
            if cut_at is not None:  # tifffile sees the file end where the cut directory starts
                self._source = io.BufferedReader(FileUpTo(self.path, cut_at))
            try:
                self._tif = _tifffile(self.path, self.log, self._source)
            except SlideError:
                self.close()
                raise
        return self._tif

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        if self._source is not None:
            self._source.close()


def open_tiff(path: str | os.PathLike, walk: DirectoryWalk | None = None) -> OpenedTiff:
    """Open ``path`` with tifffile after checking it is whole (``walk``: the check already made).

    Raises SlideError saying "truncated" when the directory chain is cut
    before its first directory, "corrupt" when the bytes are there but
    unreadable. A chain cut later is judged by :func:`survey_tiff`, which
    knows which pages are levels.
    """
    walk = walk_directories(path) if walk is None else walk
    opened = OpenedTiff(path, walk)
    cut = [d for d in opened.damage if d.chain]
    if cut and cut[0].page == 0:
        raise _truncated(path, cut[0])
    try:
        opened.tif  # noqa: B018 (parse now: a file tifffile cannot read fails here)
    except SlideError:
        if cut:  # tifffile stumbles on the cut directory: the cut is the cause
            raise _truncated(path, cut[0]) from None
        raise
    return opened


def _tifffile(
    path: str | os.PathLike, log: list[str], source: io.BufferedReader | None = None
) -> tifffile.TiffFile:
    """A TiffFile of ``path`` (read from ``source`` if given), its series parsed.

    tifffile's log lines are appended to ``log``.
    """
    with tifffile_log() as messages:
        try:
            tif = tifffile.TiffFile(path if source is None else source)
        except (tifffile.TiffFileError, ValueError, OSError, struct.error) as err:
            raise SlideError(f"{path}: not a readable TIFF ({err}); the file is corrupt") from err
        try:
            has_image = len(tif.pages) > 0 and len(tif.series) > 0
        except Exception:  # tifffile parses lazily; a broken directory fails here
            has_image = False
    log.extend(messages)
    if not has_image:
        tif.close()
        raise SlideError(f"{path}: the TIFF's image directory is corrupt; copy it again")
    return tif


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
    #: The file is cut inside its pyramid: some reduced levels were left out (or may be).
    levels_lost: bool = False

    @property
    def fast(self) -> bool:
        """Every level is tiled 8-bit and decodable tile by tile (``tiff_tile_reads.py``)."""
        return self.decode_problem is None and all(
            s.axes in ("YX", "YXS") and is_fast_path_page(s.keyframe) for s in self.levels
        )


def walked_survey(
    path: str | os.PathLike, walk: DirectoryWalk | None, osr_format: str | None
) -> tuple[OpenedTiff, TiffSurvey] | None:
    """A plain pyramid surveyed from its directory walk alone (``walked_tiff.py``), or None.

    ``osr_format`` is OpenSlide's name for the file: "aperio" is tried as an
    SVS, "generic-tiff" as a tiled TIFF whose pages are its levels. tifffile
    is not opened: the file and the survey it would have given come back ready
    for :class:`TifffileSlide`; associated images are found by tifffile when first read.
    """
    from napari_hila.slides.walked_tiff import aperio_layout, generic_layout, ome_layout

    layouts = {"aperio": [aperio_layout], "generic-tiff": [generic_layout, ome_layout]}
    layout = None
    for make in layouts.get(osr_format, []) if walk is not None else []:
        layout = layout or make(path, walk)
    if layout is None:
        return None
    survey = TiffSurvey(
        levels=layout.levels,  # type: ignore[arg-type]  (the attributes a series has)
        associated=dict.fromkeys(layout.associated),
        layout=RGB,
        decode_problem=None,
    )
    return OpenedTiff(path, walk), survey


def survey_tiff(path: str | os.PathLike, opened: OpenedTiff) -> TiffSurvey:
    """Levels, associated images, pixel layout and completeness of an open TIFF.

    Raises SlideError ("truncated") when level 0's data or tags run past the
    end of the file; a cut reduced level or associated image (label, macro) is
    dropped with a warning naming it (see :func:`_judge_damage`).
    """
    tif, log = opened.tif, opened.log
    levels = tiff_pyramid_series(tif)
    associated = {
        s.name.lower(): s for s in tif.series if s.name.lower() in ("thumbnail", "label", "macro")
    }
    whole = len(levels)
    levels, associated, warnings = _judge_damage(path, opened, levels, associated)
    try:
        layout: PixelLayout | SlideError = pixel_layout(path, levels[0])
    except SlideError as err:
        layout = err
    problems = {tifffile_decode_problem(s.keyframe) for s in levels} - {None}
    if opened.damage or warnings:  # tifffile's own lines about the cut: ours say it
        log = [m for m in log if "invalid value offset" not in m and "invalid page" not in m]
    return TiffSurvey(
        levels=levels,
        associated=associated,
        layout=layout,
        decode_problem=sorted(problems)[0] if problems else None,
        warnings=warnings + log_warnings(path, log),
        levels_lost=len(levels) < whole or any(d.chain for d in opened.damage),
    )


def _judge_damage(
    path: str | os.PathLike,
    opened: OpenedTiff,
    levels: list[tifffile.TiffPageSeries],
    associated: dict[str, tifffile.TiffPageSeries],
) -> tuple[list[tifffile.TiffPageSeries], dict[str, tifffile.TiffPageSeries], list[str]]:
    """The levels and associated images that are whole, and warnings naming what is lost.

    Level 0 cut: SlideError ("truncated"). A reduced level cut (its tiles past
    the end, or its directory lost where the chain of directories is cut) is
    left out with a warning naming it, so is an associated image. A chain cut
    before any reduced level's directory leaves no sign of what was there (more
    levels, or only a thumbnail): refused as truncated, as OpenSlide does.
    """
    size = Path(path).stat().st_size
    chain = next((d for d in opened.damage if d.chain), None)
    beyond = chain.page if chain is not None else None  # first directory lost

    def lost_with_chain(page) -> bool:
        return beyond is not None and isinstance(page.index, int) and page.index >= beyond

    level_of = {
        page.index: number
        for number, series in enumerate(levels)
        for page in series.pages
        if page is not None and isinstance(page.index, int)
    }
    lost: dict[int, Damage | None] = {}  # level number -> its damage (None: past the chain cut)
    warnings = []
    for item in opened.damage:
        if not item.essential:
            warnings.append(
                f"{path}: {item.what}, past the end of the file ({size} bytes); that tag is "
                "ignored, the pixels do not need it"
            )
        elif not item.chain and item.page in level_of:
            lost.setdefault(level_of[item.page], item)
    for number, series in enumerate(levels):
        pages = [p for p in series.pages if p is not None]
        if any(lost_with_chain(p) for p in pages):
            lost.setdefault(number, None)
        elif not (opened.walked and all(isinstance(p.index, int) for p in pages)):
            for item in data_damage(path, pages):  # SubIFD levels: the walk does not reach them
                lost.setdefault(number, item)
    if 0 in lost:
        raise _truncated(path, lost[0] or chain)
    if chain is not None and len(levels) - sum(1 for d in lost.values() if d is None) < 2:
        raise _truncated(path, chain)  # no reduced level before the cut: what is lost is unknown
    gone = []
    associated_pages = {series.keyframe.index for series in associated.values()}
    for name, series in list(associated.items()):
        page = series.keyframe
        walked = opened.walked and isinstance(page.index, int)
        item = next((d for d in opened.damage if d.page == page.index and d.essential), None)
        item = item if walked else next(iter(data_damage(path, [page])), None)
        if item is not None or lost_with_chain(page):
            del associated[name]
            gone.append((name, item))
    if lost or chain is not None:
        kept = [number for number in range(len(levels)) if number not in lost]
        first = next((d for d in lost.values() if d is not None), chain)
        named = [_level_name(number, levels[number]) for number in sorted(lost)]
        if chain is not None:
            named.append(f"all after directory {chain.page} (any further levels, label, macro)")
        coarsest = levels[kept[-1]].keyframe
        warnings.append(
            f"{path}: the file is truncated ({first.what}; the file has {size} bytes). "
            f"Lost: {'; '.join(named)}. Opened with level{'s' if len(kept) > 1 else ''} "
            f"{', '.join(map(str, kept))} (the coarsest {coarsest.imagewidth} x "
            f"{coarsest.imagelength} px); copy the file again to get the whole pyramid"
        )
        levels = [series for number, series in enumerate(levels) if number not in lost]
    for item in opened.damage:
        if item.essential and not item.chain and item.page not in {*level_of, *associated_pages}:
            warnings.append(
                f"{path}: the file is truncated ({item.what}): image {item.page + 1} "
                "(not a level) is lost, the slide's levels are whole"
            )
    for name, item in gone:
        if item is None:
            continue  # past the chain cut: named in the warning above
        warnings.append(
            f"{path}: the file is truncated ({item.what}): its {name} image is lost, "
            "the slide's levels are whole; copy the file again to get it back"
        )
    return levels, associated, warnings


def _level_name(number: int, series: tifffile.TiffPageSeries) -> str:
    page = series.keyframe
    return f"level {number} ({page.imagewidth} x {page.imagelength} px)"


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


def _level_shape(series: tifffile.TiffPageSeries) -> tuple[int, ...]:
    """(y, x, samples) of a level, as :func:`_to_yxs` makes it, without opening a store."""
    kept = [(a, n) for a, n in zip(series.axes, series.shape, strict=True) if a in "YXS" or n > 1]
    axes = "".join(a for a, _ in kept)
    if axes not in ("YX", "YXS", "SYX"):
        raise SlideError(f"image axes {series.axes!r} are not supported; expected an RGB 2D slide")
    sizes = dict(kept)
    return sizes["Y"], sizes["X"], sizes.get("S", 1)


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
        self._opened = opened
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
            # tiled levels are decoded tile by tile (fast path); anything else via zarr,
            # whose store is made on the first read
            self._tiled = [
                TiledLevel(s.keyframe, self._bytes, layout=self._layout)
                if s.axes in ("YX", "YXS") and is_fast_path_page(s.keyframe)
                else None
                for s in self._levels
            ]
            self._zarr_arrays: dict[int, da.Array] = {}
            shapes = [
                t.shape if t else _level_shape(s)
                for t, s in zip(self._tiled, self._levels, strict=True)
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
        if page.is_svs:
            vendor = "aperio"
            props.update(_parse_svs_description(page.description))
            mpp, mpp_origin = _float(props.get("aperio.MPP")), "Aperio MPP"
            power = _float(props.get("aperio.AppMag"))
        elif (
            (page.is_ome and page.description)
            if getattr(page, "from_walk", False)
            else (self._opened.tif.is_ome and self._opened.tif.ome_metadata)
        ):
            vendor = "ome-tiff"
            walked = getattr(page, "from_walk", False)
            ome = _ome_physical_size(page.description if walked else self._opened.tif.ome_metadata)
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
            box = self._zarr_level(level)[y : y + h, x : x + w]
            return self._layout.to_rgb(np.asarray(box.compute(scheduler="sync")))
        except Exception as err:
            raise self._read_failed(level, x, y, err) from err

    def _zarr_level(self, level: int) -> da.Array:
        """A level that is not tiled 8-bit, through tifffile's zarr store (made once)."""
        array = self._zarr_arrays.get(level)
        if array is None:
            array = self._zarr_arrays.setdefault(level, _level_dask(self._levels[level]))
        return array

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
        if series is None and name in self._associated:  # read from the walk: tifffile finds it
            found = {s.name.lower(): s for s in self._opened.tif.series}
            series = self._associated[name] = found.get(name)
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
        self._opened.close()
        if getattr(self, "_bytes", None) is not None:
            self._bytes.close()


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    match = re.match(r"\s*[-+]?\d*\.?\d+(e[-+]?\d+)?", value, re.IGNORECASE)
    return float(match.group(0)) if match else None
