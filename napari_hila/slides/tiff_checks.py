"""Is a TIFF whole? Its directory chain, tag values and tile data checked against its size.

A slide cut short by a failed copy or download still starts with a valid
header, and tifffile opens what is left with only a log line. These checks
find the cut before anything is shown: the chain of image directories (IFDs)
is walked with a few small reads per directory, and each page's tile extents
are compared with the file's size in one vectorised step, so the cost grows
with the number of pages, not the number of tiles.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tifffile

#: Bytes per value of each TIFF field type (TIFF 6 and BigTIFF).
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TYPE_SIZES.update({13: 4, 16: 8, 17: 8, 18: 8})
#: Tile/strip offset and byte-count tags, and the integer types their arrays may have.
_EXTENT_TAGS = {273: "offsets", 324: "offsets", 279: "counts", 325: "counts"}
_INTEGER_TYPES = {3: "u2", 4: "u4", 16: "u8"}
#: Tags the pixels cannot be decoded without: extents, JPEG tables, colour map, subsampling.
_PIXEL_TAGS = {*_EXTENT_TAGS, 347, 320, 530, 258, 338}
#: Directories walked at most: a loop in a damaged chain must not hang the opener.
_MAX_DIRECTORIES = 100_000
#: Tags whose values the walk keeps (besides the extents): what a slide's levels
#: are made of (size, tiles, samples, compression, colour, JPEG tables) and its
#: description, resolution and provenance.
WANTED_TAGS = {254, 256, 257, 258, 259, 262, 270, 271, 272, 277, 282, 283, 284, 296, 305, 306}
WANTED_TAGS |= {322, 323, 330, 338, 339, 347, 530, 32997}
#: A kept value larger than this is not read (an ICC profile, an XMP packet).
_MAX_VALUE_BYTES = 1 << 20
#: struct codes of the field types whose values are kept; "" keeps the raw bytes.
_VALUE_TYPES = {1: "B", 2: "", 3: "H", 4: "I", 5: "I", 7: "", 13: "I", 16: "Q", 18: "Q"}


@dataclass(frozen=True)
class Damage:
    """One place where the file ends before its content does."""

    #: Top-level page index: the page whose tags or tiles are cut, or for a cut
    #: directory chain the first directory that is lost (None: a page tifffile
    #: found elsewhere, e.g. a SubIFD).
    page: int | None
    what: str  # e.g. "its directory 3 would start at byte 1474362"
    chain: bool  # the directory chain is cut: this page and all later ones are lost
    #: The pixels depend on it (tiles, their offsets, JPEG tables); False for a descriptive
    #: tag, which some writers leave pointing anywhere: worth a warning, not a refusal.
    essential: bool = True


@dataclass
class Directory:
    """One top-level image directory (IFD) as the walk read it."""

    index: int
    offset: int
    #: Values of the tags in ``WANTED_TAGS``: integers (rationals as numerator,
    #: denominator pairs) as a tuple, ASCII and undefined bytes as bytes.
    values: dict[int, tuple[int, ...] | bytes]
    offsets: np.ndarray | None = None  # tile or strip offsets
    counts: np.ndarray | None = None  # their byte counts
    tags: set[int] = field(default_factory=set)  # every tag the directory has
    next_offset: int = 0  # of the next directory in the chain (0: the last)
    #: Its SubIFDs (tag 330: OME's reduced levels), read the same way; None when
    #: one is cut or damaged (tifffile's parse then finds which).
    subifds: list[Directory] | None = field(default_factory=list)

    def number(self, tag: int, default: int) -> int:
        """The first value of an integer tag, or ``default`` when the directory lacks it."""
        value = self.values.get(tag)
        return int(value[0]) if isinstance(value, tuple) and value else default


@dataclass
class DirectoryWalk:
    """The top-level IFD chain: the directories that are whole, and where the file is cut."""

    directories: list[Directory]
    damage: list[Damage]
    byteorder: str
    size: int  # of the file, in bytes
    #: Where the cut directory starts, when the chain is cut inside the file: a
    #: parser must stop before it (tifffile reads a half directory as garbage).
    cut_at: int | None = None


def walk_directories(path: str | os.PathLike) -> DirectoryWalk | None:
    """The top-level IFD chain, read once: directories, tag values, and where the file is cut.

    Reads the header itself, so a file tifffile cannot open at all is still
    told apart: cut short ("truncated") or damaged in place ("corrupt"). Each
    directory costs a few reads (its table, the values of ``WANTED_TAGS``, its
    tile offsets and byte counts), whatever its number of tiles.
    None for a classic TIFF past 4 GiB: only Hamamatsu NDPI writes those, with
    offsets that wrap at 2**32 (tifffile knows the trick; its offsets are checked instead).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    byteorder = {b"II": "<", b"MM": ">"}.get(head[:2])
    if byteorder is None or len(head) < 8:
        return DirectoryWalk([], [], byteorder or "<", size)
    (version,) = struct.unpack(f"{byteorder}H", head[2:4])
    offset_size = 8 if version == 43 else 4
    if offset_size == 4 and size >= 1 << 32:
        return None
    offset_format = f"{byteorder}{'Q' if offset_size == 8 else 'I'}"
    count_format = f"{byteorder}{'Q' if offset_size == 8 else 'H'}"
    count_size = struct.calcsize(count_format)
    entry_size = 20 if offset_size == 8 else 12
    # an entry: tag (H), type (H), count, value or offset (each offset_size bytes)
    entry = struct.Struct(f"{byteorder}HH{'Q' if offset_size == 8 else 'I'}")
    value_offset = struct.Struct(offset_format)
    damage: list[Damage] = []
    directories: list[Directory] = []

    def read_directory(fh, offset: int, index: int, damage: list[Damage]) -> Directory:
        """The directory at ``offset`` (its chain is checked by the caller), damage noted."""
        fh.seek(offset)
        (count,) = struct.unpack(count_format, fh.read(count_size))
        table = fh.read(count * entry_size + offset_size)
        directory = Directory(index, offset, {})
        for i in range(count):
            raw = table[i * entry_size : (i + 1) * entry_size]
            tag, kind, n = entry.unpack_from(raw)
            directory.tags.add(tag)
            nbytes = _TYPE_SIZES.get(kind, 0) * n
            inline = nbytes <= offset_size
            start = 0 if inline else value_offset.unpack_from(raw, entry.size)[0]
            if not inline and start + nbytes > size:
                what = f"tag {tag} of directory {index + 1} runs to byte {start + nbytes}"
                damage.append(Damage(index, what, False, tag in _PIXEL_TAGS))
                continue
            wanted = tag in _EXTENT_TAGS or (tag in WANTED_TAGS and nbytes <= _MAX_VALUE_BYTES)
            if not wanted or kind not in _VALUE_TYPES:
                continue
            data = raw[entry.size : entry.size + nbytes] if inline else _read(fh, start, nbytes)
            if tag in _EXTENT_TAGS:
                if kind in _INTEGER_TYPES:
                    dtype = np.dtype(_INTEGER_TYPES[kind]).newbyteorder(byteorder)
                    array = np.frombuffer(data, dtype).astype(np.int64)
                    setattr(directory, _EXTENT_TAGS[tag], array)
            elif _VALUE_TYPES[kind]:
                code = _VALUE_TYPES[kind] * (n * (2 if kind in (5, 10) else 1))
                directory.values[tag] = struct.unpack(f"{byteorder}{code}", data)
            else:
                directory.values[tag] = bytes(data)
        extents = {"offsets": directory.offsets, "counts": directory.counts}
        last = _last_byte({k: v for k, v in extents.items() if v is not None})
        if last > size:
            damage.append(Damage(index, f"its tiles reach byte {last}", False))
        (directory.next_offset,) = value_offset.unpack_from(table, count * entry_size)
        return directory

    def read_subifds(fh, directory: Directory) -> list[Directory] | None:
        """The directory's SubIFDs (reduced levels), or None when any is cut or damaged."""
        subs: list[Directory] = []
        for offset in directory.values.get(330, ()):
            if not isinstance(offset, int) or offset + count_size > size:
                return None
            fh.seek(offset)
            (count,) = struct.unpack(count_format, fh.read(count_size))
            if offset + count_size + count * entry_size + offset_size > size:
                return None
            found: list[Damage] = []
            subs.append(read_directory(fh, offset, directory.index, found))
            if found:
                return None
        return subs

    with open(path, "rb") as fh:
        fh.seek(8 if offset_size == 8 else 4)
        first = fh.read(offset_size)
        if len(first) < offset_size:
            return DirectoryWalk([], [Damage(0, "its header is cut", True)], byteorder, size)
        (offset,) = value_offset.unpack(first)
        seen: set[int] = set()
        index = 0
        while offset and offset not in seen and index < _MAX_DIRECTORIES:
            seen.add(offset)
            if offset + count_size > size:
                what = f"its directory {index + 1} would start at byte {offset}"
                if index == 0:  # the header's own pointer: a cut file, or a damaged header
                    what += " (or the header is corrupt)"
                damage.append(Damage(index, what, True))
                break
            fh.seek(offset)
            (count,) = struct.unpack(count_format, fh.read(count_size))
            end = offset + count_size + count * entry_size + offset_size
            if end > size:
                damage.append(Damage(index, f"its directory {index + 1} runs to byte {end}", True))
                return DirectoryWalk(directories, damage, byteorder, size, cut_at=offset)
            directory = read_directory(fh, offset, index, damage)
            if 330 in directory.values:
                directory.subifds = read_subifds(fh, directory)
            directories.append(directory)
            offset = directory.next_offset
            index += 1
    return DirectoryWalk(directories, damage, byteorder, size)


