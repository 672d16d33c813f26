"""The descriptor's colour deconvolution against scikit-image's (Ruifrok & Johnston HED).

``skimage.color.rgb2hed`` computes stains as ``log(max(rgb, 1e-6)) / log(1e-6) @
hed_from_rgb``, i.e. ``-log10(rgb) / 6`` times the same matrix, clipped at 0; the
descriptor uses optical density ``-log10(max(v / 255, 1 / 255))``, so away from
black (v = 0, where the two clamps differ) its stain planes are 6 x skimage's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.color import hed_from_rgb, rgb2hed, rgb_from_hed

from napari_hila.encoders import _descriptor_kernels as kernels
from napari_hila.encoders import descriptor

SKIMAGE_OD_SCALE = 6.0  # log(1e-6) / log(10 ** -1): skimage's optical density is -log10 / 6


def test_stain_matrix_is_scikit_images():
    np.testing.assert_array_equal(descriptor._RGB_FROM_HED, rgb_from_hed)
    np.testing.assert_allclose(descriptor.HED_FROM_RGB, hed_from_rgb, rtol=1e-6, atol=1e-7)


def test_stain_planes_match_rgb2hed_on_the_half_size_tile():
    """H, E and residual planes of a random H&E-coloured tile (no black pixel) equal
    6 x ``rgb2hed`` of the tile halved as the kernel halves it (``Image.reduce(2)``)."""
    rng = np.random.default_rng(3)
    pink = np.array([230, 160, 200]) - rng.integers(0, 140, (256, 256, 1)) * [1.0, 1.2, 0.5]
    tile = (pink + rng.integers(-25, 25, (256, 256, 3))).clip(1, 255).astype(np.uint8)
    planes, _ = kernels.pixel_planes(tile, descriptor._od_lut(), descriptor.HED_FROM_RGB)
    half = np.asarray(Image.fromarray(tile).reduce(2))
    reference = SKIMAGE_OD_SCALE * rgb2hed(half)
    for s, stain in enumerate(("haematoxylin", "eosin", "residual")):
        np.testing.assert_allclose(planes[1 + s], reference[..., s], atol=2e-5, err_msg=stain)
    assert (reference[..., 0] > 0.25).mean() > 0.05  # the nuclear threshold is reached somewhere
    np.testing.assert_allclose(planes[0], half.mean(axis=2) / 255.0, atol=1e-6)  # gray
