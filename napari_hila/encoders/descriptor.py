"""A weight-free pathology descriptor: stains, nuclei, texture, background.

Each 256 px tile at about 0.5 um/px becomes a fixed-length vector whose every
dimension has a name a pathologist can read (:data:`DESCRIPTOR_NAMES`). It needs
no weights, runs on one CPU core at over a thousand tiles per second, and is
deterministic, so the whole pipeline works on any machine out of the box.

How the dimensions are computed (compiled loops, one tile at a time:
:mod:`._descriptor_kernels`):

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

DESCRIPTOR_VERSION = "2"

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB/residual),
# the same matrix scikit-image calls rgb_from_hed.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)

_WORK_PX = 128  # analysis resolution: a 256 px tile at 0.5 um/px -> about 1 um/px
NUCLEAR_H = 0.25  # haematoxylin concentration above which a pixel counts as nuclear
BACKGROUND_OD = 0.12  # summed optical density below which a pixel is glass or fat
STAIN_EDGES = (0.1, 0.2, 0.35, 0.5)  # inner edges of the haematoxylin/eosin histogram bins
GRAY_EDGES = (0.3, 0.5, 0.7, 0.85)  # inner edges of the gray histogram bins
_STAIN_BINS = len(STAIN_EDGES) + 1
_GRAY_BINS = len(GRAY_EDGES) + 1

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
    *(f"haematoxylin histogram bin {i + 1}/{_STAIN_BINS}" for i in range(_STAIN_BINS)),
    *(f"eosin histogram bin {i + 1}/{_STAIN_BINS}" for i in range(_STAIN_BINS)),
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
    *(f"gray histogram bin {i + 1}/{_GRAY_BINS}" for i in range(_GRAY_BINS)),
    "local contrast at 8 um (block std of gray)",
    "eosin texture: gradient energy of eosin at 1 um/px",
    "haematoxylin clustering: std of 16 um block nuclear fraction",
)
DESCRIPTOR_DIM = len(DESCRIPTOR_NAMES)


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


def describe_tiles(tiles: np.ndarray | torch.Tensor) -> np.ndarray:
    """Descriptor of each RGB tile: (N, H, W, 3) uint8 -> (N, DESCRIPTOR_DIM) float32.

    Tiles of any size are resampled to 256 px first, so the physical scale is
    the one the grid asked for (0.5 um/px by default).
    """
    tiles = tiles.numpy() if isinstance(tiles, torch.Tensor) else np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected tiles of shape (N, H, W, 3), got {tuple(tiles.shape)}")
    if tiles.dtype != np.uint8:
        raise ValueError(f"expected 8-bit RGB tiles, got {tiles.dtype}")
    if tiles.shape[0] == 0:
        return np.zeros((0, DESCRIPTOR_DIM), np.float32)
    full_px = 2 * _WORK_PX
    if tiles.shape[1:3] != (full_px, full_px):
        tiles = _resize_all(tiles, full_px)
    from napari_hila.encoders import _descriptor_kernels as kernels  # numba: loaded on first use

    return kernels.describe(np.ascontiguousarray(tiles), _od_lut(), HED_FROM_RGB)


def warm_up() -> None:
    """Compile the descriptor (once per installation: the code is cached on disk).

    The first compilation takes 10-20 s; calling this where a user is not
    waiting (installation, opening the viewer) keeps it off their first run.
    """
    describe_tiles(np.zeros((1, 2 * _WORK_PX, 2 * _WORK_PX, 3), np.uint8))


class DescriptorEncoder:
    """The ``hila-descriptor`` vision encoder: :func:`describe_tiles` behind ``encode``."""

    name = "hila-descriptor"
    version = DESCRIPTOR_VERSION
    output_dim = DESCRIPTOR_DIM
    input_size = 2 * _WORK_PX
    feature_names = DESCRIPTOR_NAMES
    device = torch.device("cpu")
    # stateless compiled loops that release the GIL: extraction runs it in the reader threads
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
