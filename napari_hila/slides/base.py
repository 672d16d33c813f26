"""The backend-independent part of a slide: the contract every backend fulfils.

A backend supplies the file's levels as lazy dask arrays and a native region
reader; this class adds what is the same everywhere: white outside the image,
extra coarse levels for slides without a pyramid, thumbnails, the fingerprint.
"""

from __future__ import annotations

import abc
import hashlib
import math
import os
from collections.abc import Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_hila.slides.arrays import LevelArray, MemoizedLevel, Progress, as_dask, halved, memoized
from napari_hila.slides.dicom import dicom_instances, is_dicom_path

if TYPE_CHECKING:
    import dask.array as da

#: mpp used when the file does not say; flagged with ``mpp_is_assumed``.
ASSUMED_MPP = 0.5
#: Pixel sizes (um/px at level 0) taken as real: 0.05 is beyond any 100x
#: objective, 20 a 0.5x overview; a value outside is a typo (mm or nm, px/um)
#: or an image writer's default resolution (72 dpi is 352.8 um/px).
MPP_RANGE = (0.05, 20.0)
#: Extra coarse levels are added until the coarsest one is at most this wide.
MAX_COARSEST_SIDE = 2048
#: Bytes hashed from each of the start, middle and end of the file.
_FINGERPRINT_CHUNK = 1 << 16
#: Reduced reads (thumbnail, tissue view) fetch the source level in blocks of at
#: most this many px a side, so peak memory is a few blocks plus the output.
REDUCE_BLOCK = 1024
#: A level is "fine enough" for a wanted downsample up to 1% above it. A file's
#: downsamples are ratios of whole level sizes, so the level standing for 4x on a
#: 99,999 px slide (24,999 px) is 4.00016x: without the slack a 4x read would skip
#: it and read level 0, 16 times the pixels, for an image at most 1% sharper.
LEVEL_TOLERANCE = 1.01


def pick_level(downsamples: Sequence[float], wanted: float) -> int:
    """Index of the level to read for ``wanted`` level-0 px per output px.

    The coarsest level whose downsample is at most ``wanted * LEVEL_TOLERANCE``,
    so the read is never coarser than asked beyond the 1% slack (the caller then
    reduces it, or enlarges it by at most 1%); 0 when every level is coarser
    (``wanted`` below 1: level 0 is enlarged). ``downsamples`` are finest first:
    ``Slide.level_downsamples`` for :meth:`Slide.read_region` levels (a cut
    file's list ends at its last whole level), ``Slide.pyramid_downsamples()``
    for :meth:`Slide.level_arrays` (the file's levels, then computed ones).
    Every reader that picks a level (tiles, thumbnails, the viewer's exports,
    reduced whole-slide reads) picks it here.
    """
    limit = wanted * LEVEL_TOLERANCE
    fine_enough = [i for i, d in enumerate(downsamples) if d <= limit]
    return fine_enough[-1] if fine_enough else 0


def file_pixel_size(mpp: float | None, origin: str) -> tuple[float | None, str]:
    """The file's pixel size if a microscope could have it, else None and the reason.

    Image writers put 72 dpi (352.8 um/px) in resolution tags by default; read
    as microns, that gives a grid of 1 px patches. A value outside
    ``MPP_RANGE`` is treated as no pixel size at all, as ``--mpp`` would refuse it.
    """
    if mpp is None or not math.isfinite(mpp) or mpp <= 0:
        return None, "the file does not record its pixel size"
    low, high = MPP_RANGE
    if low <= mpp <= high:
        return float(mpp), ""
    dpi = 25400.0 / mpp
    return None, (
        f"the file's {origin or 'metadata'} say {mpp:.4g} um/px ({dpi:.4g} dpi), which no "
        f"microscope scans at ({low:g}-{high:g} um/px): an image writer's default, not a pixel size"
    )


def assumed_mpp_message(slide: Slide, fix: str) -> str | None:
    """What to tell a user whose slide does not record its pixel size (None when it does).

    ``fix`` says where to give the scanner's value: the dock's field or ``--mpp``.
    """
    if not slide.mpp_is_assumed:
        return None
    return (
        f"{slide.path}: {slide.mpp_note}; assuming {slide.mpp} um/px (20x). Lengths, "
        f"the scale bar and the patch grid depend on it: {fix}."
    )


