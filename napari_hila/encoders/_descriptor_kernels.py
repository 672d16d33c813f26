"""Compiled inner loops of the H&E descriptor: neighbourhood filters and gradients.

Each torch operation streams a whole batch through memory, and the descriptor's
box filters, peak finding and gradient statistics need dozens of them per
pixel. Here each is one pass per tile row, compiled by numba, releasing the
GIL so reader threads run them in parallel.

The discrete results (nucleus counts, the smoothed nuclear mask) must be the
ones the torch formulation gives, so the arithmetic is the same: running sums
accumulated in float64 and stored as float32 (what ``torch.cumsum`` does on
the CPU), window sums as float32 differences, means as float32 divisions.
Continuous statistics accumulate in float64 (at least as accurate as torch).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_KERNEL = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**_KERNEL)
def _window_counts(n: int, size: int) -> np.ndarray:
    r = size // 2
    out = np.empty(n, np.float32)
    for i in range(n):
        out[i] = np.float32(min(i + r, n - 1) - max(i - r, 0) + 1)
    return out


@njit(**_KERNEL)
def box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Separable centred box mean of odd ``size`` on (N, H, W) float32: rows, then columns.

    Windows are cut at the edges. Running sums carry ``r + 1`` zeros before and
    ``r`` copies of the total after, so every window is one float32 difference.
    """
    n, h, w = x.shape
    r = size // 2
    count_w, count_h = _window_counts(w, size), _window_counts(h, size)
    rows = np.empty((h, w), np.float32)
    out = np.empty((n, h, w), np.float32)
    line = np.zeros(w + 2 * r + 1, np.float32)
    running = np.zeros((h + 2 * r + 1, w), np.float32)
    acc = np.zeros(w, np.float64)
    for t in range(n):
        for i in range(h):
            total = 0.0
            for j in range(w):
                total += x[t, i, j]
                line[r + 1 + j] = np.float32(total)
            for j in range(r):
                line[r + 1 + w + j] = np.float32(total)
            for j in range(w):
                rows[i, j] = (line[j + size] - line[j]) / count_w[j]
        # the same along columns, all columns at once, row by row
        acc[:] = 0.0
        for i in range(h):
            for j in range(w):
                acc[j] += rows[i, j]
                running[r + 1 + i, j] = np.float32(acc[j])
        for i in range(r):
            for j in range(w):
                running[r + 1 + h + i, j] = np.float32(acc[j])
        for i in range(h):
            for j in range(w):
                out[t, i, j] = (running[i + size, j] - running[i, j]) / count_h[i]
    return out


@njit(**_KERNEL)
def blob_counts(
    h: np.ndarray, inner: int, outer: int, threshold: float, floor: float
) -> np.ndarray:
    """Local maxima (3 x 3) of box(inner) - box(outer) above ``threshold``, where
    box(inner) > ``floor``, per tile of (N, H, W) float32."""
    centre = box_mean(h, inner)
    response = centre - box_mean(h, outer)
    n, rows, cols = h.shape
    thr, flo = np.float32(threshold), np.float32(floor)
    row_max = np.empty((rows, cols), np.float32)
    out = np.zeros(n, np.float32)
    for t in range(n):
        resp = response[t]
        # 3 x 3 maximum, separably: along rows, then along columns
        for i in range(rows):
            row_max[i, 0] = max(resp[i, 0], resp[i, 1])
            for j in range(1, cols - 1):
                row_max[i, j] = max(max(resp[i, j - 1], resp[i, j]), resp[i, j + 1])
            row_max[i, cols - 1] = max(resp[i, cols - 2], resp[i, cols - 1])
        found = 0
        for i in range(rows):
            above, below = max(i - 1, 0), min(i + 1, rows - 1)
            for j in range(cols):
                v = resp[i, j]
                best = max(max(row_max[above, j], row_max[i, j]), row_max[below, j])
                if v == best and v > thr and centre[t, i, j] > flo:
                    found += 1
        out[t] = found
    return out


@njit(**_KERNEL)
def count_above(x: np.ndarray, size: int, level: float) -> np.ndarray:
    """Pixels per tile whose box(size) mean exceeds ``level``."""
    smooth = box_mean(x, size)
    n = x.shape[0]
    lev = np.float32(level)
    out = np.zeros(n, np.float32)
    for t in range(n):
        out[t] = np.sum(smooth[t] > lev)
    return out


@njit(**_KERNEL)
def green_gradient_energy(tiles: np.ndarray) -> np.ndarray:
    """Mean |horizontal| + mean |vertical| neighbour difference of the green channel
    of (N, H, W, 3) uint8 tiles, over the (H-1) x (W-1) top-left block, / 255."""
    n, h, w, _ = tiles.shape
    out = np.empty(n, np.float32)
    for t in range(n):
        sx = 0
        sy = 0
        for i in range(h - 1):
            for j in range(w - 1):
                g = np.int32(tiles[t, i, j, 1])
                sx += abs(np.int32(tiles[t, i, j + 1, 1]) - g)
                sy += abs(np.int32(tiles[t, i + 1, j, 1]) - g)
        area = (h - 1) * (w - 1)
        out[t] = (sx / area + sy / area) / 255.0
    return out


