"""The descriptor's compiled loops and torch helpers against their plain definitions.

The oracles below are the obvious torch formulations (the ones descriptor v2
was first written with). Discrete results - nucleus counts, masks, 8-bit
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


def test_box_mean_is_bit_identical_to_the_cumsum_formulation(hem_like):
    for size in (3, 5, 9):
        got = kernels.box_mean(hem_like.numpy(), size)
        assert np.array_equal(got, box_oracle(hem_like, size).numpy()), size
    # and it is the mean over the window clipped at the edges
    x = hem_like[:2].double()
    got = kernels.box_mean(hem_like[:2].numpy(), 5)
    for i, j in [(0, 0), (0, 127), (60, 61), (127, 3)]:
        window = x[:, max(0, i - 2) : i + 3, max(0, j - 2) : j + 3].mean((1, 2))
        np.testing.assert_allclose(got[:, i, j], window.numpy(), rtol=1e-5, atol=1e-6)


def test_blob_counts_equal_the_torch_peak_finder(hem_like):
    for inner, outer, thr in [(3, 9, 0.04), (5, 9, 0.04), (3, 9, 0.0)]:
        got = kernels.blob_counts(hem_like.numpy(), inner, outer, thr, 0.25)
        want = blob_oracle(hem_like, inner, outer, thr, 0.25).numpy()
        np.testing.assert_array_equal(got, want)
    assert got[2:].sum() > 20 and got[1] == 0  # it counts something, and nothing on blank


def test_count_above_equals_thresholded_box(hem_like):
    mask = (hem_like > 0.25).float()
    want = (box_oracle(mask, 5) > 0.5).sum(dim=(1, 2)).float().numpy()
    np.testing.assert_array_equal(kernels.count_above(mask.numpy(), 5, 0.5), want)


def test_halve_rounds_like_pil_reduce():
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    want = np.stack([np.asarray(Image.fromarray(t).reduce(2)) for t in tiles])
    np.testing.assert_array_equal(kernels.halve(tiles), want)


def test_pixel_planes_equal_the_torch_colour_deconvolution():
    """Every colour a pixel can have, in one (1, 4096, 4096) image would take seconds;
    a random million colours plus the extremes check the same arithmetic."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8)
    rgb[0, 0, :4] = [[0, 0, 0], [255, 255, 255], [242, 242, 242], [235, 150, 200]]
    planes, od_means = kernels.pixel_planes(rgb, d._od_lut(), d.HED_FROM_RGB, d._BACKGROUND_OD)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0)
    od = -torch.log10(x.clamp_min(1.0 / 255.0))
    stains = torch.einsum("nchw,cs->nshw", od, torch.from_numpy(d.HED_FROM_RGB)).clamp_min(0)
    np.testing.assert_array_equal(planes[:, 0], x.mean(dim=1).numpy())
    np.testing.assert_allclose(planes[:, 1:4], stains.numpy(), rtol=1e-6, atol=1e-7)
    tissue = (od.sum(dim=1) > d._BACKGROUND_OD).float().numpy()
    np.testing.assert_array_equal(planes[:, 4], tissue)
    np.testing.assert_allclose(od_means, od.mean(dim=(2, 3)).numpy(), rtol=1e-5)
    assert planes[0, 4, 0, 0] == 1 and planes[0, 4, 0, 1] == 0  # black is dense, white is glass


def test_gradient_statistics_equal_their_definitions(hem_like):
    g = hem_like
    gx = g[:, :-1, 1:] - g[:, :-1, :-1]
    gy = g[:, 1:, :-1] - g[:, :-1, :-1]
    energy = torch.hypot(gx, gy).mean(dim=(1, 2))
    jxx, jyy, jxy = gx.square().mean((1, 2)), gy.square().mean((1, 2)), (gx * gy).mean((1, 2))
    aniso = ((jxx - jyy).square() + 4 * jxy.square()).sqrt() / (jxx + jyy).clamp_min(1e-8)
    got = kernels.gradient_stats(g.numpy())
    np.testing.assert_allclose(got[:, 0], energy.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[:, 1], aniso.numpy(), rtol=1e-4, atol=1e-6)
    centre = g[:, 1:-1, 1:-1]
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * centre
    np.testing.assert_allclose(
        kernels.laplacian_energy(g.numpy()), lap.abs().mean((1, 2)).numpy(), rtol=1e-5, atol=1e-7
    )
    tiles = np.random.default_rng(2).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    green = torch.from_numpy(tiles[..., 1].copy()).float()
    want = (
        (green[:, :-1, 1:] - green[:, :-1, :-1]).abs().mean((1, 2))
        + (green[:, 1:, :-1] - green[:, :-1, :-1]).abs().mean((1, 2))
    ) / 255.0
    np.testing.assert_allclose(kernels.green_gradient_energy(tiles), want.numpy(), rtol=1e-5)


def test_torch_helpers_equal_their_plain_definitions():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 32, 32, generator=gen)
    w = torch.rand(5, 32, 32, generator=gen)
    # histogram by cumulative counts == bucketize + scatter
    edges = d._STAIN_BINS
    idx = torch.bucketize(x.flatten(1), torch.tensor(edges[1:]), right=True)
    ref = torch.zeros(5, len(edges)).scatter_add_(1, idx, w.flatten(1))
    ref = ref / w.flatten(1).sum(1, keepdim=True)
    torch.testing.assert_close(d._hist(x, w, edges), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d._std(x), x.flatten(1).std(dim=1), rtol=1e-5, atol=1e-7)
    # 2 x 2 pooling: bit for bit what avg_pool2d gives
    assert torch.equal(d._pool2(x), F.avg_pool2d(x[:, None], 2)[:, 0])
