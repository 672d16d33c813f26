"""The descriptor's compiled loops and torch helpers against their plain definitions.

The oracles below are the obvious torch formulations (the ones descriptor v2
was first written with); the whole descriptor is checked against stored v2
values in tests/test_encoders.py. Discrete results - nucleus counts, masks, 8-bit
pixels - must agree exactly, since a count that flips changes a feature by a
whole unit; continuous statistics to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from napari_hila.encoders import _descriptor_kernels as kernels
from napari_hila.encoders import descriptor as d


def box_oracle(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centred window mean along W then H, windows cut at the edges, via padded cumsums."""

    def along(v: torch.Tensor, dim: int) -> torch.Tensor:
        r, n = size // 2, v.shape[dim]
        pad = [0, 0] * (v.ndim - 1 - dim) + [r + 1, r]
        c = F.pad(v, pad).cumsum(dim)
        total = c.narrow(dim, size, n) - c.narrow(dim, 0, n)
        idx = torch.arange(n)
        count = (idx + r).clamp(max=n - 1) - (idx - r).clamp(min=0) + 1
        shape = [1] * v.ndim
        shape[dim] = n
        return total / count.to(v.dtype).view(shape)

    return along(along(x, 2), 1)


def blob_oracle(h: torch.Tensor, inner: int, outer: int, thr: float, floor: float):
    centre = box_oracle(h, inner)
    response = centre - box_oracle(h, outer)
    padded = F.pad(response[:, None], (1, 1, 1, 1), value=float("-inf"))
    best = F.max_pool2d(padded, 3, stride=1)[:, 0]
    peaks = (response == best) & (response > thr) & (centre > floor)
    return peaks.sum(dim=(1, 2)).float()


@pytest.fixture(scope="module")
def hem_like():
    """Haematoxylin-like planes: smooth blobs (nuclei) on a low background, plus
    flat patches where windows tie exactly."""
    gen = torch.Generator().manual_seed(1)
    noise = torch.rand(6, 128, 128, generator=gen)
    blobs = F.avg_pool2d(noise[:, None], 5, stride=1, padding=2)[:, 0]
    h = (blobs - 0.45).clamp_min(0) * 6
    h[0, 20:60, 30:90] = 0.4  # a plateau: ties everywhere inside
    h[1] = 0.0
    return h.contiguous()


def per_tile(fn, planes: torch.Tensor, *args) -> np.ndarray:
    return np.array([fn(p, *args) for p in planes.numpy()])


def test_box_mean_is_bit_identical_to_the_cumsum_formulation(hem_like):
    for size in (3, 5, 9):
        got = np.stack([kernels.box_mean(p, size) for p in hem_like.numpy()])
        assert np.array_equal(got, box_oracle(hem_like, size).numpy()), size
    # and it is the mean over the window clipped at the edges
    x = hem_like[0].double()
    got = kernels.box_mean(hem_like[0].numpy(), 5)
    for i, j in [(0, 0), (0, 127), (60, 61), (127, 3)]:
        window = x[max(0, i - 2) : i + 3, max(0, j - 2) : j + 3].mean()
        np.testing.assert_allclose(got[i, j], float(window), rtol=1e-5, atol=1e-6)


def test_blob_counts_equal_the_torch_peak_finder(hem_like):
    for inner, outer, thr in [(3, 9, 0.04), (5, 9, 0.04), (3, 9, 0.0)]:
        got = per_tile(kernels.blob_count, hem_like, inner, outer, thr, 0.25)
        want = blob_oracle(hem_like, inner, outer, thr, 0.25).numpy()
        np.testing.assert_array_equal(got, want)
    assert got[2:].sum() > 20 and got[1] == 0  # it counts something, and nothing on blank


def test_count_above_equals_thresholded_box(hem_like):
    mask = (hem_like > 0.25).float()
    want = (box_oracle(mask, 5) > 0.5).sum(dim=(1, 2)).numpy()
    np.testing.assert_array_equal(per_tile(kernels.count_above, mask, 5, 0.5), want)


