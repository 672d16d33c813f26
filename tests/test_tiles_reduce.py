"""The compiled 2 x 2 reduction of 40x patches gives Pillow's pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_hila.features.tile_reader import read_batch, resize_tile


@pytest.mark.parametrize("seed", [0, 1])
def test_halving_equals_pillow_reduce(seed):
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    tile[:8] = 255  # sums at the top of the range
    tile[-8:] = 0
    expected = np.asarray(Image.fromarray(tile).reduce(2))
    np.testing.assert_array_equal(resize_tile(tile, 256), expected)
    batch = np.zeros((3, 256, 256, 3), np.uint8)
    written = resize_tile(tile, 256, out=batch[1])
    assert np.shares_memory(written, batch)  # filled in place, no copy
    np.testing.assert_array_equal(batch[1], expected)
    assert not batch[0].any() and not batch[2].any()
    strided = np.zeros((256, 256, 6), np.uint8)[:, :, ::2]  # not contiguous: copied into
    np.testing.assert_array_equal(resize_tile(tile, 256, out=strided), expected)
    # a view of a larger image (not contiguous) as input
    big = rng.integers(0, 256, (520, 530, 3), dtype=np.uint8)
    view = big[3:515, 7:519]
    np.testing.assert_array_equal(
        resize_tile(view, 256), np.asarray(Image.fromarray(np.ascontiguousarray(view)).reduce(2))
    )


def test_other_factors_and_upscaling_still_go_through_pillow():
    rng = np.random.default_rng(2)
    tile = rng.integers(0, 256, (768, 768, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        resize_tile(tile, 256), np.asarray(Image.fromarray(tile).reduce(3))
    )
    small = tile[:200, :200]
    up = np.asarray(
        Image.fromarray(np.ascontiguousarray(small)).resize((256, 256), Image.Resampling.BILINEAR)
    )
    np.testing.assert_array_equal(resize_tile(small, 256), up)


def test_read_batch_of_40x_patches_equals_reading_and_reducing_each(tmp_path):
    from napari_hila.slides import open_slide
    from napari_hila.slides.synthetic import cached_test_slide

    path = cached_test_slide(2048, 2048, layout="svs", mpp=0.25, cache_dir=tmp_path)
    coords = np.array([[0, 0], [512, 1024], [1300, 700]])
    with open_slide(path) as slide:
        batch = read_batch(slide, coords, 512, 256, 0)
        for tile, (x, y) in zip(batch, coords, strict=True):
            full = slide.read_region((int(x), int(y)), 0, (512, 512))
            np.testing.assert_array_equal(tile, np.asarray(Image.fromarray(full).reduce(2)))
