"""Reading grid tiles in batches, a few batches ahead, in background threads.

A tile is ``size`` level-0 px square and is delivered ``out_px`` square: it is
read from the level ``slides.base.pick_level`` picks (the coarsest at least as
fine as asked, within 1%: a 4096 px region for a 224 px encoder comes from a
low-resolution level when the file has one) and resized with a box filter. OpenSlide and tifffile
release the GIL while decoding, so reader threads overlap with the encoder.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from numba import njit
from PIL import Image

from napari_hila.slides.base import pick_level

DEFAULT_READ_THREADS = 2
DEFAULT_PREFETCH = 3  # batches in flight ahead of the encoder


@njit(cache=True, nogil=True)
def _halve_into(tile: np.ndarray, out: np.ndarray) -> None:
    """``out`` = the 2 x 2 box means of ``tile``, rounded as Pillow's reduce(2): (sum + 2) >> 2."""
    for y in range(out.shape[0]):
        top = tile[2 * y].reshape(-1)
        bottom = tile[2 * y + 1].reshape(-1)
        row = out[y].reshape(-1)
        for x in range(out.shape[1]):
            i = 6 * x
            for c in range(3):
                total = np.uint16(top[i + c]) + top[i + 3 + c] + bottom[i + c] + bottom[i + 3 + c]
                row[3 * x + c] = (total + 2) >> 2


def resize_tile(tile: np.ndarray, out_px: int, out: np.ndarray | None = None) -> np.ndarray:
    """Square RGB tile resized to ``out_px`` (box filter down, bilinear up).

    ``out`` (``(out_px, out_px, 3)`` uint8), when given, receives the result, so
    a batch is filled without an extra copy.
    """
    factor = tile.shape[0] // out_px
    whole = tile.shape[0] == factor * out_px and tile.shape[1] == factor * out_px
    if whole and factor == 1:
        result = tile
    elif whole and factor == 2:  # a 40x patch: the same pixels as Pillow's reduce, 7x faster
        direct = out is not None and out.flags.c_contiguous
        result = out if direct else np.empty((out_px, out_px, 3), np.uint8)
        _halve_into(np.ascontiguousarray(tile), result)
        if direct:
            return result
    elif whole and factor > 2:  # other integer reductions: PIL's reduce() is an exact box mean
        result = np.asarray(Image.fromarray(tile).reduce(factor))
    else:
        method = Image.Resampling.BOX if tile.shape[0] > out_px else Image.Resampling.BILINEAR
        result = np.asarray(Image.fromarray(tile).resize((out_px, out_px), method))
    if out is None:
        return result
    out[...] = result
    return out


BAND_ROWS = 512  # rows read at a time when a large square is box-reduced


def read_tile(
    slide,
    x: int,
    y: int,
    size: int,
    out_px: int,
    level: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One ``size`` level-0 px square at (x, y), as (out_px, out_px, 3) uint8.

    A large square reduced by a whole factor from a level of whole level-0
    pixels (a region of a slide without a pyramid: 8192 px read for a 256 px
    view) is read in bands of whole boxes and each band reduced as it comes:
    the same pixels as reducing the whole square, for a few MB instead of 200.
    ``out`` as in :func:`resize_tile`.
    """
    if level is None:
        level = pick_level(slide.level_downsamples, size / out_px)
    downsample = slide.level_downsamples[level]
    side = max(1, math.ceil(size / downsample))
    factor = side // out_px
    whole = float(downsample).is_integer()
    if factor >= 2 and side == factor * out_px and side > BAND_ROWS and whole:
        band = factor * max(1, BAND_ROWS // factor)
        out = np.empty((out_px, out_px, 3), np.uint8) if out is None else out
        for top in range(0, side, band):
            rows = min(band, side - top)
            y_band = int(y) + int(top * downsample)
            part = slide.read_region((int(x), y_band), level, (side, rows))
            out[top // factor : (top + rows) // factor] = Image.fromarray(part).reduce(factor)
        return out
    return resize_tile(slide.read_region((int(x), int(y)), level, (side, side)), out_px, out)


def read_batch(slide, coords: np.ndarray, size: int, out_px: int, level: int) -> np.ndarray:
    """Tiles at ``coords`` (N, 2) as one (N, out_px, out_px, 3) uint8 array."""
    out = np.empty((len(coords), out_px, out_px, 3), np.uint8)
    for i, (x, y) in enumerate(coords):
        read_tile(slide, x, y, size, out_px, level, out=out[i])
    return out


def iter_tile_batches(
    slide,
    coords: np.ndarray,
    size: int,
    out_px: int,
    batch_size: int = 64,
    start: int = 0,
    threads: int = DEFAULT_READ_THREADS,
    prefetch: int = DEFAULT_PREFETCH,
    stop: threading.Event | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_index, tiles)`` in order, reading up to ``prefetch`` batches ahead.

    Memory is bounded by ``prefetch`` batches whatever the slide's size. Closing
    the generator early (cancel) drops batches not yet started. ``transform``
    (a CPU encoder that may run in several threads at once) is applied to each
    batch in the reader thread that read it, and its output is yielded instead
    of the tiles: decoding and encoding then share every core, with no thread
    idling while the other stage catches up.
    """
    coords = np.asarray(coords)
    level = pick_level(slide.level_downsamples, size / out_px)
    starts = iter(range(start, len(coords), batch_size))
    pending: deque[tuple[int, Future]] = deque()
    threads = max(1, threads)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hila-tiles")

    def read_and_transform(chunk: np.ndarray) -> np.ndarray:
        tiles = read_batch(slide, chunk, size, out_px, level)
        return transform(tiles) if transform is not None else tiles

    def submit_next() -> None:
        i = next(starts, None)
        if i is not None and not (stop is not None and stop.is_set()):
            pending.append((i, pool.submit(read_and_transform, coords[i : i + batch_size])))

    try:
        # at least one batch queued behind each busy thread, so none waits for work
        for _ in range(max(1, prefetch, threads + 1)):
            submit_next()
        while pending:
            i, future = pending.popleft()
            tiles = future.result()
            submit_next()
            yield i, tiles
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