class Slide(abc.ABC):
    """One whole-slide image opened read-only; see docs/ARCHITECTURE.md."""

    backend: str = ""
    #: Build computed levels from reduced tile decodes (JPEG: DCT scaling) where the
    #: backend can; False keeps 2 x 2 means of full decodes (the reference the bench
    #: compares against). Read when the levels are first built.
    reduced_decode: bool = True

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        level_dimensions: list[tuple[int, int]],
        level_downsamples: list[float],
        tile_size: tuple[int, int],
        mpp: float | None,
        mpp_origin: str = "",
        objective_power: float | None,
        vendor: str,
        properties: dict[str, str],
        associated_image_names: list[str],
    ) -> None:
        self.path = Path(path)
        self.level_dimensions = [(int(w), int(h)) for w, h in level_dimensions]
        self.level_downsamples = [float(d) for d in level_downsamples]
        self.tile_size = (int(tile_size[0]), int(tile_size[1]))
        file_mpp, why = file_pixel_size(mpp, mpp_origin)
        self.mpp_is_assumed = file_mpp is None
        self.mpp = ASSUMED_MPP if file_mpp is None else file_mpp
        #: Where ``mpp`` came from: "file", "assumed" (``ASSUMED_MPP``) or "user".
        self.mpp_source = "assumed" if self.mpp_is_assumed else "file"
        #: Why: the metadata it was read from ("Aperio MPP", "TIFF resolution tags"),
        #: or why the file's value was not taken.
        self.mpp_note = why or f"from the file's {mpp_origin or 'metadata'}"
        #: Messages for the user about the file (a lost label, damaged metadata).
        self.open_warnings: list[str] = []
        self.objective_power = objective_power
        self.vendor = vendor
        self.properties = dict(properties)
        self.associated_image_names = list(associated_image_names)

    # -- what a backend provides -------------------------------------------------
    @abc.abstractmethod
    def _read_level_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of a box that lies inside ``level``, in that level's pixels."""

    def _stream_level_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Like :meth:`_read_level_box`, for a single pass over a whole level.

        Backends with a tile cache override it to decode without filling that cache.
        """
        return self._read_level_box(level, x, y, w, h)

    def _reduced_level(self, level: int, scale: int) -> LevelArray | None:
        """``level`` at 1/``scale`` (2, 4 or 8) from reduced tile decodes, or None.

        Each pixel is (an estimate of) the mean of ``scale`` x ``scale`` pixels
        of ``level``; the size is floor(level size / scale). Backends that can
        decode tiles at reduced size override this; None means "average the
        finer level".
        """
        return None

    @abc.abstractmethod
    def read_associated(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail) as (h, w, 3) uint8."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file handle."""

    # -- shared behaviour ---------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """(h, w, 3) uint8 pixels of ``level``; ``location`` is level-0 (x, y).

        Parts outside the image are white, as OpenSlide paints them. On a
        reduced level a location between that level's pixels snaps down to its
        grid: the box starts at level pixel floor(x / downsample) (floor for
        negative locations too), and every pixel is the file's own. OpenSlide
        instead shifts by the fraction and interpolates, so off-grid reads equal
        OpenSlide's read at the snapped location, not at ``location``.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(
                f"{self.path}: level {level} does not exist (0..{self.level_count - 1})"
            )
        w, h = int(size[0]), int(size[1])
        if w < 0 or h < 0:
            raise ValueError(f"region size must be non-negative, got {size}")
        ds = self.level_downsamples[level]
        lx, ly = int(math.floor(location[0] / ds)), int(math.floor(location[1] / ds))
        lw, lh = self.level_dimensions[level]
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lw), min(ly + h, lh)
        if (x0, y0, x1, y1) == (lx, ly, lx + w, ly + h) and w and h:  # all inside: no copy
            return self._read_level_box(level, lx, ly, w, h)
        out = np.full((h, w, 3), 255, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read_level_box(
                level, x0, y0, x1 - x0, y1 - y0
            )
        return out

    @cached_property
    def _level_views(self) -> tuple[list[LevelArray], list[float]]:
        arrays = [
            LevelArray(partial(self._read_level_box, i), w, h)
            for i, (w, h) in enumerate(self.level_dimensions)
        ]
        downsamples = list(self.level_downsamples)
        coarsest, scale = len(arrays) - 1, 1
        while max(arrays[-1].shape[:2]) > MAX_COARSEST_SIDE:
            scale *= 2
            reduced = self._reduced_level(coarsest, scale) if self.reduced_decode else None
            arrays.append(reduced if reduced is not None else halved(arrays[-1]))
            downsamples.append(downsamples[-1] * 2)
        if len(arrays) > self.level_count:  # computed overview: once, then from disk
            from napari_hila.slides import overview_cache

            method = "dct" if self.reduced_decode else "mean"
            key = overview_cache.overview_key(
                self.fingerprint(), len(arrays) - 1, arrays[-1].shape, method
            )
            arrays[-1] = memoized(
                arrays[-1],
                load=partial(overview_cache.load_overview, key, arrays[-1].shape),
                save=partial(overview_cache.save_overview, key),
            )
        return arrays, downsamples

    def overview_pending(self) -> bool:
        """True when showing the slide first needs its overview computed (seconds).

        Only slides without a pyramid have a computed overview; once computed it
        is held and cached on disk, so this is False on every later open.
        """
        coarsest = self._level_views[0][-1]
        return isinstance(coarsest, MemoizedLevel) and not coarsest.is_ready()

    def compute_overview(self, progress: Progress | None = None) -> None:
        """Compute (or load) the computed overview now, reporting ``progress(done, total)``."""
        coarsest = self._level_views[0][-1]
        if isinstance(coarsest, MemoizedLevel):
            coarsest.compute(progress)

    def level_arrays(self) -> list[LevelArray]:
        """The slide's pyramid, one (h, w, 3) uint8 array-like per level, finest first.

        The one pyramid: the file's own levels first; a slide whose coarsest level
        is wider than ``MAX_COARSEST_SIDE`` gets extra levels computed lazily (1/2,
        1/4, 1/8 from reduced tile decodes where the backend can, coarser ones by
        2x2 averaging), so napari and the tissue detector never load a
        full-resolution image. Plain array-likes that read on slicing: this is
        what napari gets, with no task graph between a pan and a tile decode.
        :meth:`pyramid_downsamples` gives each level's downsample.
        """
        return list(self._level_views[0])

    @cached_property
    def _pyramid(self) -> list[da.Array]:
        key = self.fingerprint()
        return [
            as_dask(array, self.tile_size, name=f"slide-{self.backend}-{key}-{i}")
            for i, array in enumerate(self._level_views[0])
        ]

    def pyramid(self) -> list[da.Array]:
        """The same levels as :meth:`level_arrays`, as dask arrays chunked at the tile size.

        For dask users (map_blocks, distributed reads); napari is given
        :meth:`level_arrays`, which skips the task graph.
        """
        return list(self._pyramid)

    def pyramid_downsamples(self) -> list[float]:
        """Downsample of each array of :meth:`pyramid` relative to level 0."""
        return list(self._level_views[1])

    def read_reduced(self, downsample: float) -> tuple[np.ndarray, float]:
        """The whole slide at about ``downsample`` (level-0 px per px), and the exact downsample.

        Picks the pyramid level with :func:`pick_level`, then box-averages it by
        the integer factor nearest to what is left, block by block into the output,
        so nothing much larger than the result is ever held (an 80,000 px slide's
        8 um/px view costs the same few MB of reads per block as a 20,000 px one).
        """
        index = pick_level(self.pyramid_downsamples(), max(downsample, 1.0))
        level = self.level_arrays()[index]
        if index < self.level_count:  # a file level: one pass that need not be cached
            level = LevelArray(
                partial(self._stream_level_box, index), *self.level_dimensions[index]
            )
        level_ds = self.pyramid_downsamples()[index]
        h, w = level.shape[:2]
        factor = min(max(1, round(downsample / level_ds)), max(1, min(h, w)))  # >= 1 px out
        out = reduce_level(level, factor)
        w0, h0 = self.dimensions
        actual = max(w0 / out.shape[1], h0 / out.shape[0])
        return out, actual

    def get_thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """An RGB overview whose longer side is at most ``max_side`` px."""
        w0, h0 = self.dimensions
        downsample = max(w0, h0) / max_side
        image, _ = self.read_reduced(max(downsample / 2, 1.0))  # about 2x, then box-resized
        return resize_to_max_side(image, max_side)

    def fingerprint(self) -> str:
        """A stable, cheap identity of the slide's content (the feature-cache key).

        Hashes the file size, level-0 size and 64 KiB from the start, middle
        and end of the file, so it does not depend on the file's name, place or
        backend and costs the same for a 100 MB or a 10 GB slide.
        """
        return _file_fingerprint(self.path, self.dimensions)

    def describe_levels(self) -> list[dict[str, Any]]:
        """Per-level dimensions and downsamples, JSON-ready."""
        return [
            {"level": i, "width": w, "height": h, "downsample": round(d, 4)}
            for i, ((w, h), d) in enumerate(
                zip(self.level_dimensions, self.level_downsamples, strict=True)
            )
        ]

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"<{type(self).__name__} {self.path.name} {w}x{h} levels={self.level_count} "
            f"mpp={self.mpp:.4g}{' (assumed)' if self.mpp_is_assumed else ''} backend={self.backend}>"
        )


