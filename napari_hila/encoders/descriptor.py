"""A weight-free pathology descriptor: stains, nuclei, texture, background.

Each 256 px tile at about 0.5 um/px becomes a fixed-length vector whose every
dimension has a name a pathologist can read (:data:`DESCRIPTOR_NAMES`). It needs
no weights, runs on the CPU at several hundred tiles per second, and is
deterministic, so the whole pipeline works on any machine out of the box.

How the dimensions are computed (all vectorised over the batch in torch):

- Stains: optical density (OD = -log10 of transmitted light) projected onto
  the fixed Ruifrok-Johnston haematoxylin/eosin/residual matrix (colour
  deconvolution) at half resolution (about 1 um/px).
- Background: pixels that are bright and unstained (white glass, fat).
- Nuclei: haematoxylin above a fixed threshold gives a nuclear mask; local
  maxima of a centre-surround (difference of box filters) response at two
  sizes count small round nuclei (about lymphocyte size) and large nuclei
  (tumour cells, pleomorphism).
- Texture: gradient energy at three scales, orientation anisotropy (oriented
  collagen fibres), Laplacian energy, and an intensity histogram.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DESCRIPTOR_VERSION = "2"

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB/residual),
# the same matrix scikit-image calls rgb_from_hed.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)

_WORK_PX = 128  # analysis resolution: a 256 px tile at 0.5 um/px -> about 1 um/px
_NUCLEAR_H = 0.25  # haematoxylin concentration above which a pixel counts as nuclear
_BACKGROUND_OD = 0.12  # summed OD below which a pixel is glass or fat
_STAIN_BINS = (0.0, 0.1, 0.2, 0.35, 0.5)  # haematoxylin/eosin histogram bin edges (last open)
_GRAY_BINS = (0.0, 0.3, 0.5, 0.7, 0.85)

DESCRIPTOR_NAMES: tuple[str, ...] = (
    "background fraction (glass, fat)",
    "tissue fraction",
    "haematoxylin mean (tissue)",
    "haematoxylin std (tissue)",
    "eosin mean (tissue)",
    "eosin std (tissue)",
    "residual stain mean (tissue)",
    "haematoxylin/eosin ratio",
    "optical density mean red",
    "optical density mean green",
    "optical density mean blue",
    *(f"haematoxylin histogram bin {i + 1}/{len(_STAIN_BINS)}" for i in range(len(_STAIN_BINS))),
    *(f"eosin histogram bin {i + 1}/{len(_STAIN_BINS)}" for i in range(len(_STAIN_BINS))),
    "nuclear area fraction (of tissue)",
    "nuclear area fraction, smoothed 4 um",
    "small nuclei count (about 5-8 um)",
    "large nuclei count (about 10-18 um)",
    "large/small nuclei ratio (pleomorphism proxy)",
    "nuclear haematoxylin mean (chromatin density)",
    "nuclear haematoxylin std (chromatin heterogeneity)",
    "mean nuclear size proxy (nuclear area / nuclei count)",
    "gradient energy at 0.5 um/px (green channel, L1)",
    "gradient energy at 1 um/px",
    "gradient energy at 2 um/px",
    "gradient energy at 4 um/px",
    "orientation anisotropy at 1 um/px (fibres)",
    "orientation anisotropy at 4 um/px (architecture)",
    "Laplacian energy at 1 um/px (fine detail)",
    "Laplacian energy at 4 um/px (coarse structure)",
    "gray intensity mean",
    "gray intensity std",
    *(f"gray histogram bin {i + 1}/{len(_GRAY_BINS)}" for i in range(len(_GRAY_BINS))),
    "local contrast at 8 um (block std of gray)",
    "eosin texture: gradient energy of eosin at 1 um/px",
    "haematoxylin clustering: std of 16 um block nuclear fraction",
)
DESCRIPTOR_DIM = len(DESCRIPTOR_NAMES)


def _hist(values: torch.Tensor, weights: torch.Tensor, edges: tuple[float, ...]) -> torch.Tensor:
    """Weighted fraction of pixels per bin (N, len(edges)); the last bin is open.

    Values below the first edge count in the first bin (the values here are >= 0).
    Cumulative counts above each edge, differenced: cheaper than bucketize+scatter.
    """
    v, w = values.flatten(1), weights.flatten(1)
    total = w.sum(dim=1)
    above = [total] + [w.mul(v >= e).sum(dim=1) for e in edges[1:]]
    above.append(torch.zeros_like(total))
    counts = torch.stack([above[i] - above[i + 1] for i in range(len(edges))], dim=1)
    return counts / total.clamp_min(1.0)[:, None]


def _gradients(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gx = gray[:, :-1, 1:] - gray[:, :-1, :-1]
    gy = gray[:, 1:, :-1] - gray[:, :-1, :-1]
    return gx, gy


def _gradient_energy(gray: torch.Tensor) -> torch.Tensor:
    """Mean gradient magnitude of (N, H, W) images."""
    gx, gy = _gradients(gray)
    return torch.hypot(gx, gy).mean(dim=(1, 2))


def _gradient_energy_anisotropy(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean gradient magnitude and orientation anisotropy of (N, H, W) images."""
    gx, gy = _gradients(gray)
    energy = torch.hypot(gx, gy).mean(dim=(1, 2))
    # Structure tensor averaged over the tile: 0 = isotropic, 1 = one direction.
    jxx, jyy, jxy = gx.square().mean((1, 2)), gy.square().mean((1, 2)), (gx * gy).mean((1, 2))
    anisotropy = ((jxx - jyy).square() + 4 * jxy.square()).sqrt() / (jxx + jyy).clamp_min(1e-8)
    return energy, anisotropy