@njit(**_KERNEL)
def gradient_stats(x: np.ndarray) -> np.ndarray:
    """Per tile of (N, H, W) float32: mean gradient magnitude and orientation anisotropy
    (structure tensor averaged over the tile: 0 isotropic, 1 one direction)."""
    n, h, w = x.shape
    out = np.empty((n, 2), np.float32)
    area = (h - 1) * (w - 1)
    for t in range(n):
        energy = 0.0
        jxx = 0.0
        jyy = 0.0
        jxy = 0.0
        for i in range(h - 1):
            for j in range(w - 1):
                gx = x[t, i, j + 1] - x[t, i, j]
                gy = x[t, i + 1, j] - x[t, i, j]
                energy += np.sqrt(np.float64(gx) * gx + np.float64(gy) * gy)
                jxx += np.float64(gx) * gx
                jyy += np.float64(gy) * gy
                jxy += np.float64(gx) * gy
        jxx /= area
        jyy /= area
        jxy /= area
        out[t, 0] = energy / area
        out[t, 1] = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / max(jxx + jyy, 1e-8)
    return out


@njit(**_KERNEL)
def laplacian_energy(x: np.ndarray) -> np.ndarray:
    """Mean |4-neighbour Laplacian| over the interior of each (H, W) float32 tile."""
    n, h, w = x.shape
    out = np.empty(n, np.float32)
    for t in range(n):
        acc = 0.0
        for i in range(1, h - 1):
            for j in range(1, w - 1):
                lap = (x[t, i - 1, j] + x[t, i + 1, j] + x[t, i, j - 1] + x[t, i, j + 1]) - 4 * x[
                    t, i, j
                ]
                acc += abs(lap)
        out[t] = acc / ((h - 2) * (w - 2))
    return out


@njit(**_KERNEL)
def pixel_planes(
    rgb: np.ndarray, od_lut: np.ndarray, hed_from_rgb: np.ndarray, background_od: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel planes of (N, H, W, 3) uint8 tiles in one pass.

    Returns planes (N, 5, H, W) float32 - gray, haematoxylin, eosin, residual
    stain, tissue (0/1) - and the mean optical density per channel (N, 3).
    Optical density comes from ``od_lut`` (the 256 values torch computes);
    stain concentrations are r*M0 + g*M1 + b*M2 as a fused multiply-add chain,
    which is what torch's matrix product gives on this data (tested on every
    one of the 2^24 colours), clamped at 0.
    """
    n, h, w, _ = rgb.shape
    planes = np.empty((n, 5, h, w), np.float32)
    od_means = np.empty((n, 3), np.float32)
    third = np.float32(3.0)
    scale = np.float32(255.0)
    zero = np.float32(0.0)
    bg = np.float32(background_od)
    m = hed_from_rgb.astype(np.float64)
    for t in range(n):
        sr = 0.0
        sg = 0.0
        sb = 0.0
        for i in range(h):
            for j in range(w):
                r, g, b = rgb[t, i, j, 0], rgb[t, i, j, 1], rgb[t, i, j, 2]
                xr = np.float32(r) / scale
                xg = np.float32(g) / scale
                xb = np.float32(b) / scale
                planes[t, 0, i, j] = ((xr + xg) + xb) / third
                odr, odg, odb = od_lut[r], od_lut[g], od_lut[b]
                for s in range(3):
                    first = np.float32(np.float64(odr) * m[0, s])
                    second = np.float32(np.float64(odg) * m[1, s] + np.float64(first))
                    value = np.float32(np.float64(odb) * m[2, s] + np.float64(second))
                    planes[t, 1 + s, i, j] = max(value, zero)
                planes[t, 4, i, j] = np.float32(1.0) if (odr + odg) + odb > bg else zero
                sr += odr
                sg += odg
                sb += odb
        area = h * w
        od_means[t, 0] = sr / area
        od_means[t, 1] = sg / area
        od_means[t, 2] = sb / area
    return planes, od_means


@njit(**_KERNEL)
def halve(tiles: np.ndarray) -> np.ndarray:
    """2 x 2 mean of (N, H, W, 3) uint8 tiles (H, W even), rounded half up:
    the values of PIL's ``Image.reduce(2)``."""
    n, h, w, c = tiles.shape
    out = np.empty((n, h // 2, w // 2, c), np.uint8)
    for t in range(n):
        for i in range(h // 2):
            for j in range(w // 2):
                for k in range(c):
                    total = (
                        np.int32(tiles[t, 2 * i, 2 * j, k])
                        + np.int32(tiles[t, 2 * i, 2 * j + 1, k])
                        + np.int32(tiles[t, 2 * i + 1, 2 * j, k])
                        + np.int32(tiles[t, 2 * i + 1, 2 * j + 1, k])
                    )
                    out[t, i, j, k] = (total + 2) >> 2
    return out
