"""Tiles are prepared as each encoder's owners prepare images, checked against PIL itself.

The owners' transforms (open_clip and CONCH: torchvision ``Resize(size, BICUBIC)`` +
``CenterCrop`` on a PIL image; transformers: ``CLIPImageProcessor``'s PIL path) all
resize with PIL. The reference here is PIL, and transformers' own PIL processor;
the image is crafted (a one-pixel checkerboard, a hard edge, noise) so that the
wrong filter is tens of grey levels off, not one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from napari_hila.encoders.preprocess import ImagePreprocess
from napari_hila.encoders.registry import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

#: PIL's 8-bit fixed-point weights against torch's float ones: at most this many grey levels
LEVELS = 2.0
PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def crafted(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Red: one-pixel checkerboard (aliasing); green: a hard edge (overshoot); blue: noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 255 * ((xx + yy) % 2)
    img[..., 1] = np.where(xx > width // 3, 235, 15)
    img[..., 2] = rng.integers(0, 256, (height, width))
    return img


def owner_pixels(img: np.ndarray, size: int, mean, std, filt: str = "bicubic") -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(size) + ToTensor + Normalize on a PIL image."""
    pil = Image.fromarray(img)
    w, h = pil.size
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    pil = pil.resize((nw, nh), PIL_FILTERS[filt])
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    pil = pil.crop((left, top, left + size, top + size))
    x = np.asarray(pil, np.float32) / 255.0
    return ((x - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1).astype(np.float32)


def grey_levels(a: np.ndarray, b: np.ndarray, std) -> np.ndarray:
    """|a - b| of normalised pixels (C, H, W), back in 0..255 grey levels."""
    return np.abs(a - b) * np.asarray(std, np.float32).reshape(3, 1, 1) * 255.0


def _old_bilinear(img: np.ndarray, size: int, mean, std) -> np.ndarray:
    """What the loaders did before: torch bilinear (antialiased) straight to the size."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return ((x - m) / s)[0].numpy()


@pytest.mark.parametrize(
    ("shape", "size"),
    [((256, 256), 224), ((256, 256), 448), ((1024, 1024), 224), ((64, 64), 32), ((256, 300), 224)],
    ids=["256->224", "256->448 (CONCH)", "1024->224", "64->32", "non-square"],
)
def test_bicubic_resize_and_crop_match_pil(shape, size):
    img = crafted(*shape)
    pre = ImagePreprocess(size, CLIP_MEAN, CLIP_STD, "bicubic")
    got = pre(torch.from_numpy(img)[None])[0].numpy()
    want = owner_pixels(img, size, CLIP_MEAN, CLIP_STD, "bicubic")
    assert got.shape == want.shape == (3, size, size)
    diff = grey_levels(got, want, CLIP_STD)
    assert diff.max() <= LEVELS and diff.mean() < 0.1, (diff.max(), diff.mean())
    if shape[0] == shape[1]:
        # the filter the loaders used before is far off on this image: the check can fail
        wrong = grey_levels(_old_bilinear(img, size, CLIP_MEAN, CLIP_STD), want, CLIP_STD)
        assert wrong.max() > 5 * LEVELS, wrong.max()


def test_bilinear_encoders_match_pils_bilinear_and_differ_from_bicubic():
    img = crafted(256, 256)
    pre = ImagePreprocess(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    got = pre(torch.from_numpy(img)[None])[0].numpy()
    want = owner_pixels(img, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert grey_levels(got, want, IMAGENET_STD).max() <= LEVELS
    bicubic = owner_pixels(img, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    assert grey_levels(got, bicubic, IMAGENET_STD).max() > 10 * LEVELS


def test_tiles_at_the_input_size_pass_unchanged():
    img = crafted(224, 224)
    got = ImagePreprocess(224, CLIP_MEAN, CLIP_STD)(torch.from_numpy(img)[None])[0].numpy()
    np.testing.assert_allclose(got, owner_pixels(img, 224, CLIP_MEAN, CLIP_STD), atol=1e-5)


@pytest.mark.parametrize("shape", [(256, 256), (256, 300)])
def test_transformers_clip_image_processor_agrees(shape):
    """transformers' own CLIPImageProcessor (PIL path: PLIP's and CLIP's preprocessing)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    img = crafted(*shape, seed=3)
    processor = CLIPImageProcessorPil()
    want = processor(images=[img], return_tensors="np")["pixel_values"][0]
    got = ImagePreprocess(224, CLIP_MEAN, CLIP_STD)(torch.from_numpy(img)[None])[0].numpy()
    assert grey_levels(got, want, CLIP_STD).max() <= LEVELS


@pytest.mark.parametrize("filt", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("side", "size"), [(256, 224), (256, 448), (1024, 224)])
def test_the_gpu_path_float_passes_match_pil_too(filt, side, size):
    """On a GPU tiles are resized as floats (no 8-bit kernels there): the same agreement."""
    from napari_hila.encoders.preprocess import resize_like_pil

    img = crafted(side, side, seed=5)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    got = resize_like_pil(x, (size, size), filt)[0].permute(1, 2, 0).numpy()
    want = np.asarray(Image.fromarray(img).resize((size, size), PIL_FILTERS[filt]), np.float32)
    assert got.dtype == np.float32 and np.abs(got - want).max() <= LEVELS
    assert np.array_equal(got, np.round(got))  # whole grey levels, as PIL's 8-bit image
