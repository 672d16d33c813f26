"""Aperio SVS pyramids opened from the directory walk alone, without tifffile's parse.

Opening an SVS with tifffile parses every tag of every page and builds its
series (a few ms on a 50,000 px slide, several times OpenSlide's whole
open). The walk of the IFD chain that checks the file is whole
(``tiff_checks.walk_directories``) has already read everything a plain SVS
pyramid of JPEG tiles needs: sizes, tiles, colour, JPEG tables, description.
:func:`aperio_survey` turns it into the levels the tile reader decodes
(``tiles.TiledLevel``), JPEG tiles decoded by imagecodecs exactly as tifffile
decodes them. Anything else (other compressions, focal planes, damage, odd
samples) returns None and goes through tifffile as before; tifffile is opened
later only for the associated images (thumbnail, label, macro) when read.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import tifffile

from napari_hila.slides.tiff_checks import Directory, DirectoryWalk

_JPEG = 7
_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 2, 6
#: Tags the slide's properties show (``tiff.<name>``), as tifffile names them.
_TEXT_TAGS = {270: "ImageDescription", 305: "Software", 271: "Make", 272: "Model", 306: "DateTime"}


class _Tag(NamedTuple):
    name: str
    value: object


class _Tags:
    """The few tags of a page by tifffile's names: ``get(name).value``, iteration."""

    def __init__(self, tags: dict[str, _Tag]) -> None:
        self._tags = tags

    def get(self, name: str) -> _Tag | None:
        return self._tags.get(name)

    def __iter__(self):
        return iter(self._tags.values())


def _text(value: tuple[int, ...] | bytes | None) -> str:
    if not isinstance(value, bytes):
        return ""
    return value.split(b"\0", 1)[0].decode("utf-8", errors="replace")


class AperioPage:
    """One tiled JPEG page as the walk read it, with the attributes of a tifffile page
    that the tile reader, the pixel checks and the slide's metadata use."""

    dtype = np.dtype(np.uint8)
    samplesperpixel = 3
    planarconfig = tifffile.PLANARCONFIG.CONTIG
    imagedepth = 1
    extrasamples = ()
    is_tiled = True
    is_svs = True
    compression = tifffile.COMPRESSION.JPEG

    def __init__(self, directory: Directory, path: str | os.PathLike) -> None:
        values = directory.values
        self.index = directory.index
        self.imagewidth = directory.number(256, 0)
        self.imagelength = directory.number(257, 0)
        self.tilewidth = directory.number(322, 0)
        self.tilelength = directory.number(323, 0)
        self.photometric = tifffile.PHOTOMETRIC(directory.number(262, _PHOTOMETRIC_RGB))
        self.subsampling = tuple(values.get(530, (2, 2)))[:2]
        self.dataoffsets = directory.offsets
        self.databytecounts = directory.counts
        jpegtables = values.get(347)
        self.jpegtables = jpegtables if isinstance(jpegtables, bytes) else None
        self.description = _text(values.get(270))
        self.shape = (self.imagelength, self.imagewidth, 3)
        self._path = path
        tags = {name: _Tag(name, _text(values.get(tag))) for tag, name in _TEXT_TAGS.items()}
        tags = {name: tag for name, tag in tags.items() if tag.value}
        if 296 in values:
            unit = directory.number(296, 1)
            with contextlib.suppress(ValueError):  # an unknown unit: no unit, as tifffile reads it
                tags["ResolutionUnit"] = _Tag("ResolutionUnit", tifffile.RESUNIT(unit))
        if isinstance(values.get(282), tuple) and len(values[282]) == 2:
            tags["XResolution"] = _Tag("XResolution", values[282])
        self.tags = _Tags(tags)

    @cached_property
    def _colorspaces(self) -> tuple[int | None, int]:
        """JPEG and output colour space for imagecodecs, as tifffile chooses them."""
        colorspace = None
        if self.photometric == _PHOTOMETRIC_RGB:
            with open(self._path, "rb") as fh:
                fh.seek(int(self.dataoffsets[0]) + 6 if len(self.dataoffsets) else 0)
                head = fh.read(4)
            if head != b"JFIF":  # Aperio's RGB JPEG tiles: no colour transform
                colorspace = _PHOTOMETRIC_RGB
        return colorspace, _PHOTOMETRIC_RGB

    def decode(self, data: bytes, index: int, *, jpegtables: bytes | None = None):
        """One tile as (array, index, shape): the first item is what the tile reader takes."""
        import imagecodecs

        colorspace, outcolorspace = self._colorspaces
        tile = imagecodecs.jpeg_decode(
            data,
            bitspersample=8,
            tables=jpegtables,
            colorspace=colorspace,
            outcolorspace=outcolorspace,
            shape=(self.tilelength, self.tilewidth),
        )
        return tile, index, tile.shape


