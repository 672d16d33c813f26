"""TIFF pyramids opened from the directory walk alone, without tifffile's parse.

Opening a pyramid with tifffile parses every tag of every page and builds
its series (a few ms on a 50,000 px slide, several times OpenSlide's whole
open). The walk of the IFD chain that checks the file is whole
(``tiff_checks.walk_directories``) has already read everything a plain
pyramid of JPEG tiles needs: sizes, tiles, colour, JPEG tables, description.
:func:`aperio_layout` (Aperio SVS) and :func:`generic_layout` (a tiled TIFF
whose pages are its levels, as vips writes them) turn it into the levels the
tile reader decodes (``tiff_tile_reads.TiledLevel``), JPEG tiles decoded by imagecodecs
exactly as tifffile decodes them, grouped as tifffile's series would group
them. Anything else (other compressions, focal planes, damage, odd samples,
private tags, special descriptions) returns None and goes through tifffile as
before; for an SVS tifffile is opened later only for the associated images
(thumbnail, label, macro) when read.
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


class WalkedPage:
    """One tiled JPEG page as the walk read it, with the attributes of a tifffile page
    that the tile reader, the pixel checks and the slide's metadata use."""

    dtype = np.dtype(np.uint8)
    samplesperpixel = 3
    planarconfig = tifffile.PLANARCONFIG.CONTIG
    imagedepth = 1
    extrasamples = ()
    is_tiled = True
    from_walk = True  # no tifffile behind it: the slide's metadata come from the walk
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
        self.is_svs = self.description.startswith("Aperio ")
        self.is_ome = False  # set by ome_layout, which has read the XML
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
class WalkedSeries:
    """A level as a one-page series, the shape a tifffile series would have."""

    keyframe: WalkedPage
    name: str = "Baseline"
    kind: str = "svs"
    axes: str = "YXS"

    @property
    def pages(self) -> list[WalkedPage]:
        return [self.keyframe]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.keyframe.shape

    @property
    def dtype(self) -> np.dtype:
        return self.keyframe.dtype


def _is_plain_level(directory: Directory, subifds: bool = False) -> bool:
    """A tiled 8-bit 3-sample JPEG page, RGB or YCbCr, without extra samples (or SubIFDs,
    unless ``subifds``)."""
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
        and (subifds or 330 not in values)
        and directory.number(322, 0) % 16 == 0
        and directory.number(323, 0) % 16 == 0
        and directory.number(322, 0) > 0
        and directory.number(323, 0) > 0
        and directory.offsets is not None
        and directory.counts is not None
        and directory.offsets.shape == directory.counts.shape == (tiles_x * tiles_y,)
    )


@dataclass
class WalkedLayout:
    """The pages of a plain pyramid: levels, and associated images by name (top-level index)."""

    levels: list[WalkedSeries]
    associated: dict[str, int]


def aperio_layout(path: str | os.PathLike, walk: DirectoryWalk) -> WalkedLayout | None:
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
    series = [WalkedSeries(WalkedPage(d, path)) for d in levels]
    for level in series[1:]:
        level.name = "Resolution"
    return WalkedLayout(series, associated)


#: Tags a plain tiled TIFF may have: baseline and extension tags that change nothing
#: about the series tifffile makes of it (an ICC profile, orientation, copyright).
_PLAIN_TAGS = {254, 256, 257, 258, 259, 262, 266, 269, 270, 271, 272, 274, 277, 280, 281}
_PLAIN_TAGS |= {282, 283, 284, 285, 286, 287, 296, 297, 305, 306, 315, 316, 317, 318, 319}
_PLAIN_TAGS |= {322, 323, 324, 325, 339, 347, 530, 531, 532, 33432, 34675}
#: Characters of descriptions tifffile reads as metadata (JSON shape, XML, key=value).
_METADATA_MARKS = set("{<=")