class FileUpTo(io.RawIOBase):
    """A file read as if it ended at ``size``: what a parser of a cut file should see."""

    def __init__(self, path: str | os.PathLike, size: int) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 (closed with this object)
        self._size = size
        self.name = os.fspath(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            offset, whence = self._size + offset, os.SEEK_SET
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readinto(self, buffer) -> int:
        data = self._fh.read(max(0, min(len(buffer), self._size - self._fh.tell())))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def _read(fh, offset: int, count: int) -> bytes:
    fh.seek(offset)
    return fh.read(count)


def _last_byte(extents: dict[str, np.ndarray]) -> int:
    """The end of a page's last tile or strip (0 without both arrays), in one numpy step."""
    offsets, counts = extents.get("offsets"), extents.get("counts")
    if offsets is None or counts is None or offsets.shape != counts.shape or not counts.size:
        return 0
    return int((offsets + counts)[counts > 0].max(initial=0))


def data_damage(path: str | os.PathLike, pages: list[tifffile.TiffPage]) -> list[Damage]:
    """Pages (SubIFDs, which the directory walk does not reach) whose data run past the end."""
    size = os.path.getsize(path)
    damage = []
    for page in pages:
        counts = np.asarray(page.databytecounts, np.int64)
        if not counts.size:
            continue
        ends = np.asarray(page.dataoffsets, np.int64) + counts
        last = int(ends[counts > 0].max(initial=0))
        if last > size:
            index = page.index if isinstance(page.index, int) else None
            damage.append(Damage(index, f"its tiles reach byte {last}", False))
    return damage


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def tifffile_log() -> Iterator[list[str]]:
    """Collect what tifffile logs inside the block instead of letting it reach stderr.

    The opener turns what matters into its own message (a cut file is
    "truncated") and drops what does not (an unknown enum value in a tag).
    """
    logger = logging.getLogger("tifffile")
    handler = _Records()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def log_warnings(path: str | os.PathLike, messages: list[str]) -> list[str]:
    """tifffile's log lines as napari-hila warnings: harmless ones dropped, the rest once.

    An unknown value in a descriptive tag (``0 is not a valid ORIENTATION``)
    changes no pixel: silent. Anything else means tifffile skipped part of the
    file's metadata, which the user should hear about in one sentence.
    """
    kept = sorted({m for m in messages if "is not a valid" not in m})
    if not kept:
        return []
    detail = kept[0] if len(kept) == 1 else f"{kept[0]}; and {len(kept) - 1} more"
    return [
        f"{path}: part of the TIFF's metadata could not be read (tifffile: {detail}); "
        "the image may be incomplete"
    ]