@dataclass
class AperioSeries:
    """A level as a one-page series, the shape a tifffile series would have."""

    keyframe: AperioPage
    name: str = "Baseline"
    kind: str = "svs"
    axes: str = "YXS"

    @property
    def pages(self) -> list[AperioPage]:
        return [self.keyframe]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.keyframe.shape

    @property
    def dtype(self) -> np.dtype:
        return self.keyframe.dtype


def _is_plain_level(directory: Directory) -> bool:
    """A tiled 8-bit 3-sample JPEG page, RGB or YCbCr, without extra samples or SubIFDs."""
    values = directory.values
    tiles_x = -(-directory.number(256, 0) // max(directory.number(322, 0), 1))
    tiles_y = -(-directory.number(257, 0) // max(directory.number(323, 0), 1))
    return (
        directory.number(259, 1) == _JPEG
        and directory.number(262, -1) in (_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR)
        and directory.number(277, 1) == 3
        and tuple(values.get(258, (1,))) in ((8,), (8, 8, 8))
        and directory.number(284, 1) == 1
        and directory.number(339, 1) == 1
        and directory.number(32997, 1) == 1
        and 338 not in values
        and 330 not in values
        and directory.number(322, 0) % 16 == 0
        and directory.number(323, 0) % 16 == 0
        and directory.number(322, 0) > 0
        and directory.number(323, 0) > 0
        and directory.offsets is not None
        and directory.counts is not None
        and directory.offsets.shape == directory.counts.shape == (tiles_x * tiles_y,)
    )


@dataclass
class AperioLayout:
    """The pages of a plain SVS: levels, and associated images by name (top-level index)."""

    levels: list[AperioSeries]
    associated: dict[str, int]


def aperio_layout(path: str | os.PathLike, walk: DirectoryWalk) -> AperioLayout | None:
    """The SVS pages as tifffile's SVS series would group them, or None if not a plain SVS.

    Page 0 is level 0, page 1 the thumbnail, the tiled unreduced pages after it
    the reduced levels, the next one or two the label and macro (subfiletype 9).
    None for a file with any damage, focal planes (repeated level sizes) or a
    level that is not tiled 8-bit JPEG RGB; tifffile reads those.
    """
    directories = walk.directories
    if walk.damage or not directories:
        return None
    first = directories[0]
    if not _text(first.values.get(270)).startswith("Aperio ") or not _is_plain_level(first):
        return None
    levels = [first]
    index = 2
    while index < len(directories):
        directory = directories[index]
        if 322 not in directory.values or directory.number(254, 0) & 1:
            break
        if not _is_plain_level(directory):
            return None
        levels.append(directory)
        index += 1
    sizes = [(d.number(256, 0), d.number(257, 0)) for d in levels]
    if len(set(sizes)) != len(sizes):
        return None  # focal planes: tifffile's Z series
    associated = {"thumbnail": 1} if len(directories) > 1 else {}
    for directory in directories[index : index + 2]:
        name = "macro" if directory.number(254, 0) == 9 else "label"
        associated.setdefault(name, directory.index)
    series = [AperioSeries(AperioPage(d, path)) for d in levels]
    for level in series[1:]:
        level.name = "Resolution"
    return AperioLayout(series, associated)
