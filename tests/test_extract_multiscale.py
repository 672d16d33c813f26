"""Multi-magnification extraction (5x/10x/20x from the same tissue) for CrossFusion."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hila.errors import HilaError
from napari_hila.features.extract import extract_slide
from napari_hila.features.multiscale import coarse_grid, parse_magnification
from napari_hila.features.store import load_features


def test_coarse_grid_contains_every_patch():
    main = np.array([[0, 0], [256, 0], [512, 256], [768, 768], [256, 1024]], np.int64)
    coords, index = coarse_grid(main, 512)
    np.testing.assert_array_equal(coords, [[0, 0], [512, 0], [512, 512], [0, 1024]])
    np.testing.assert_array_equal(index, [0, 0, 1, 2, 3])
    assert ((main >= coords[index]) & (main + 256 <= coords[index] + 512)).all()


def test_parse_magnification():
    assert parse_magnification("10x") == 10 and parse_magnification(" 2.5X ") == 2.5
    with pytest.raises(HilaError, match="like 5x"):
        parse_magnification("ten")


def test_sample_at_three_magnifications(sample_slide, tmp_path):
    from napari_hila.encoders.descriptor import describe_tiles
    from napari_hila.features.tile_reader import read_tile
    from napari_hila.slides import open_slide

    path = extract_slide(
        sample_slide,
        tmp_path,
        magnifications=("20x", "5x", "10x"),
        region_mode="mean",
        device="cpu",
    )
    feats = load_features(path)
    assert set(feats.scales) == {"10x", "5x"}
    assert (
        feats.attrs["magnifications"] == "5x,10x,20x" and feats.attrs["main_magnification"] == "20x"
    )
    main = feats.coords
    for name, size in (("10x", 512), ("5x", 1024)):
        f, c = feats.scales[name]
        idx = feats.extras[f"cross_scale_index_{name}"]
        assert f.shape == (len(c), feats.features.shape[1]) and idx.shape == (len(main),)
        assert len(c) < len(main) and len(np.unique(idx)) == len(c)
        inside = (main >= c[idx]) & (main + feats.patch_size <= c[idx] + size)
        assert inside.all()
        with open_slide(sample_slide) as slide:
            tile = read_tile(slide, *c[0], size, 256)
        np.testing.assert_allclose(f[0], describe_tiles(tile[None])[0], atol=1e-6)
    # The 20x grid is the ordinary one: same as a plain extraction.
    plain = load_features(extract_slide(sample_slide, tmp_path, region_mode="mean", device="cpu"))
    np.testing.assert_allclose(feats.features, plain.features, atol=1e-6)


def test_finer_than_main_grid_is_refused(sample_slide, tmp_path):
    with pytest.raises(HilaError, match="40x cannot be built"):
        extract_slide(sample_slide, tmp_path, magnifications=("40x",), region_mode="mean")


def test_coarse_tiles_come_from_pyramid_levels(tmp_path):
    from napari_hila.features.tile_reader import read_tile, resize_tile
    from napari_hila.slides import open_slide
    from napari_hila.slides.base import pick_level
    from napari_hila.slides.synthetic import write_test_slide

    path = write_test_slide(tmp_path / "pyr.svs", 4096, 4096, layout="svs", mpp=0.5)
    with open_slide(path) as slide:
        assert slide.level_downsamples[1] == 4
        assert pick_level(slide.level_downsamples, 1024 / 256) == 1  # 5x tile from the 4x level
        assert pick_level(slide.level_downsamples, 512 / 256) == 0  # no 2x level: level 0
        from_level = read_tile(slide, 1024, 1024, 1024, 256).astype(float)
        from_full = resize_tile(slide.read_region((1024, 1024), 0, (1024, 1024)), 256).astype(float)
    assert np.abs(from_level - from_full).mean() < 8  # same tissue, JPEG-level differences
