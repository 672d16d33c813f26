"""TIFF JPEG tiles decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling.

A JPEG block's low-frequency DCT coefficients already hold the block's
averages: libjpeg can inverse-transform just those (at 1/8 only the DC term,
the quantised mean of each 8 x 8 block) and skip most of the IDCT, the colour
conversion and the memory traffic of full-size pixels. Coarse levels of a
slide without a pyramid are built from these reduced decodes instead of
full decodes followed by 2 x 2 averaging.

TIFF JPEG tiles are often abbreviated streams whose quantisation and Huffman
tables sit once in the JPEGTables tag (347); :func:`tiff_jpeg_stream` splices
them in. The TIFF's photometric tag, not the stream's markers, says whether
the samples are RGB or YCbCr (Aperio writes RGB tiles with component ids
that libjpeg would guess to be YCbCr), so any JFIF/Adobe marker in the tile
is dropped and the colour space is passed to the decoder explicitly.
"""

from __future__ import annotations

import functools
import struct

import numpy as np
from PIL import Image

#: Scales libjpeg's DCT scaling gives directly (1/scale of the tile's side).
DCT_SCALES = (2, 4, 8)
_SOI, _EOI, _SOS, _SOF_MARKERS = 0xD8, 0xD9, 0xDA, {0xC0, 0xC1, 0xC2}
_APP0_JFIF, _APP14_ADOBE = 0xE0, 0xEE
#: Markers without a length field (SOI, EOI, RSTn, TEM).
_STANDALONE = {_SOI, _EOI, 0x01, *range(0xD0, 0xD8)}


class JpegStreamError(ValueError):
    """The bytes are not a JPEG stream this module can splice or scale."""


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The marker segments before the scan, and the offset where the scan (SOS) starts.

    Each segment is ``(marker, FF xx + its bytes)``, fill bytes dropped. For a
    tables-only stream (no SOS) the offset is ``len(data)``.
    """
    if data[:2] != b"\xff\xd8":
        raise JpegStreamError("a JPEG stream starts with SOI (FF D8)")
    segments: list[tuple[int, bytes]] = []
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise JpegStreamError(f"expected a marker at byte {pos}")
        start = pos
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= len(data):
            break
        marker = data[pos]
        pos += 1
        if marker == _SOS:
            return segments, start
        if marker in _STANDALONE:
            segments.append((marker, bytes((0xFF, marker))))
            if marker == _EOI:
                break
            continue
        if pos + 2 > len(data):
            raise JpegStreamError("a marker segment is cut short")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        segments.append((marker, bytes((0xFF, marker)) + data[pos : pos + length]))
        pos += length
    return segments, len(data)


def tiff_jpeg_stream(tile: bytes, tables: bytes | None = None) -> tuple[bytes, tuple[int, int]]:
    """A self-contained JPEG stream for a TIFF tile, and its (width, height).

    The JPEGTables segments come first, then the tile's own header segments
    (a table the tile redefines overrides the shared one, as libjpeg reads
    them in order), then the tile's scan. JFIF and Adobe markers are dropped:
    the caller states the colour space.
    """
    header = [_table_header(bytes(tables))] if tables else []
    tile_segments, scan = jpeg_segments(tile)
    size = None
    for marker, seg in tile_segments:
        if marker in _STANDALONE or marker in (_APP0_JFIF, _APP14_ADOBE):
            continue
        if marker in _SOF_MARKERS:
            precision, height, width, components = struct.unpack(">BHHB", seg[4:10])
            if precision != 8 or components != 3:
                raise JpegStreamError(f"{components}-component {precision}-bit JPEG, not RGB")
            size = (width, height)
        header.append(seg)
    if size is None or scan >= len(tile):
        raise JpegStreamError("the tile has no baseline/progressive frame header or no scan")
    return b"".join([b"\xff\xd8", *header, tile[scan:]]), size


@functools.lru_cache(maxsize=8)
def _table_header(tables: bytes) -> bytes:
    """The table segments of a JPEGTables stream (parsed once per level, not per tile)."""
    segments, _ = jpeg_segments(tables)
    return b"".join(seg for marker, seg in segments if marker not in _STANDALONE)


def decode_jpeg_scaled(
    stream: bytes, size: tuple[int, int], scale: int, colorspace: str
) -> np.ndarray:
    """(ceil(h/scale), ceil(w/scale), 3) uint8 RGB of a JPEG stream, scaled in the IDCT.

    ``colorspace`` is the JPEG's own colour space, ``"YCbCr"`` or ``"RGB"``
    (from the TIFF photometric tag). Pillow's JPEG decoder releases the GIL,
    so tiles decode in parallel on a thread pool.
    """
    if scale not in (1, *DCT_SCALES):
        raise ValueError(f"scale must be 1, 2, 4 or 8, got {scale}")
    width, height = size
    out_size = (-(-width // scale), -(-height // scale))
    # decoder args: raw mode, JPEG colour space, DCT scale, draft (0: accurate IDCT)
    image = Image.frombytes("RGB", out_size, stream, "jpeg", "RGB", colorspace, scale, 0)
    return np.asarray(image)
