"""Array views of slide levels: what napari slices and what dask wraps.

A :class:`LevelArray` is a read-only numpy-style view of one level: slicing
it reads just that box (through the backend's tile path). napari gets these
directly, as napari-wsi serves zarr arrays, so panning costs a tile decode and
no task graph. :func:`as_dask` wraps any of them as a dask array chunked at
the file's tiles, built with ``map_blocks`` so a slice of a 40,000-chunk level
costs milliseconds, not a walk over every chunk.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import dask.array as da

ReadBox = Callable[[int, int, int, int], np.ndarray]  # (x, y, w, h) -> (h, w, 3)


class LevelArray:
    """(h, w, 3) uint8 array-like over ``read_box``; slicing reads only the box."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, read_box: ReadBox, width: int, height: int) -> None:
        self._read_box = read_box
        self.shape = (int(height), int(width), 3)

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key[:3]
        squeeze = [i for i, k in enumerate((ys, xs)) if isinstance(k, (int, np.integer))]
        ys, xs = (slice(k, k + 1) if isinstance(k, (int, np.integer)) else k for k in (ys, xs))
        y0, y1, ystep = ys.indices(self.shape[0])
        x0, x1, xstep = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            box = np.empty((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        else:
            box = self._read_box(x0, y0, x1 - x0, y1 - y0)
        box = box[::ystep, ::xstep][:, :, cs]
        for axis in reversed(squeeze):
            box = box[(slice(None),) * axis + (0,)]
        return box

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"<LevelArray {self.shape[1]}x{self.shape[0]}>"


#: Derived levels are computed in blocks of at most this many px a side, so
#: even reading a whole coarse level of a flat 100,000 px slide stays small.
HALVE_BLOCK = 1024


def mean_2x2(image: np.ndarray) -> np.ndarray:
    """2 x 2 mean of an (h, w, 3) uint8 image, rounded (an odd last row/column is dropped)."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    rows = image[0:h:2].astype(np.uint16)  # adding whole rows first is the fast way
    rows += image[1:h:2]
    pairs = rows[:, :w].reshape(h // 2, w // 2, 2, image.shape[2])
    total = pairs[:, :, 0] + pairs[:, :, 1]
    total += 2
    total >>= 2
    return total.astype(np.uint8)


def halved(finer: LevelArray) -> LevelArray:
    """A level at half the resolution of ``finer``: each pixel the mean of 2 x 2."""
    height, width = finer.shape[0] // 2, finer.shape[1] // 2

    def read_box(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        for by in range(0, h, HALVE_BLOCK):
            bh = min(HALVE_BLOCK, h - by)
            for bx in range(0, w, HALVE_BLOCK):
                bw = min(HALVE_BLOCK, w - bx)
                fy, fx = 2 * (y + by), 2 * (x + bx)
                block = finer[fy : fy + 2 * bh, fx : fx + 2 * bw]
                out[by : by + bh, bx : bx + bw] = mean_2x2(block)
        return out

    return LevelArray(read_box, width, height)


#: Side in px of the blocks a memoized level is computed in (one task each).
MEMO_BLOCK = 512
Progress = Callable[[int, int], None]  # (blocks done, blocks in all)


class MemoizedLevel(LevelArray):
    """``array`` read whole on first use and then served from memory.

    For the coarsest computed level of a slide without a pyramid: napari's
    overview, the thumbnail and tissue detection all need it, and computing
    it means decoding every tile of the slide once (JPEG tiles at 1/8 size,
    see ``jpeg.py``), in blocks on one thread per core since the decoders
    release the GIL. ``load`` and ``save`` connect it to the on-disk cache
    (``overview_cache.py``) so a second open of the slide does no decoding.
    """

    def __init__(
        self,
        array: LevelArray,
        load: Callable[[], np.ndarray | None] | None = None,
        save: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        super().__init__(self._read_held, array.shape[1], array.shape[0])
        self._source = array
        self._load, self._save = load, save
        self._lock = threading.Lock()
        self._held: np.ndarray | None = None

    def is_ready(self) -> bool:
        """True when reading it costs no decoding: held, or loaded now from the cache."""
        with self._lock:
            if self._held is None and self._load is not None:
                self._held = self._load()
            return self._held is not None

    def compute(self, progress: Progress | None = None) -> np.ndarray:
        """The whole level (computed and cached once); ``progress(done, total)`` per block."""
        with self._lock:
            if self._held is None and self._load is not None:
                self._held = self._load()
            if self._held is None:
                self._held = read_in_blocks(self._source, MEMO_BLOCK, progress)
                if self._save is not None:
                    self._save(self._held)
            return self._held

    def _read_held(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.compute()[y : y + h, x : x + w].copy()


def memoized(array: LevelArray, **cache) -> MemoizedLevel:
    """``array`` computed once on first read (see :class:`MemoizedLevel`)."""
    return MemoizedLevel(array, **cache)


def read_in_blocks(array: LevelArray, block: int, progress: Progress | None = None) -> np.ndarray:
    """All of ``array`` read in ``block`` px squares on one thread per core."""
    import os
    from concurrent.futures import ThreadPoolExecutor, as_completed

    h, w = array.shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    boxes = [(y, x) for y in range(0, h, block) for x in range(0, w, block)]

    def fill(box: tuple[int, int]) -> None:
        y, x = box
        out[y : y + block, x : x + block] = array[y : y + block, x : x + block]

    threads = max(1, min(len(boxes), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hila-overview") as pool:
        futures = [pool.submit(fill, box) for box in boxes]
        for done, future in enumerate(as_completed(futures), 1):
            future.result()
            if progress is not None:
                progress(done, len(boxes))
    return out


def as_dask(array: LevelArray, tile: tuple[int, int], name: str) -> da.Array:
    """``array`` as a lazy dask array whose chunks are ``tile`` = (w, h) px.

    Built blockwise from two small row/column index arrays, so the graph has
    one symbolic layer instead of one task per tile: slicing a 40,000-tile
    level and building it both cost milliseconds.
    """
    import dask.array as da

    tile_w, tile_h = tile
    h, w, _ = array.shape
    # named index arrays: da.arange makes a task per chunk (2.5 ms on a 50,000 px level)
    rows = da.from_array(np.arange(h, dtype=np.int64), chunks=tile_h, name=f"{name}-rows")
    columns = da.from_array(np.arange(w, dtype=np.int64), chunks=tile_w, name=f"{name}-columns")

    def block(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        if not len(ys) or not len(xs):
            return np.empty((len(ys), len(xs), 3), np.uint8)
        return array[int(ys[0]) : int(ys[-1]) + 1, int(xs[0]) : int(xs[-1]) + 1]

    # an outer product of rows and columns is the point: silence dask's warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", da.PerformanceWarning)
        return da.blockwise(
            block,
            "yxc",
            rows,
            "y",
            columns,
            "x",
            new_axes={"c": 3},
            dtype=np.uint8,
            name=name,
            meta=np.empty((0, 0, 0), np.uint8),
        )
