"""The H&E descriptor's computation, compiled: one tile at a time, a few passes each.

Written as torch operations, the descriptor streamed each batch through memory
about 170 times per pixel; here each tile is a few row-by-row passes compiled
by numba, which release the GIL so reader threads run them in parallel.

The values are those of the torch formulation (descriptor v2) because the
arithmetic is the same where a result is discrete (nucleus counts, masks,
histogram bins) or cancels (local contrast):

- running sums accumulate in float64 and are stored as float32, as
  ``torch.cumsum`` does on the CPU; window sums are float32 differences;
- pooled means add float32 values in row-major order and divide, as
  ``avg_pool2d`` does;
- optical density comes from a table of torch's own 256 values, and the stain
  projection is the fused multiply-add chain torch's matrix product gives
  (checked on all 2^24 colours);
- the 2 x 2 reduction rounds half up, as PIL's ``reduce(2)``.

Means and deviations accumulate in float64, at least as accurate as torch.
The oracles in tests/test_descriptor_kernels.py are the torch formulations.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from napari_hila.encoders.descriptor import (
    BACKGROUND_OD,
    DESCRIPTOR_DIM,
    GRAY_EDGES,
    NUCLEAR_H,
    STAIN_EDGES,
)

_KERNEL = {"cache": True, "nogil": True, "error_model": "numpy"}
# Sums of continuous statistics may be reordered (and so vectorised): they are
# float64 accumulators, far below float32 rounding either way. Never used where
# a result is discrete or is compared with a threshold.
_REDUCTION = {**_KERNEL, "fastmath": {"reassoc"}}


@njit(inline="always", **_KERNEL)
def _half(tile: np.ndarray, i: int, j: int, k: int) -> np.uint8:
    """Channel k of pixel (i, j) of the tile at half size: the 2 x 2 mean rounded half
    up, the value PIL's ``Image.reduce(2)`` gives."""
    total = (
        np.int32(tile[2 * i, 2 * j, k])
        + np.int32(tile[2 * i, 2 * j + 1, k])
        + np.int32(tile[2 * i + 1, 2 * j, k])
        + np.int32(tile[2 * i + 1, 2 * j + 1, k])
    )
    return np.uint8((total + 2) >> 2)


