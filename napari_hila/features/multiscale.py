"""Patches at several magnifications from the same tissue (for CrossFusion).

The main grid (``features``/``coords``, 20x at 0.5 um/px by default) is
extracted as usual. Each coarser magnification (10x, 5x) gets its own grid of
``patch_px`` tiles that are 2x, 4x larger in level-0 px and aligned to the
main grid, so every main patch lies in exactly one coarse tile. A coarse tile
is kept when it contains a kept main patch, and is read from a pyramid level
when the file has one (otherwise level 0 is resampled). Stored as
``scales[name] = (features, coords)`` plus, in ``extras``,
``cross_scale_index_<name>``: for each main patch, the row of its coarse tile.
"""

from __future__ import annotations

import threading

import numpy as np

from napari_hila.errors import Cancelled, HilaError
from napari_hila.features.extract import encoded_batches
from napari_hila.features.store import SlideFeatures

#: um per pixel of a nominal "1x": 10x is 1.0 um/px, 20x is 0.5, 40x is 0.25.
MPP_AT_1X = 10.0


def parse_magnification(name: str) -> float:
    """'10x' -> 10.0, with a clear error for anything else."""
    text = str(name).strip().lower()
    try:
        value = float(text.removesuffix("x"))
    except ValueError:
        value = -1.0
    if not text.endswith("x") or value <= 0:
        raise HilaError(f"magnification {name!r} not understood; write it like 5x, 10x or 20x")
    return value


def magnification_name(mpp: float) -> str:
    """Nominal magnification of a grid at ``mpp`` um/px, e.g. 0.5 -> '20x'."""
    return f"{MPP_AT_1X / mpp:g}x"


def coarse_grid(main_coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned ``size`` px tiles covering the main patches (row-major) and each patch's tile."""
    cells = np.asarray(main_coords, np.int64) // size
    if not len(cells):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    width = int(cells[:, 0].max()) + 1
    keys, index = np.unique(cells[:, 1] * width + cells[:, 0], return_inverse=True)
    coords = np.stack([keys % width, keys // width], axis=1) * size
    return coords.astype(np.int64), index.reshape(-1).astype(np.int64)


def check_magnifications(names: tuple[str, ...], target_mpp: float) -> None:
    """Refuse, before any work, magnifications the main grid cannot provide."""
    main = MPP_AT_1X / target_mpp
    for name in names:
        mag = parse_magnification(name)
        factor = main / mag
        if mag > main * 1.001 or not np.isclose(factor, round(factor)):
            raise HilaError(
                f"magnification {name} cannot be built from the {magnification_name(target_mpp)} "
                f"grid: choose whole fractions of it (e.g. {main / 2:g}x, {main / 4:g}x) or "
                "lower --target-mpp"
            )


def add_magnifications(
    feats: SlideFeatures,
    slide,
    grids,
    encoder,
    names: tuple[str, ...],
    batch_size: int = 64,
    cancel: threading.Event | None = None,
) -> SlideFeatures:
    """Encode the coarser magnifications in ``names`` into ``feats.scales`` (in place)."""
    check_magnifications(names, grids.target_mpp)
    main = MPP_AT_1X / grids.target_mpp
    main_name = magnification_name(grids.target_mpp)
    for name in names:
        mag = parse_magnification(name)
        if np.isclose(mag, main):
            continue  # the main grid itself
        factor = main / mag
        size = grids.patch_size * int(round(factor))
        coords, index = coarse_grid(grids.patch_coords, size)
        parts = []
        for _, batch_features in encoded_batches(
            slide, coords, size, grids.patch_px, encoder, batch_size, stop=cancel
        ):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{slide.path}: extraction cancelled while encoding {name} patches")
            parts.append(batch_features)
        features = np.concatenate(parts) if parts else np.zeros((0, encoder.output_dim), np.float32)
        feats.scales[f"{mag:g}x"] = (features.astype(np.float32), coords)
        feats.extras[f"cross_scale_index_{mag:g}x"] = index
    feats.attrs["main_magnification"] = main_name
    feats.attrs["magnifications"] = ",".join(
        sorted({*feats.scales, main_name}, key=parse_magnification)
    )
    return feats