def test_pooling_adds_in_avg_pool2d_order(hem_like):
    for k in (2, 4, 8, 16):
        got = np.stack([kernels.pool(p, k) for p in hem_like.numpy()])
        assert np.array_equal(got, F.avg_pool2d(hem_like[:, None], k)[:, 0].numpy()), k


def test_pixel_planes_equal_pil_reduction_and_torch_colour_deconvolution():
    """Random colours, the extremes and the examples of H&E: the half-size image rounds as
    PIL's reduce(2), the stain planes are torch's colour deconvolution of it."""
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    tile[:2, :8] = [[0, 0, 0]] * 2 + [[255, 255, 255]] * 2 + [[242] * 3] * 2 + [[235, 150, 200]] * 2
    planes, od_means = kernels.pixel_planes(tile, d._od_lut(), d.HED_FROM_RGB)
    half = np.array(Image.fromarray(tile).reduce(2))
    x = torch.from_numpy(half).permute(2, 0, 1).float().div_(255.0)
    od = -torch.log10(x.clamp_min(1.0 / 255.0))
    stains = torch.einsum("chw,cs->shw", od, torch.from_numpy(d.HED_FROM_RGB)).clamp_min(0)
    np.testing.assert_array_equal(planes[0], x.mean(dim=0).numpy())
    np.testing.assert_allclose(planes[1:4], stains.numpy(), rtol=1e-6, atol=1e-7)
    tissue = (od.sum(dim=0) > d.BACKGROUND_OD).float().numpy()
    np.testing.assert_array_equal(planes[4], tissue)
    np.testing.assert_allclose(od_means, od.mean(dim=(1, 2)).numpy(), rtol=1e-5)
    # black is dense, white and pale grey are glass
    assert planes[4, 0, 0] == 1 and planes[4, 0, 1] == 0 and planes[4, 0, 2] == 0


def test_gradient_statistics_equal_their_definitions(hem_like):
    g = hem_like
    gx = g[:, :-1, 1:] - g[:, :-1, :-1]
    gy = g[:, 1:, :-1] - g[:, :-1, :-1]
    energy = torch.hypot(gx, gy).mean(dim=(1, 2))
    jxx, jyy, jxy = gx.square().mean((1, 2)), gy.square().mean((1, 2)), (gx * gy).mean((1, 2))
    aniso = ((jxx - jyy).square() + 4 * jxy.square()).sqrt() / (jxx + jyy).clamp_min(1e-8)
    got = per_tile(kernels.gradient_stats, g)
    np.testing.assert_allclose(got[:, 0], energy.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[:, 1], aniso.numpy(), rtol=1e-4, atol=1e-6)
    centre = g[:, 1:-1, 1:-1]
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * centre
    np.testing.assert_allclose(
        per_tile(kernels.laplacian_energy, g), lap.abs().mean((1, 2)).numpy(), rtol=1e-5, atol=1e-7
    )
    tiles = np.random.default_rng(2).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    green = torch.from_numpy(tiles[..., 1].copy()).float()
    want = (
        (green[:, :-1, 1:] - green[:, :-1, :-1]).abs().mean((1, 2))
        + (green[:, 1:, :-1] - green[:, :-1, :-1]).abs().mean((1, 2))
    ) / 255.0
    got = [kernels.green_gradient_energy(t) for t in tiles]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)


def test_histogram_equals_bucketize():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 32, generator=gen) * 0.7
    w = torch.rand(32, 32, generator=gen)
    edges = d.STAIN_EDGES
    idx = torch.bucketize(x.flatten(), torch.tensor(edges), right=True)
    ref = torch.zeros(len(edges) + 1).scatter_add_(0, idx, w.flatten()) / w.sum()
    got = np.empty(len(edges) + 1, np.float32)
    kernels._histogram(x.numpy(), w.numpy(), edges, got)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-7)


def test_warm_up_compiles_the_descriptor_for_tile_batches():
    d.warm_up()
    assert kernels.describe.signatures  # compiled (or loaded from the disk cache)
    tiles = np.full((2, 256, 256, 3), 200, np.uint8)
    np.testing.assert_array_equal(d.describe_tiles(tiles)[0], d.describe_tiles(tiles[:1])[0])
