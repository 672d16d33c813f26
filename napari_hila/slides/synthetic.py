"""Large pyramidal test slides made of real tissue, written tile by tile.

The pixels are the bundled H&E sample, mirrored into a seamless periodic
texture and laid out in jittered blocks inside a few tissue-shaped blobs on a
glass-white background. Every level is rendered from a resized copy of that
texture, so a 50,000 px slide is written with a few hundred MB of memory at
most, and the coarse levels look like the fine one.

Layouts: ``"svs"`` (Aperio: levels as top-level pages, thumbnail, label and
macro; OpenSlide reads all levels), ``"ome"`` (OME-TIFF, levels as SubIFDs;
OpenSlide sees one level), ``"flat"`` (one tiled level, no pyramid) and
``"pages"`` (reduced levels as top-level pages without the reduced flag).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_hila.io_utils import atomic_path
from napari_hila.slides.arrays import mean_2x2

LAYOUTS = ("svs", "ome", "flat", "pages")
_BLOCK = 1024  # level-0 px side of one jittered texture block
_GLASS = np.array([242, 241, 244], np.uint8)


class _TissueTexture:
    """Deterministic RGB content of the slide plane at any downsample."""

    def __init__(self, width: int, height: int, seed: int) -> None:
        from napari_hila.resources import sample_slide_path
        from napari_hila.slides.opener import open_slide

        with open_slide(sample_slide_path(), backend="tifffile") as sample:
            tile = sample.read_region((0, 0), 0, sample.dimensions)
        self._texture = tile  # mirrored at its edges by _reflect, so it tiles seamlessly
        # blocks start where the sample has tissue, so the blobs are mostly tissue
        from napari_hila.slides.tissue import tissue_from_rgb

        coarse = mean_2x2(mean_2x2(mean_2x2(mean_2x2(tile))))
        starts = np.argwhere(tissue_from_rgb(coarse, 16 * 0.5)) * 16
        self._starts = starts[
            (starts[:, 0] < tile.shape[0] - _BLOCK // 2)
            & (starts[:, 1] < tile.shape[1] - _BLOCK // 2)
        ]
        self._cache: dict[int, np.ndarray] = {}
        self.width, self.height, self.seed = width, height, seed
        self._mask = _blob_mask(width, height, seed)

    def _texture_at(self, downsample: int) -> np.ndarray:
        if downsample == 1:
            return self._texture
        if downsample not in self._cache:  # halve the next finer texture: cheap and cached
            self._cache[downsample] = mean_2x2(self._texture_at(downsample // 2))
        return self._cache[downsample]

    def render(self, downsample: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of the box (x, y, w, h) of the level with this downsample."""
        tex = self._texture_at(downsample)
        th, tw = tex.shape[:2]
        xs = np.arange(x, x + w, dtype=np.int64) * downsample
        ys = np.arange(y, y + h, dtype=np.int64) * downsample
        bx, by = xs // _BLOCK, ys // _BLOCK
        key = (bx[None, :] * 73856093) ^ (by[:, None] * 19349663) ^ (self.seed * 83492791)
        key = (key * 2654435761) & 0xFFFFFFFF
        start = self._starts[key % len(self._starts)]
        off_y = start[..., 0] // downsample  # same place in the texture at every level
        off_x = start[..., 1] // downsample
        iy = _reflect((ys[:, None] - by[:, None] * _BLOCK) // downsample + off_y, th)
        ix = _reflect((xs[None, :] - bx[None, :] * _BLOCK) // downsample + off_x, tw)
        out = tex[iy, ix]
        mh, mw = self._mask.shape
        my = np.minimum(ys * mh // self.height, mh - 1)
        mx = np.minimum(xs * mw // self.width, mw - 1)
        glass = ~self._mask[my[:, None], mx[None, :]]
        out[glass] = _GLASS
        return out


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer index onto 0..n-1 by mirroring at the edges (period 2n)."""
    index = index % (2 * n)
    return np.where(index >= n, 2 * n - 1 - index, index)


def _blob_mask(width: int, height: int, seed: int, cells: int = 256) -> np.ndarray:
    """A coarse boolean mask of a few overlapping ellipses (the tissue pieces)."""
    rng = np.random.default_rng(seed)
    scale = cells / max(width, height)
    mh, mw = max(1, round(height * scale)), max(1, round(width * scale))
    yy, xx = np.mgrid[0:mh, 0:mw]
    mask = np.zeros((mh, mw), bool)
    for _ in range(4):
        cy, cx = rng.uniform(0.25, 0.75) * mh, rng.uniform(0.25, 0.75) * mw
        ry, rx = rng.uniform(0.15, 0.3) * mh, rng.uniform(0.15, 0.3) * mw
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


def _tiles(
    texture: _TissueTexture, downsample: int, width: int, height: int, tile: int
) -> Iterator[np.ndarray]:
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            yield texture.render(downsample, x, y, tile, tile)


def level_sizes(
    width: int, height: int, factor: int, min_side: int = 1024
) -> list[tuple[int, int, int]]:
    """(downsample, width, height) of each level until the coarsest fits ``min_side``."""
    levels = [(1, width, height)]
    while max(levels[-1][1:]) > min_side:
        d = levels[-1][0] * factor
        levels.append((d, width // d, height // d))
    return levels


def write_test_slide(
    path: str | os.PathLike,
    width: int = 50_000,
    height: int = 50_000,
    layout: str = "svs",
    mpp: float | None = 0.25,
    tile: int = 256,
    quality: int = 90,
    seed: int = 0,
) -> Path:
    """Write a pyramidal test slide of real tissue to ``path`` (atomically).

    ``mpp=None`` writes no pixel size at all (for the "assumed mpp" path).
    Memory stays at a few tiles plus the resized sample texture.
    """
    import tifffile

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    texture = _TissueTexture(width, height, seed)
    factor = 4 if layout == "svs" else 2
    levels = level_sizes(width, height, factor) if layout != "flat" else [(1, width, height)]
    options = dict(
        tile=(tile, tile),
        compression="jpeg",
        compressionargs={"level": quality},
        photometric="rgb",
        dtype=np.uint8,
    )
    bigtiff = width * height * 3 > 2**31
    path = Path(path)
    with (
        atomic_path(path) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=layout == "ome") as tif,
    ):
        if layout == "svs":
            _write_svs(tif, texture, levels, mpp, tile, options)
        elif layout == "ome":
            meta = {"axes": "YXS"}
            if mpp is not None:
                meta.update(
                    PhysicalSizeX=mpp,
                    PhysicalSizeY=mpp,
                    PhysicalSizeXUnit="µm",
                    PhysicalSizeYUnit="µm",
                )
            for i, (d, w, h) in enumerate(levels):
                tif.write(
                    _tiles(texture, d, w, h, tile),
                    shape=(h, w, 3),
                    metadata=meta if i == 0 else None,
                    subifds=len(levels) - 1 if i == 0 else None,
                    subfiletype=1 if i else 0,
                    **_resolution(mpp, d),
                    **options,
                )
        else:  # "flat" and "pages": plain tiled TIFF, reduced levels not flagged
            for d, w, h in levels:
                tif.write(
                    _tiles(texture, d, w, h, tile),
                    shape=(h, w, 3),
                    metadata=None,
                    **_resolution(mpp, d),
                    **options,
                )
    return path


def _resolution(mpp: float | None, downsample: int) -> dict:
    if mpp is None:
        return {"resolution": None, "resolutionunit": "NONE"}
    per_cm = 1e4 / (mpp * downsample)
    return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}


def _write_svs(tif, texture: _TissueTexture, levels, mpp, tile, options) -> None:
    """Aperio layout: level 0, thumbnail strip, reduced levels, label, macro."""
    from napari_hila.resources import sample_slide_path
    from napari_hila.slides.opener import open_slide

    _, width, height = levels[0]
    fields = ["Filename = napari-hila-synthetic"]
    if mpp is not None:
        fields += [f"AppMag = {round(10 / mpp)}", f"MPP = {mpp:.4f}"]
    head = f"Aperio Image Library v12.0.0 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q=90"
    description = "|".join([head, *fields])
    d0, w0, h0 = levels[0]
    tif.write(
        _tiles(texture, d0, w0, h0, tile),
        shape=(h0, w0, 3),
        description=description,
        metadata=None,
        **options,
    )
    coarse_d, coarse_w, coarse_h = levels[-1]
    coarse = texture.render(coarse_d, 0, 0, coarse_w, coarse_h)
    thumb_scale = 768 / max(coarse_w, coarse_h)
    from napari_hila.slides.base import resize_to_max_side

    thumb = resize_to_max_side(coarse, 768) if thumb_scale < 1 else coarse
    tif.write(
        thumb,
        description=f"Aperio Image Library v12.0.0 \r\n{width}x{height} -> "
        f"{thumb.shape[1]}x{thumb.shape[0]} - |" + "|".join(fields),
        metadata=None,
        compression="jpeg",
        photometric="rgb",
    )
    for d, w, h in levels[1:]:
        tif.write(
            _tiles(texture, d, w, h, tile),
            shape=(h, w, 3),
            metadata=None,
            description=f"Aperio Image Library v12.0.0 \r\n{width}x{height} -> {w}x{h} - |"
            + "|".join(fields),
            **options,
        )
    with open_slide(sample_slide_path(), backend="openslide") as sample:
        for name, subfiletype in (("label", 1), ("macro", 9)):
            image = sample.read_associated(name)
            tif.write(
                image,
                description=f"Aperio Image Library v12.0.0\r\n{name} "
                f"{image.shape[1]}x{image.shape[0]}",
                subfiletype=subfiletype,
                metadata=None,
                compression="lzw" if name == "label" else "jpeg",
                photometric="rgb",
            )


def default_cache_dir() -> Path:
    """Where generated benchmark slides are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-hila" / "slides"


def cached_test_slide(
    width: int,
    height: int,
    layout: str = "svs",
    mpp: float | None = 0.25,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A generated slide of this size and layout, written once and then reused."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    mpp_tag = "nompp" if mpp is None else f"{mpp:g}"
    suffix = ".ome.tif" if layout == "ome" else (".svs" if layout == "svs" else ".tif")
    path = folder / f"synthetic-{layout}-{width}x{height}-{mpp_tag}{suffix}"
    if not path.exists():
        write_test_slide(path, width, height, layout=layout, mpp=mpp)
    return path


def expected_level_count(width: int, height: int, layout: str) -> int:
    """How many levels :func:`write_test_slide` writes for this size and layout."""
    if layout == "flat":
        return 1
    return len(level_sizes(width, height, 4 if layout == "svs" else 2))