def generic_layout(path: str | os.PathLike, walk: DirectoryWalk) -> WalkedLayout | None:
    """A tiled TIFF whose pages are all its levels, as tifffile's generic series make it.

    tifffile groups pages into one series per size and stacks them into a
    pyramid when each is one step (a factor of 2, 3 or 4, floor or ceiling)
    below the previous one (``pyramidize_series``). Here: every page a plain
    JPEG level, every size distinct, every page one such step below the one
    before, no tag outside ``_PLAIN_TAGS`` and no description tifffile would
    read as metadata; else None (tifffile's parse decides).
    """
    directories = walk.directories
    if walk.damage or not directories:
        return None
    for directory in directories:
        description = _text(directory.values.get(270))
        software = _text(directory.values.get(305))
        if (
            not directory.tags <= _PLAIN_TAGS
            or _METADATA_MARKS & set(description)
            or description.startswith(("Aperio", "ImageJ", "state.", "SCANIMAGE"))
            or software.startswith("SI")
            or directory.number(254, 0) not in (0, 1)
            or not _is_plain_level(directory)
        ):
            return None
    sizes = [(d.number(257, 0), d.number(256, 0)) for d in directories]
    factor = None
    for above, below in zip(sizes, sizes[1:], strict=False):
        steps = [f for f in (factor,) if f] or [2, 3, 4]
        factor = next((f for f in steps if _one_step(above, below, f)), None)
        if factor is None:
            return None
    return WalkedLayout(
        [WalkedSeries(WalkedPage(d, path), kind="generic") for d in directories], {}
    )


def _one_step(above: tuple[int, int], below: tuple[int, int], factor: int) -> bool:
    """``below`` is ``above`` divided by ``factor`` (floor or ceiling) on both axes."""
    return all(
        factor <= a and b in (a // factor, -(-a // factor))
        for a, b in zip(above, below, strict=True)
    )


def ome_layout(path: str | os.PathLike, walk: DirectoryWalk) -> WalkedLayout | None:
    """An OME-TIFF of one RGB image whose reduced levels are SubIFDs, as tifffile's OME series.

    One top-level page (the image), its OME-XML describing one Image of one
    interleaved RGB plane (SizeZ = SizeT = 1, one channel of 3 samples) of the
    page's size, and SubIFDs of decreasing size; page and SubIFDs plain JPEG
    levels. Anything else (planes, channels, several images, damage): None.
    """
    import xml.etree.ElementTree as ET

    directories = walk.directories
    if walk.damage or len(directories) != 1:
        return None
    page = directories[0]
    description = _text(page.values.get(270))
    subs = page.subifds
    if not description.startswith("<?xml") or "<OME" not in description or not subs:
        return None
    try:
        root = ET.fromstring(description)
    except ET.ParseError:
        return None
    images = [el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"]
    pixels = [el for el in images[0] if el.tag.rsplit("}", 1)[-1] == "Pixels"] if images else []
    if len(images) != 1 or len(pixels) != 1:
        return None
    attrs = pixels[0].attrib
    channels = [el for el in pixels[0] if el.tag.rsplit("}", 1)[-1] == "Channel"]
    one_plane = (
        attrs.get("SizeZ") == attrs.get("SizeT") == "1"
        and attrs.get("SizeC") == "3"
        and len(channels) == 1
        and channels[0].attrib.get("SamplesPerPixel") == "3"
        and attrs.get("Interleaved", "true").lower() == "true"
        and attrs.get("SizeX") == str(page.number(256, 0))
        and attrs.get("SizeY") == str(page.number(257, 0))
    )
    levels = [page, *subs]
    sizes = [(d.number(256, 0), d.number(257, 0)) for d in levels]
    decreasing = all(b[0] < a[0] and b[1] < a[1] for a, b in zip(sizes, sizes[1:], strict=False))
    if not (
        one_plane
        and decreasing
        and _is_plain_level(page, subifds=True)
        and all(_is_plain_level(d) for d in subs)
    ):
        return None
    series = [WalkedSeries(WalkedPage(d, path), kind="ome") for d in levels]
    series[0].keyframe.is_ome = True
    return WalkedLayout(series, {})
