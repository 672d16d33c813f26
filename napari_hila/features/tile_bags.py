"""Raw tiles for end-to-end models (VPTSurv): sampled from slides, read lazily.

Feature layer: the model (``models.vptsurv``), training and prediction all take
their tile bags from here.

A model whose registry spec has ``inputs="tiles"`` consumes a :class:`TileBatch`:
one :class:`TileSet` per slide, each a list of tile positions that reads its
pixels only when asked, a chunk at a time. So a training step holds the 200
sampled tiles of one slide at most, and inference over 1000+ tiles never holds
them all: the model pulls chunks, encodes them and keeps one token per tile.

Each tile comes with its *scale context*: the 2 x 2 block of grid tiles that
contains it, read as one image and resized to the tile's size (VPTSurv's scale
prompt). Sampling is deterministic given (seed, epoch, slide index).
"""

from __future__ import annotations

import abc
import functools
import os
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_hila.errors import SlideError
from napari_hila.features.tile_reader import read_tile
from napari_hila.slides import detect_tissue, make_grids, open_slide

__all__ = [
    "TileSet",
    "InMemoryTiles",
    "SlideTiles",
    "TileBatch",
    "TileGrid",
    "tile_grid",
    "sample_indices",
    "SlideRef",
    "slide_tiles",
    "tile_batch",
]


class TileSet(abc.ABC):
    """Tiles of one slide: positions known up front, pixels read chunk by chunk.

    Subclasses say where pixels come from: a slide file (:class:`SlideTiles`)
    or arrays already in memory (:class:`InMemoryTiles`).
    """

    coords: np.ndarray  # (N, 2) int64 level-0 (x, y) of each tile's top-left corner
    tile_size: int  # level-0 px side of one tile
    name: str  # seeds the sampling of this slide's tiles

    def __len__(self) -> int:
        return int(len(self.coords))

    @abc.abstractmethod
    def subset(self, indices: np.ndarray) -> TileSet:
        """The same slide restricted to some of its tiles."""

    @abc.abstractmethod
    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Tiles ``start:stop`` and their 2 x 2 context, both (n, H, W, 3) uint8."""

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Consecutive chunks of at most ``size`` tiles; the next chunk is read in the background."""
        bounds = [(s, min(s + size, len(self))) for s in range(0, len(self), max(1, size))]
        if len(bounds) <= 1:
            for start, stop in bounds:
                yield self.read(start, stop)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.read, *bounds[0])
            for nxt in bounds[1:]:
                current = pending.result()
                pending = pool.submit(self.read, *nxt)
                yield current
            yield pending.result()


@dataclass
class InMemoryTiles(TileSet):
    """Tiles already in memory (tests, synthetic inputs, benchmarks)."""

    tiles: np.ndarray  # (N, H, W, 3) uint8
    context: np.ndarray  # (N, H, W, 3) uint8
    coords: np.ndarray
    tile_size: int
    name: str = ""

    def __post_init__(self) -> None:
        if self.tiles.shape != self.context.shape or len(self.tiles) != len(self.coords):
            raise ValueError(
                f"tiles {self.tiles.shape}, context {self.context.shape} and coords "
                f"{self.coords.shape} do not match"
            )

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tiles[start:stop], self.context[start:stop]

    def subset(self, indices: np.ndarray) -> InMemoryTiles:
        return InMemoryTiles(
            self.tiles[indices],
            self.context[indices],
            self.coords[indices],
            self.tile_size,
            self.name,
        )


@dataclass
class TileGrid:
    """The tissue tile grid of one slide at the model's resolution."""

    path: Path
    coords: np.ndarray  # (M, 2) int64 level-0
    tile_size: int  # level-0 px
    mpp: float


def tile_grid(
    path: str | os.PathLike, tile_px: int, target_mpp: float, mpp: float | None = None
) -> TileGrid:
    """Tissue tiles of ``tile_px`` pixels at ``target_mpp`` (through napari_hila.slides).

    ``mpp`` overrides or supplies the slide's pixel size, as in ``open_slide``.
    """
    with open_slide(path, mpp=mpp) as slide:
        tissue = detect_tissue(slide)
        grids = make_grids(
            slide, tissue, patch_px=tile_px, region_px=16 * tile_px, target_mpp=target_mpp
        )
        coords = np.asarray(grids.patch_coords, np.int64).reshape(-1, 2)
        if len(coords) == 0:
            raise SlideError(
                f"{path}: no tissue tiles found; check the slide is an H&E section with tissue "
                "(or lower the tissue threshold)"
            )
        return TileGrid(Path(path), coords, int(grids.patch_size), float(slide.mpp))


def sample_indices(n_total: int, n_sample: int, seed: int, *keys: int) -> np.ndarray:
    """Sorted indices of ``min(n_sample, n_total)`` distinct tiles; same keys, same tiles."""
    if n_sample <= 0 or n_sample >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng([seed, *keys])
    return np.sort(rng.choice(n_total, size=n_sample, replace=False)).astype(np.int64)


