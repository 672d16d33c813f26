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
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Damage:
    """One place where the file ends before its content does."""

    page: int | None  # top-level page index, None for the directory chain itself
    what: str  # e.g. "its directory 3 would start at byte 1474362"
    chain: bool  # the directory chain is cut: later pages are lost
    #: The pixels depend on it (tiles, their offsets, JPEG tables); False for a descriptive
    #: tag, which some writers leave pointing anywhere: worth a warning, not a refusal.
    essential: bool = True


def directory_damage(path: str | os.PathLike) -> list[Damage] | None:
    """Damage in the top-level IFD chain: directories, tag values or tiles past the end of the file.

    Reads the header itself, so a file tifffile cannot open at all is still
    told apart: cut short ("truncated") or damaged in place ("corrupt").
    None for a classic TIFF past 4 GiB: only Hamamatsu NDPI writes those, with
    offsets that wrap at 2**32 (tifffile knows the trick; its offsets are checked instead).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    byteorder = {b"II": "<", b"MM": ">"}.get(head[:2])
    if byteorder is None or len(head) < 8:
        return []
    (version,) = struct.unpack(f"{byteorder}H", head[2:4])
    offset_size = 8 if version == 43 else 4
    if offset_size == 4 and size >= 1 << 32:
        return None
    offset_format = f"{byteorder}{'Q' if offset_size == 8 else 'I'}"
    count_format = f"{byteorder}{'Q' if offset_size == 8 else 'H'}"
    entry_size = 20 if offset_size == 8 else 12
    # an entry: tag (H), type (H), count, value or offset (each offset_size bytes)
    entry = struct.Struct(f"{byteorder}HH{'Q' if offset_size == 8 else 'I'}")
    value_offset = struct.Struct(offset_format)
    damage: list[Damage] = []
    with open(path, "rb") as fh:
        fh.seek(8 if offset_size == 8 else 4)
        first = fh.read(offset_size)
        if len(first) < offset_size:
            return [Damage(None, "its header is cut", True)]
        (offset,) = value_offset.unpack(first)
        seen: set[int] = set()
        index = 0
        while offset and offset not in seen and index < _MAX_DIRECTORIES:
            seen.add(offset)
            count_size = struct.calcsize(count_format)
            if offset + count_size > size:
                what = f"its directory {index + 1} would start at byte {offset}"
                if index == 0:  # the header's own pointer: a cut file, or a damaged header
                    what += " (or the header is corrupt)"
                damage.append(Damage(None, what, True))
                break
            fh.seek(offset)
            (count,) = struct.unpack(count_format, fh.read(count_size))
            end = offset + count_size + count * entry_size + offset_size
            if end > size:
                damage.append(Damage(None, f"its directory {index + 1} runs to byte {end}", True))
                break
            table = fh.read(count * entry_size + offset_size)
            extents: dict[str, np.ndarray] = {}
            for i in range(count):
                raw = table[i * entry_size : (i + 1) * entry_size]
                tag, kind, n = entry.unpack_from(raw)
                nbytes = _TYPE_SIZES.get(kind, 0) * n
                inline = nbytes <= offset_size
                start = 0 if inline else value_offset.unpack_from(raw, entry.size)[0]
                if not inline and start + nbytes > size:
                    what = f"tag {tag} of directory {index + 1} runs to byte {start + nbytes}"
                    damage.append(Damage(index, what, False, tag in _PIXEL_TAGS))
                elif tag in _EXTENT_TAGS and kind in _INTEGER_TYPES:
                    dtype = np.dtype(_INTEGER_TYPES[kind]).newbyteorder(byteorder)
                    data = (
                        raw[entry.size : entry.size + nbytes]
                        if inline
                        else _read(fh, start, nbytes)
                    )
                    extents[_EXTENT_TAGS[tag]] = np.frombuffer(data, dtype).astype(np.int64)
            last = _last_byte(extents)
            if last > size:
                damage.append(Damage(index, f"its tiles reach byte {last}", False))
            (offset,) = value_offset.unpack_from(table, count * entry_size)
            index += 1
    return damage


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