def _laplacian_energy(gray: torch.Tensor) -> torch.Tensor:
    centre = gray[:, 1:-1, 1:-1]
    lap = (
        gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:] - 4 * centre
    )
    return lap.abs().mean(dim=(1, 2))


def _running_sum(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Cumulative sum along ``dim`` with ``radius + 1`` zeros before and ``radius`` totals after."""
    c = x.cumsum(dim)
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = radius + 1
    tail = c.narrow(dim, n - 1, 1).expand(*shape[:dim], radius, *shape[dim + 1 :])
    return torch.cat([x.new_zeros(shape), c, tail], dim=dim)


def _window_counts(n: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Pixels inside each centred window of odd ``size`` along an axis of length n."""
    r = size // 2
    idx = torch.arange(n)
    return (torch.clamp(idx + r, max=n - 1) - torch.clamp(idx - r, min=0) + 1).to(dtype)


def _box_from_sum(c: torch.Tensor, pad: int, size: int, dim: int) -> torch.Tensor:
    """Centred means of odd ``size`` from :func:`_running_sum` made with radius ``pad``."""
    n = c.shape[dim] - 2 * pad - 1
    offset = pad - size // 2
    total = c.narrow(dim, offset + size, n) - c.narrow(dim, offset, n)
    shape = [1] * c.ndim
    shape[dim] = n
    return total.div_(_window_counts(n, size, c.dtype).view(shape))


def _box_1d(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Mean over a centred window of odd ``size`` along ``dim``, windows cut at the edges."""
    return _box_from_sum(_running_sum(x, size // 2, dim), size // 2, size, dim)


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    """Separable box filter of odd ``size`` on (N, H, W) via running sums, same size output."""
    return _box_1d(_box_1d(x, size, 2), size, 1)


def _boxes(x: torch.Tensor, inner: int, outer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_box` at two sizes sharing the first running sum (same values as two calls)."""
    pad = outer // 2
    rows = _running_sum(x, pad, 2)
    return (
        _box_1d(_box_from_sum(rows, pad, inner, 2), inner, 1),
        _box_1d(_box_from_sum(rows, pad, outer, 2), outer, 1),
    )


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """2 x 2 mean of (N, H, W) (H, W even), summed in avg_pool2d's order: the same values."""
    return (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]).mul_(0.25)


def _pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Non-overlapping k x k mean of (N, H, W) (H, W multiples of k)."""
    return _pool2(x) if k == 2 else F.avg_pool2d(x[:, None], k)[:, 0]


def _is_local_max(x: torch.Tensor) -> torch.Tensor:
    """True where a pixel of (N, H, W) is the maximum of its 3 x 3 neighbourhood."""
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    row = torch.maximum(torch.maximum(p[:, :, :-2], p[:, :, 1:-1]), p[:, :, 2:])
    best = torch.maximum(torch.maximum(row[:, :-2], row[:, 1:-1]), row[:, 2:])
    return x == best


def _blob_count(h: torch.Tensor, inner: int, outer: int, threshold: float) -> torch.Tensor:
    """Count local maxima of a centre-surround haematoxylin response per tile."""
    centre, surround = _boxes(h, inner, outer)
    response = centre - surround
    strong = (response > threshold) & (centre > _NUCLEAR_H)
    return (_is_local_max(response) & strong).sum(dim=(1, 2)).float()


def _std(x: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation per row of (N, ...) (torch.std's value, several times faster)."""
    flat = x.flatten(1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    return centred.square_().sum(dim=1).div_(flat.shape[1] - 1).sqrt_()


def _resize_all(tiles: np.ndarray, px: int) -> np.ndarray:
    """Each (H, W, 3) uint8 tile box-filtered to (px, px, 3)."""
    from PIL import Image

    out = np.empty((len(tiles), px, px, 3), np.uint8)
    factor = tiles.shape[1] // px
    exact = factor >= 1 and tiles.shape[1] == tiles.shape[2] == factor * px
    for i, tile in enumerate(tiles):
        image = Image.fromarray(np.ascontiguousarray(tile))
        out[i] = image.reduce(factor) if exact else image.resize((px, px), Image.Resampling.BOX)
    return out


_CHUNK = 16  # tiles per pass: a 128 px float plane of 16 tiles (1 MB) stays in L2 cache


@torch.no_grad()
def describe_tiles(tiles: np.ndarray | torch.Tensor) -> np.ndarray:
    """Descriptor of each RGB tile: (N, H, W, 3) uint8 -> (N, DESCRIPTOR_DIM) float32.

    Tiles of any size are resampled to 256 px first, so the physical scale is
    the one the grid asked for (0.5 um/px by default).
    """
    tiles = tiles.numpy() if isinstance(tiles, torch.Tensor) else np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected tiles of shape (N, H, W, 3), got {tuple(tiles.shape)}")
    if tiles.shape[0] == 0:
        return np.zeros((0, DESCRIPTOR_DIM), np.float32)
    full_px = 2 * _WORK_PX
    if tiles.shape[1:3] != (full_px, full_px):
        tiles = _resize_all(tiles, full_px)
    parts = [_describe_chunk(tiles[i : i + _CHUNK]) for i in range(0, len(tiles), _CHUNK)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _describe_chunk(tiles: np.ndarray) -> np.ndarray:
    """:func:`describe_tiles` of (n, 256, 256, 3) uint8 tiles."""
    # Finest scale on the green channel alone (it carries most H&E contrast), as the
    # mean absolute difference of neighbours (L1: half the cost of the Euclidean norm).
    green = torch.from_numpy(np.ascontiguousarray(tiles[..., 1])).float()
    grad_full = (
        (green[:, :-1, 1:] - green[:, :-1, :-1]).abs_().mean(dim=(1, 2))
        + (green[:, 1:, :-1] - green[:, :-1, :-1]).abs_().mean(dim=(1, 2))
    ) / 255.0
    # 2x2 box reduction in PIL (SIMD, uint8) is several times faster than in torch.
    x = torch.from_numpy(_resize_all(tiles, _WORK_PX)).permute(0, 3, 1, 2).float().div_(255.0)
    gray = (x[:, 0] + x[:, 1]).add_(x[:, 2]).div_(3.0)  # = x.mean(dim=1), bit for bit

    od = x.clamp_min(1.0 / 255.0).log10_().neg_()  # (N, 3, h, w)
    stains = torch.einsum("nchw,cs->nshw", od, torch.from_numpy(HED_FROM_RGB)).clamp_min_(0.0)
    hem, eos, res = stains[:, 0], stains[:, 1], stains[:, 2]
    tissue = (od.sum(dim=1) > _BACKGROUND_OD).float()
    n_pix = float(tissue.shape[1] * tissue.shape[2])
    t_sum = tissue.sum(dim=(1, 2))
    tissue_frac = t_sum / n_pix
    t_count = t_sum.clamp_min(1.0)

    def tissue_mean(v: torch.Tensor) -> torch.Tensor:
        return (v * tissue).sum(dim=(1, 2)) / t_count

    def tissue_std(v: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        return ((v - mean[:, None, None]).square_() * tissue).sum(dim=(1, 2)).div(t_count).sqrt()

    h_mean, e_mean = tissue_mean(hem), tissue_mean(eos)
    nuclear = (hem > _NUCLEAR_H).float().mul_(tissue)
    nuc_count = nuclear.sum(dim=(1, 2))
    nuc_frac = nuc_count / t_count
    nuc_smooth = (_box(nuclear, 5) > 0.5).sum(dim=(1, 2)).float() / t_count
    hem_2um = _pool2(hem)
    small = _blob_count(hem, 3, 9, 0.04)
    large = _blob_count(hem_2um, 5, 9, 0.04)
    nuc_h_mean = (hem * nuclear).sum(dim=(1, 2)) / nuc_count.clamp_min(1.0)
    nuc_h_std = ((hem - nuc_h_mean[:, None, None]).square_() * nuclear).sum(dim=(1, 2))
    nuc_h_std = nuc_h_std.div(nuc_count.clamp_min(1.0)).sqrt()

    grad1, aniso1 = _gradient_energy_anisotropy(gray)
    gray2 = _pool2(gray)
    gray4 = _pool(gray, 4)
    grad2 = _gradient_energy(gray2)
    grad4, aniso4 = _gradient_energy_anisotropy(gray4)
    lap1, lap4 = _laplacian_energy(gray), _laplacian_energy(gray4)
    e_grad = _gradient_energy(eos)
    block = _pool(gray, 8)
    block_sq = _pool(gray.square(), 8)
    local_contrast = (block_sq - block.square()).clamp_min(0).sqrt().mean(dim=(1, 2))
    nuc_blocks = _pool(nuclear, 16)

    eos_2um = _pool2(eos)
    tissue_2um = _pool2(tissue)
    columns = [
        1.0 - tissue_frac,
        tissue_frac,
        h_mean,
        tissue_std(hem, h_mean),
        e_mean,
        tissue_std(eos, e_mean),
        tissue_mean(res),
        h_mean / (h_mean + e_mean).clamp_min(1e-3),
        od[:, 0].mean(dim=(1, 2)),
        od[:, 1].mean(dim=(1, 2)),
        od[:, 2].mean(dim=(1, 2)),
        *_hist(hem_2um, tissue_2um, _STAIN_BINS).unbind(1),
        *_hist(eos_2um, tissue_2um, _STAIN_BINS).unbind(1),
        nuc_frac,
        nuc_smooth,
        small,
        large,
        large / (small + 1.0),
        nuc_h_mean,
        nuc_h_std,
        nuc_count / (small + large + 1.0),
        grad_full,
        grad1,
        grad2,
        grad4,
        aniso1,
        aniso4,
        lap1,
        lap4,
        gray.mean(dim=(1, 2)),
        _std(gray),
        *_hist(gray2, torch.ones_like(gray2), _GRAY_BINS).unbind(1),
        local_contrast,
        e_grad,
        _std(nuc_blocks),
    ]
    out = torch.stack(columns, dim=1)
    return out.numpy().astype(np.float32, copy=False)


class DescriptorEncoder:
    """The ``hila-descriptor`` vision encoder: :func:`describe_tiles` behind ``encode``."""

    name = "hila-descriptor"
    version = DESCRIPTOR_VERSION
    output_dim = DESCRIPTOR_DIM
    input_size = 2 * _WORK_PX
    feature_names = DESCRIPTOR_NAMES
    device = torch.device("cpu")
    # stateless, one torch thread per caller: extraction runs it in the tile reader threads
    thread_parallel = True

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float32, in batches to bound memory."""
        if len(tiles) <= self.batch_size:
            return describe_tiles(tiles)
        parts = [
            describe_tiles(tiles[i : i + self.batch_size])
            for i in range(0, len(tiles), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)