@dataclass
class SlideTiles(TileSet):
    """Tiles of one slide on disk, read through ``napari_hila.slides`` only when asked."""

    path: Path
    coords: np.ndarray
    tile_size: int
    tile_px: int  # pixels the model gets per tile
    origin: tuple[int, int] = (0, 0)  # grid origin, so 2 x 2 blocks align with the grid
    workers: int = 2
    _slide: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def subset(self, indices: np.ndarray) -> SlideTiles:
        return SlideTiles(
            self.path, self.coords[indices], self.tile_size, self.tile_px, self.origin, self.workers
        )

    def _open(self):
        if self._slide is None:
            self._slide = open_slide(self.path)
        return self._slide

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def context_origin(self, xy: np.ndarray) -> np.ndarray:
        """Top-left corner of the aligned 2 x 2 block holding each tile."""
        block = 2 * self.tile_size
        origin = np.asarray(self.origin, np.int64)
        return (xy - origin) // block * block + origin

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        slide = self._open()
        coords = self.coords[start:stop]
        blocks = self.context_origin(coords)

        def one(i: int) -> tuple[np.ndarray, np.ndarray]:
            tile = read_tile(slide, *coords[i], self.tile_size, self.tile_px)
            context = read_tile(slide, *blocks[i], 2 * self.tile_size, self.tile_px)
            return tile, context

        if self.workers > 1 and len(coords) > 1:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                pairs = list(pool.map(one, range(len(coords))))
        else:
            pairs = [one(i) for i in range(len(coords))]
        empty = np.zeros((0, self.tile_px, self.tile_px, 3), np.uint8)
        tiles = np.stack([p[0] for p in pairs]) if pairs else empty
        context = np.stack([p[1] for p in pairs]) if pairs else empty
        return tiles, context


@dataclass
class TileBatch:
    """One :class:`TileSet` per slide: the input of a ``inputs="tiles"`` model."""

    slides: list[TileSet]

    @property
    def batch_size(self) -> int:
        return len(self.slides)

    def to(self, device: torch.device | str) -> TileBatch:
        """Tiles move to the model's device chunk by chunk inside the model."""
        return self


@dataclass(frozen=True)
class SlideRef:
    """A slide handed to a model that reads its own tiles (the trainer's bag for such models)."""

    path: Path
    slide_id: str = ""
    mpp: float | None = None  # the user's pixel size when the file lacks it or has it wrong


def slide_key(name: str) -> int:
    """A stable per-slide number for seeding (CRC32 of the slide's file name)."""
    return zlib.crc32(name.encode())


def slide_tiles(
    path: str | os.PathLike,
    n_tiles: int,
    tile_px: int,
    target_mpp: float,
    seed: int = 0,
    epoch: int = 0,
    workers: int = 2,
    mpp: float | None = None,
) -> SlideTiles:
    """``n_tiles`` tissue tiles of one slide (all when it has fewer), fixed by (seed, epoch, slide)."""
    grid = cached_tile_grid(str(path), int(tile_px), float(target_mpp), _mtime(path), mpp)
    origin = tuple(int(v) for v in grid.coords.min(axis=0))
    every = SlideTiles(grid.path, grid.coords, grid.tile_size, int(tile_px), origin, workers)
    return every.subset(sample_indices(len(every), n_tiles, seed, epoch, slide_key(every.name)))


def tile_batch(
    slides: Sequence[TileSet | SlideRef | str | os.PathLike],
    n_tiles: int,
    tile_px: int,
    target_mpp: float,
    seed: int = 0,
    epoch: int = 0,
) -> TileBatch:
    """A :class:`TileBatch` of ``n_tiles`` tiles per slide (slide files or tile sets)."""
    sets: list[TileSet] = []
    for item in slides:
        if isinstance(item, TileSet):
            chosen = sample_indices(len(item), n_tiles, seed, epoch, slide_key(item.name))
            sets.append(item.subset(chosen))
        else:
            path = item.path if isinstance(item, SlideRef) else Path(item)
            mpp = item.mpp if isinstance(item, SlideRef) else None
            sets.append(slide_tiles(path, n_tiles, tile_px, target_mpp, seed, epoch, mpp=mpp))
    return TileBatch(sets)


def _mtime(path: str | os.PathLike) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError as err:
        raise SlideError(
            f"{path}: cannot read the slide ({err.strerror}); check the path"
        ) from None


@functools.lru_cache(maxsize=4096)
def cached_tile_grid(
    path: str, tile_px: int, target_mpp: float, mtime: float, mpp: float | None = None
) -> TileGrid:
    """:func:`tile_grid`, computed once per slide file version (positions only: a few KB)."""
    return tile_grid(path, tile_px, target_mpp, mpp)
