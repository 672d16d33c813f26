"""A weight-free pathology descriptor: stains, nuclei, texture, background.

Each 256 px tile at about 0.5 um/px becomes a fixed-length vector whose every
dimension has a name a pathologist can read (:data:`DESCRIPTOR_NAMES`). It needs
no weights, runs on one CPU core at over a thousand tiles per second, and is
deterministic, so the whole pipeline works on any machine out of the box.

How the dimensions are computed (per-pixel planes, neighbourhood filters and
gradients in compiled loops, :mod:`._descriptor_kernels`; tile statistics
vectorised over the batch in torch):

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

import functools

import numpy as np
import torch
import torch.nn.functional as F

from napari_hila.encoders import _descriptor_kernels as kernels

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


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """2 x 2 mean of (N, H, W) (H, W even), summed in avg_pool2d's order: the same values."""
    return (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]).mul_(0.25)


def _pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Non-overlapping k x k mean of (N, H, W) (H, W multiples of k)."""
    return _pool2(x) if k == 2 else F.avg_pool2d(x[:, None], k)[:, 0]


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


@functools.cache
def _od_lut() -> np.ndarray:
    """Optical density -log10(max(v / 255, 1 / 255)) of each 8-bit value, as torch computes it."""
    x = torch.arange(256, dtype=torch.uint8).float().div_(255.0)
    return x.clamp_min(1.0 / 255.0).log10_().neg_().numpy()


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
    grad_full = torch.from_numpy(kernels.green_gradient_energy(np.ascontiguousarray(tiles)))
    # analysis at about 1 um/px: 2 x 2 means, rounded as PIL's reduce(2) rounds them
    planes, od_means = kernels.pixel_planes(
        kernels.halve(tiles), _od_lut(), HED_FROM_RGB, _BACKGROUND_OD
    )
    gray, hem, eos, res, tissue = torch.from_numpy(planes).unbind(1)
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
    nuc_smooth = torch.from_numpy(kernels.count_above(nuclear.numpy(), 5, 0.5)) / t_count
    hem_2um = _pool2(hem)
    small = torch.from_numpy(kernels.blob_counts(planes[:, 1], 3, 9, 0.04, _NUCLEAR_H))
    large = torch.from_numpy(kernels.blob_counts(hem_2um.numpy(), 5, 9, 0.04, _NUCLEAR_H))
    nuc_h_mean = (hem * nuclear).sum(dim=(1, 2)) / nuc_count.clamp_min(1.0)
    nuc_h_std = ((hem - nuc_h_mean[:, None, None]).square_() * nuclear).sum(dim=(1, 2))
    nuc_h_std = nuc_h_std.div(nuc_count.clamp_min(1.0)).sqrt()

    gray2 = _pool2(gray)
    gray4 = _pool(gray, 4)
    grad1, aniso1 = torch.from_numpy(kernels.gradient_stats(planes[:, 0])).unbind(1)
    grad2 = torch.from_numpy(kernels.gradient_stats(gray2.numpy()))[:, 0]
    grad4, aniso4 = torch.from_numpy(kernels.gradient_stats(gray4.numpy())).unbind(1)
    lap1 = torch.from_numpy(kernels.laplacian_energy(planes[:, 0]))
    lap4 = torch.from_numpy(kernels.laplacian_energy(gray4.numpy()))
    e_grad = torch.from_numpy(kernels.gradient_stats(planes[:, 2]))[:, 0]
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
        *torch.from_numpy(od_means).unbind(1),
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