@njit(**_KERNEL)
def pixel_planes(
    tile: np.ndarray, od_lut: np.ndarray, hed_from_rgb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Planes (5, H/2, W/2) float32 of an (H, W, 3) uint8 tile seen at half size -
    gray, haematoxylin, eosin, residual stain, tissue (0/1) - and the mean optical
    density per channel."""
    h, w = tile.shape[0] // 2, tile.shape[1] // 2
    planes = np.empty((5, h, w), np.float32)
    third, zero = np.float32(3.0), np.float32(0.0)
    background = np.float32(BACKGROUND_OD)
    m = hed_from_rgb.astype(np.float64)
    # per 8-bit value: v / 255, the first product of each stain rounded to float32,
    # and the other two products in float64 (the same numbers the loop would compute)
    intensity = np.arange(256).astype(np.float32) / np.float32(255.0)
    first = np.empty((256, 3), np.float64)
    by_green = np.empty((256, 3), np.float64)
    by_blue = np.empty((256, 3), np.float64)
    for v in range(256):
        od = np.float64(od_lut[v])
        for s in range(3):
            first[v, s] = np.float64(np.float32(od * m[0, s]))
            by_green[v, s] = od * m[1, s]
            by_blue[v, s] = od * m[2, s]
    counts = np.zeros((3, 256), np.int64)
    for i in range(h):
        for j in range(w):
            r, g, b = _half(tile, i, j, 0), _half(tile, i, j, 1), _half(tile, i, j, 2)
            counts[0, r] += 1
            counts[1, g] += 1
            counts[2, b] += 1
            planes[0, i, j] = ((intensity[r] + intensity[g]) + intensity[b]) / third
            for s in range(3):
                second = np.float32(by_green[g, s] + first[r, s])
                value = np.float32(by_blue[b, s] + np.float64(second))
                planes[1 + s, i, j] = max(value, zero)
            planes[4, i, j] = (
                np.float32(1.0) if (od_lut[r] + od_lut[g]) + od_lut[b] > background else zero
            )
    od_means = np.empty(3, np.float32)
    for c in range(3):
        od_means[c] = np.sum(counts[c] * od_lut.astype(np.float64)) / (h * w)
    return planes, od_means


@njit(**_KERNEL)
def _window_counts(n: int, size: int) -> np.ndarray:
    r = size // 2
    out = np.empty(n, np.float32)
    for i in range(n):
        out[i] = np.float32(min(i + r, n - 1) - max(i - r, 0) + 1)
    return out


@njit(**_KERNEL)
def _row_sums(x: np.ndarray, r: int) -> np.ndarray:
    """Running sums along each row of an (H, W) float32 plane: ``r + 1`` zeros, the
    sums, then ``r`` copies of the total (float64 accumulation, float32 storage)."""
    h, w = x.shape
    run = np.zeros((h, w + 2 * r + 1), np.float32)
    for i in range(h):
        acc = 0.0
        for j in range(w):
            acc += x[i, j]
            run[i, r + 1 + j] = np.float32(acc)
        for j in range(r):
            run[i, r + 1 + w + j] = np.float32(acc)
    return run


@njit(**_KERNEL)
def _box_from_row_sums(run: np.ndarray, pad: int, size: int) -> np.ndarray:
    """Box mean of odd ``size`` from :func:`_row_sums` made with radius ``pad`` >= size // 2:
    window means along rows, then the same along columns."""
    h = run.shape[0]
    w = run.shape[1] - 2 * pad - 1
    r = size // 2
    offset = pad - r
    count_w, count_h = _window_counts(w, size), _window_counts(h, size)
    rows = np.empty((h, w), np.float32)
    for i in range(h):
        for j in range(w):
            rows[i, j] = (run[i, offset + j + size] - run[i, offset + j]) / count_w[j]
    # along columns: all columns at once, row by row
    running = np.zeros((h + 2 * r + 1, w), np.float32)
    acc = np.zeros(w, np.float64)
    for i in range(h):
        for j in range(w):
            acc[j] += rows[i, j]
            running[r + 1 + i, j] = np.float32(acc[j])
    for i in range(r):
        for j in range(w):
            running[r + 1 + h + i, j] = np.float32(acc[j])
    out = np.empty((h, w), np.float32)
    for i in range(h):
        for j in range(w):
            out[i, j] = (running[i + size, j] - running[i, j]) / count_h[i]
    return out


@njit(**_KERNEL)
def box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Centred box mean of odd ``size`` over an (H, W) float32 plane, windows cut at
    the edges: along rows, then along columns (the values of the cumsum formulation)."""
    return _box_from_row_sums(_row_sums(x, size // 2), size // 2, size)


@njit(**_KERNEL)
def blob_count(h: np.ndarray, inner: int, outer: int, threshold: float, floor: float) -> int:
    """Local maxima (3 x 3) of box(inner) - box(outer) above ``threshold`` where
    box(inner) exceeds ``floor``, in an (H, W) float32 plane (H, W >= 2)."""
    pad = max(inner, outer) // 2
    run = _row_sums(h, pad)  # shared by both boxes: the same sums either way
    centre = _box_from_row_sums(run, pad, inner)
    response = centre - _box_from_row_sums(run, pad, outer)
    rows, cols = h.shape
    thr, flo = np.float32(threshold), np.float32(floor)
    row_max = np.empty((rows, cols), np.float32)
    for i in range(rows):  # 3 x 3 maximum, separably: along rows, then along columns
        row_max[i, 0] = max(response[i, 0], response[i, 1])
        for j in range(1, cols - 1):
            row_max[i, j] = max(max(response[i, j - 1], response[i, j]), response[i, j + 1])
        row_max[i, cols - 1] = max(response[i, cols - 2], response[i, cols - 1])
    found = 0
    for i in range(rows):
        above, below = max(i - 1, 0), min(i + 1, rows - 1)
        for j in range(cols):
            v = response[i, j]
            best = max(max(row_max[above, j], row_max[i, j]), row_max[below, j])
            if v == best and v > thr and centre[i, j] > flo:
                found += 1
    return found


@njit(**_KERNEL)
def count_above(x: np.ndarray, size: int, level: float) -> int:
    """Pixels of an (H, W) float32 plane whose box(size) mean exceeds ``level``."""
    return int(np.sum(box_mean(x, size) > np.float32(level)))


@njit(**_KERNEL)
def pool(x: np.ndarray, k: int) -> np.ndarray:
    """Non-overlapping k x k means of an (H, W) float32 plane, summed as avg_pool2d sums."""
    h, w = x.shape
    out = np.empty((h // k, w // k), np.float32)
    area = np.float32(k * k)
    if k == 2:  # the common case, written out (same order of additions)
        for i in range(h // 2):
            for j in range(w // 2):
                out[i, j] = ((x[2 * i, 2 * j] + x[2 * i, 2 * j + 1]) + x[2 * i + 1, 2 * j]) + x[
                    2 * i + 1, 2 * j + 1
                ]
                out[i, j] /= area
        return out
    for i in range(h // k):
        for j in range(w // k):
            s = np.float32(0.0)
            for a in range(k):
                for b in range(k):
                    s += x[i * k + a, j * k + b]
            out[i, j] = s / area
    return out


@njit(**_REDUCTION)
def green_gradient_energy(tile: np.ndarray) -> float:
    """Mean |horizontal| + mean |vertical| neighbour difference of the green channel
    of an (H, W, 3) uint8 tile, over its (H-1) x (W-1) top-left block, / 255."""
    h, w, _ = tile.shape
    green = np.empty((h, w), np.int32)  # contiguous first: the loop below then vectorises
    for i in range(h):
        for j in range(w):
            green[i, j] = tile[i, j, 1]
    sx = 0
    sy = 0
    for i in range(h - 1):
        for j in range(w - 1):
            g = green[i, j]
            sx += abs(green[i, j + 1] - g)
            sy += abs(green[i + 1, j] - g)
    area = (h - 1) * (w - 1)
    return (sx / area + sy / area) / 255.0


@njit(**_REDUCTION)
def gradient_stats(x: np.ndarray) -> tuple[float, float]:
    """Mean gradient magnitude of an (H, W) float32 plane, and its orientation
    anisotropy (structure tensor averaged over the plane: 0 isotropic, 1 one direction)."""
    h, w = x.shape
    area = (h - 1) * (w - 1)
    energy = 0.0
    jxx = 0.0
    jyy = 0.0
    jxy = 0.0
    for i in range(h - 1):
        for j in range(w - 1):
            gx = np.float64(x[i, j + 1] - x[i, j])
            gy = np.float64(x[i + 1, j] - x[i, j])
            energy += np.sqrt(gx * gx + gy * gy)
            jxx += gx * gx
            jyy += gy * gy
            jxy += gx * gy
    jxx /= area
    jyy /= area
    jxy /= area
    return energy / area, np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / max(jxx + jyy, 1e-8)


@njit(**_REDUCTION)
def laplacian_energy(x: np.ndarray) -> float:
    """Mean |4-neighbour Laplacian| over the interior of an (H, W) float32 plane."""
    h, w = x.shape
    acc = 0.0
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            lap = (x[i - 1, j] + x[i + 1, j] + x[i, j - 1] + x[i, j + 1]) - 4 * x[i, j]
            acc += abs(lap)
    return acc / ((h - 2) * (w - 2))


@njit(**_KERNEL)
def _histogram(values: np.ndarray, weights: np.ndarray, edges: tuple, out: np.ndarray) -> None:
    """Weighted fraction of pixels in each bin (below edges[0], ..., above edges[-1])."""
    out[:] = 0.0
    total = 0.0
    h, w = values.shape
    for i in range(h):
        for j in range(w):
            v = values[i, j]
            k = 0
            for e in edges:
                if v >= np.float32(e):
                    k += 1
            out[k] += weights[i, j]
            total += weights[i, j]
    out /= max(total, 1.0)


@njit(**_REDUCTION)
def _weighted_mean_std(v: np.ndarray, weights: np.ndarray, count: float) -> tuple[float, float]:
    """Mean over the weighted pixels (dividing by ``count``) and the deviation about it."""
    h, w = v.shape
    s = 0.0
    for i in range(h):
        for j in range(w):
            s += v[i, j] * weights[i, j]
    mean = np.float32(s / count)
    s2 = 0.0
    for i in range(h):
        for j in range(w):
            d = np.float64(v[i, j] - mean)
            s2 += d * d * weights[i, j]
    return mean, np.sqrt(s2 / count)


@njit(**_REDUCTION)
def _mean(x: np.ndarray) -> float:
    """Mean of an (H, W) plane (float64 sum)."""
    h, w = x.shape
    total = 0.0
    for i in range(h):
        for j in range(w):
            total += x[i, j]
    return total / (h * w)


@njit(**_REDUCTION)
def _sample_std(x: np.ndarray) -> float:
    """Standard deviation with n - 1 (torch.std's) of an (H, W) plane."""
    h, w = x.shape
    mean = _mean(x)
    s2 = 0.0
    for i in range(h):
        for j in range(w):
            s2 += (x[i, j] - mean) ** 2
    return np.sqrt(s2 / (h * w - 1))


@njit(**_KERNEL)
def _nuclear_mask(hem: np.ndarray, tissue: np.ndarray) -> tuple[np.ndarray, float]:
    """Tissue pixels whose haematoxylin exceeds NUCLEAR_H (0/1), and how many."""
    h, w = hem.shape
    mask = np.zeros((h, w), np.float32)
    level = np.float32(NUCLEAR_H)
    count = 0
    for i in range(h):
        for j in range(w):
            if hem[i, j] > level and tissue[i, j] > 0:
                mask[i, j] = 1.0
                count += 1
    return mask, float(count)


@njit(**_KERNEL)
def _local_contrast(gray: np.ndarray) -> float:
    """Mean over 8 x 8 blocks of the block's standard deviation of gray, computed as
    sqrt(mean(gray^2) - mean(gray)^2) in float32, as the torch formulation did."""
    block = pool(gray, 8)
    block_sq = pool(gray * gray, 8)
    zero = np.float32(0.0)
    total = 0.0
    for i in range(block.shape[0]):
        for j in range(block.shape[1]):
            total += np.sqrt(max(block_sq[i, j] - block[i, j] * block[i, j], zero))
    return total / block.size


@njit(**_KERNEL)
def describe_tile(
    tile: np.ndarray, od_lut: np.ndarray, hed_from_rgb: np.ndarray, out: np.ndarray
) -> None:
    """The descriptor of one (256, 256, 3) uint8 tile into ``out`` (DESCRIPTOR_DIM,),
    in the order of ``DESCRIPTOR_NAMES``."""
    grad_full = green_gradient_energy(tile)
    planes, od_means = pixel_planes(tile, od_lut, hed_from_rgb)
    gray, hem, eos, res, tissue = planes[0], planes[1], planes[2], planes[3], planes[4]
    n_pix = gray.size
    t_sum = _mean(tissue) * n_pix  # a count: exact
    t_count = max(t_sum, 1.0)
    h_mean, h_std = _weighted_mean_std(hem, tissue, t_count)
    e_mean, e_std = _weighted_mean_std(eos, tissue, t_count)
    r_mean, _ = _weighted_mean_std(res, tissue, t_count)
    h_mean32, e_mean32 = np.float32(h_mean), np.float32(e_mean)

    nuclear, nuc_count = _nuclear_mask(hem, tissue)
    nuc_smooth = count_above(nuclear, 5, 0.5)
    hem_2um = pool(hem, 2)
    small = blob_count(hem, 3, 9, 0.04, NUCLEAR_H)
    large = blob_count(hem_2um, 5, 9, 0.04, NUCLEAR_H)
    nuc_h_mean, nuc_h_std = _weighted_mean_std(hem, nuclear, max(nuc_count, 1.0))

    gray2, gray4 = pool(gray, 2), pool(gray, 4)
    grad1, aniso1 = gradient_stats(gray)
    grad2, _ = gradient_stats(gray2)
    grad4, aniso4 = gradient_stats(gray4)
    e_grad, _ = gradient_stats(eos)
    gray_mean = _mean(gray)

    out[0] = 1.0 - np.float32(t_sum / n_pix)
    out[1] = t_sum / n_pix
    out[2] = h_mean
    out[3] = h_std
    out[4] = e_mean
    out[5] = e_std
    out[6] = r_mean
    out[7] = h_mean32 / max(h_mean32 + e_mean32, np.float32(1e-3))
    out[8:11] = od_means
    tissue_2um = pool(tissue, 2)
    _histogram(hem_2um, tissue_2um, STAIN_EDGES, out[11:16])
    _histogram(pool(eos, 2), tissue_2um, STAIN_EDGES, out[16:21])
    out[21] = nuc_count / t_count
    out[22] = nuc_smooth / t_count
    out[23] = small
    out[24] = large
    out[25] = large / (small + 1.0)
    out[26] = nuc_h_mean
    out[27] = nuc_h_std
    out[28] = nuc_count / (small + large + 1.0)
    out[29] = grad_full
    out[30] = grad1
    out[31] = grad2
    out[32] = grad4
    out[33] = aniso1
    out[34] = aniso4
    out[35] = laplacian_energy(gray)
    out[36] = laplacian_energy(gray4)
    out[37] = gray_mean
    out[38] = _sample_std(gray)
    _histogram(gray2, np.ones_like(gray2), GRAY_EDGES, out[39:44])
    out[44] = _local_contrast(gray)
    out[45] = e_grad
    out[46] = _sample_std(pool(nuclear, 16))


@njit(**_KERNEL)
def describe(tiles: np.ndarray, od_lut: np.ndarray, hed_from_rgb: np.ndarray) -> np.ndarray:
    """The descriptor of each (256, 256, 3) uint8 tile: (N, DESCRIPTOR_DIM) float32."""
    out = np.empty((tiles.shape[0], DESCRIPTOR_DIM), np.float32)
    for t in range(tiles.shape[0]):
        describe_tile(tiles[t], od_lut, hed_from_rgb, out[t])
    return out