def reduce_level(level: LevelArray, factor: int) -> np.ndarray:
    """``level`` box-averaged by ``factor`` (floor of its size / factor), read in blocks.

    Blocks of about ``REDUCE_BLOCK`` px are read and reduced on two threads (the
    decoders release the GIL), each straight into its place in the output.
    """
    from concurrent.futures import ThreadPoolExecutor

    h, w = level.shape[0] // factor, level.shape[1] // factor
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, REDUCE_BLOCK // factor)  # output px per block side

    def fill(box: tuple[int, int]) -> None:
        oy, ox = box
        bh, bw = min(step, h - oy), min(step, w - ox)
        block = level[oy * factor : (oy + bh) * factor, ox * factor : (ox + bw) * factor]
        out[oy : oy + bh, ox : ox + bw] = mean_kxk(block, factor)

    boxes = [(oy, ox) for oy in range(0, h, step) for ox in range(0, w, step)]
    if len(boxes) <= 1:
        for box in boxes:
            fill(box)
    else:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="hila-reduce") as pool:
            list(pool.map(fill, boxes))
    return out


def mean_kxk(image: np.ndarray, k: int) -> np.ndarray:
    """Rounded mean of each k x k block of an (h, w, 3) uint8 image (k divides the shape)."""
    if k == 1:
        return np.ascontiguousarray(image)
    h, w = image.shape[0] // k, image.shape[1] // k
    total = np.zeros((h, w * k, 3), np.uint32)
    for dy in range(k):  # whole rows first: k adds of a 1/k-height uint32 buffer
        total += image[dy : h * k : k, : w * k]
    summed = total.reshape(h, w, k, 3).sum(axis=2, dtype=np.uint32)
    summed += (k * k) // 2
    summed //= k * k
    return summed.astype(np.uint8)


def resize_to_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Area-average (box filter) ``image`` down so its longer side is at most ``max_side``."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(shape, Image.Resampling.BOX))


def _file_fingerprint(path: Path, dimensions: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    if is_dicom_path(path):  # one series, whichever instance was opened
        instances = dicom_instances(path.parent)
        for part in instances:
            digest.update(f"{part.name}|{part.stat().st_size}|".encode())
        path = instances[0] if instances else path
    size = path.stat().st_size
    digest.update(f"napari-hila-slide-v1|{size}|{dimensions[0]}x{dimensions[1]}|".encode())
    if path.suffix.lower() == ".mrxs":  # MIRAX: the pixels live in the folder beside it
        folder = path.with_suffix("")
        if folder.is_dir():
            for part in sorted(folder.iterdir()):
                digest.update(f"{part.name}|{part.stat().st_size}|".encode())
    with open(path, "rb") as fh:
        for offset in (
            0,
            max(0, size // 2 - _FINGERPRINT_CHUNK // 2),
            max(0, size - _FINGERPRINT_CHUNK),
        ):
            fh.seek(offset)
            digest.update(fh.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()[:32]
