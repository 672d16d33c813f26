"""Tissue detection, patch/region grids and their layer data."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_hila.slides import TissueMask, detect_tissue, make_grids, open_slide
from napari_hila.slides.grids import level0_scale, patch_tissue_fractions
from napari_hila.slides.layers import grid_layer_data, slide_layer_data, tissue_layer_data
from napari_hila.slides.tissue import tissue_from_rgb


class _FakeSlide:
    """Just what make_grids reads: size and mpp."""

    def __init__(self, width, height, mpp):
        self.dimensions = (width, height)
        self.mpp = mpp


def test_sample_tissue_fraction_and_location(sample_slide):
    with open_slide(sample_slide) as slide:
        tissue = detect_tissue(slide)
    # the sample is a strip of skin across the middle, glass on the left
    assert 0.25 < tissue.tissue_fraction < 0.55
    assert tissue.downsample == pytest.approx(16, rel=0.05)  # ~8 um/px at 0.499 um/px
    h, w = tissue.mask.shape
    assert tissue.mask[:, : w // 6].mean() < 0.05  # the left edge is glass
    assert tissue.mask[h // 2 :, w // 2 : 3 * w // 4].mean() > 0.8  # the lower middle is tissue


def test_blank_white_slide_has_no_tissue(tmp_path):
    path = tmp_path / "blank.tif"
    rng = np.random.default_rng(0)
    glass = (236 + rng.integers(0, 8, (1536, 1536, 3))).astype(np.uint8)
    tifffile.imwrite(
        path,
        glass,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as slide:
        tissue = detect_tissue(slide)
        grids = make_grids(slide, tissue)
    assert tissue.tissue_fraction < 0.01
    assert grids.num_patches == 0 and grids.num_regions == 0


def test_detect_tissue_reads_small_blocks_never_a_whole_level(tmp_path, monkeypatch):
    """Memory stays flat in the slide's size: the view is filled block by block."""
    from napari_hila.slides import base
    from napari_hila.slides.synthetic import write_test_slide

    path = write_test_slide(tmp_path / "s.svs", 2400, 1800, layout="svs", mpp=0.25)
    limit = 128 * 128
    monkeypatch.setattr(base, "REDUCE_BLOCK", 128)
    with open_slide(path) as slide:
        reads: list[tuple[int, int, int, int, int]] = []
        native = slide._read_level_box

        def guarded(level, x, y, w, h):
            assert w * h <= limit, f"a {w} x {h} px read during tissue detection"
            reads.append((level, x, y, w, h))
            return native(level, x, y, w, h)

        monkeypatch.setattr(slide, "_read_level_box", guarded)
        monkeypatch.setattr(slide, "_stream_level_box", guarded)
        tissue = detect_tissue(slide)
        # 8 um/px on a 0.25 um/px slide: level 1 (1/4) reduced by 8, 600 x 450 -> 75 x 56
        assert tissue.mask.shape == (56, 75) and tissue.downsample == pytest.approx(1800 / 56)
        assert {r[0] for r in reads} == {1}
        assert sum(w * h for *_, w, h in reads) == 600 * 448  # each level-1 pixel read once
        level = native(1, 0, 0, 600, 448).astype(np.float64)
    expected = level.reshape(56, 8, 75, 8, 3).mean(axis=(1, 3))
    with open_slide(path) as slide:
        view, downsample = slide.read_reduced(32.0)
    assert downsample == pytest.approx(1800 / 56)  # the coarser axis, as the mask uses
    assert np.abs(view - expected).max() <= 0.5 + 1e-9  # the exact box mean, rounded


def test_tissue_from_rgb_removes_specks_and_fills_holes():
    image = np.full((200, 200, 3), 240, np.uint8)
    image[50:150, 50:150] = (180, 90, 160)  # a 800 um square of tissue at 8 um/px
    image[95:100, 95:100] = 240  # a small hole inside it
    image[10:12, 10:12] = (180, 90, 160)  # a speck
    mask = tissue_from_rgb(image, 8.0)
    assert mask[51:149, 51:149].all()  # hole filled (the median filter rounds corners)
    assert not mask[:40].any() and not mask[:, :40].any()


@pytest.mark.parametrize(
    ("mpp", "patch", "region"),
    [(0.25, 512, 8192), (0.2525, 512, 8192), (0.499, 256, 4096), (1.0, 128, 2048)],
)
def test_patch_size_follows_mpp(mpp, patch, region):
    slide = _FakeSlide(20_000, 10_000, mpp)
    tissue = TissueMask(np.ones((100, 200), bool), downsample=100.0)
    grids = make_grids(slide, tissue)
    assert (grids.patch_size, grids.region_size) == (patch, region)
    assert grids.num_patches == (20_000 // patch) * (10_000 // patch)


def test_unsnapped_scale_is_kept():
    assert level0_scale(0.35, 0.5) == pytest.approx(0.5 / 0.35)
    assert level0_scale(0.2431, 0.5) == 2.0


def test_grids_regions_contain_their_patches():
    slide = _FakeSlide(30_000, 17_000, 0.25)
    mask = np.zeros((170, 300), bool)
    mask[20:90, 30:160] = True
    mask[120:165, 250:299] = True
    grids = make_grids(slide, TissueMask(mask, downsample=100.0))
    assert grids.num_patches > 0
    px, ps = grids.patch_coords, grids.patch_size
    assert (px >= 0).all() and (px[:, 0] + ps <= 30_000).all() and (px[:, 1] + ps <= 17_000).all()
    assert (px % ps == 0).all()
    region = grids.region_coords[grids.patch_to_region]
    rs = grids.region_size
    assert ((px >= region) & (px + ps <= region + rs)).all()
    # every region holds at least one patch, and no region is listed twice
    assert set(grids.patch_to_region.tolist()) == set(range(grids.num_regions))
    assert len(np.unique(grids.region_coords, axis=0)) == grids.num_regions
    # kept patches meet the tissue threshold, measured independently on the mask
    for (x, y), fraction in zip(px[:50], grids.patch_tissue[:50], strict=True):
        cell = mask[y // 100 : (y + ps) // 100 + 1, x // 100 : (x + ps) // 100 + 1]
        assert cell.any() and fraction >= grids.min_tissue


def test_small_slide_gets_one_region(sample_slide):
    with open_slide(sample_slide) as slide:
        grids = make_grids(slide, detect_tissue(slide))
    assert grids.patch_size == 256 and grids.num_regions == 1
    np.testing.assert_array_equal(grids.region_coords, [[0, 0]])
    assert (grids.patch_to_region == 0).all() and 20 < grids.num_patches < 88


def test_patch_tissue_fractions_exact_on_aligned_mask():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[0, 1] = mask[1, 0] = True  # 3 of the 4 pixels of patch (0, 0)
    fractions = patch_tissue_fractions(TissueMask(mask, 10.0), 20, 2, 2)
    np.testing.assert_allclose(fractions, [[0.75, 0.0], [0.0, 0.0]])


def test_min_tissue_threshold_is_a_setting():
    slide = _FakeSlide(1024, 1024, 0.5)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True  # a quarter of patch (0, 0) at downsample 128
    tissue = TissueMask(mask, 128.0)
    assert make_grids(slide, tissue, min_tissue=0.25).num_patches == 1
    assert make_grids(slide, tissue, min_tissue=0.5).num_patches == 0


def test_layer_data_in_micrometres(sample_slide):
    with open_slide(sample_slide) as slide:
        data, kwargs, kind = slide_layer_data(slide)
        tissue = detect_tissue(slide)
        grids = make_grids(slide, tissue)
        assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
        assert kwargs["scale"] == (0.499, 0.499) and kwargs["units"] == ("um", "um")
        assert [a.shape for a in data] == [(2967, 2220, 3), (1483, 1110, 3)]
        meta = kwargs["metadata"]
        assert meta["vendor"] == "aperio" and meta["objective_power"] == 20
        assert meta["mpp_is_assumed"] is False and meta["fingerprint"] == slide.fingerprint()
        assert meta["properties"]["aperio.MPP"] == "0.4990"
        mask, tkw, tkind = tissue_layer_data(tissue, slide.mpp)
        assert tkind == "labels" and mask.dtype == np.uint8
        assert tkw["scale"][0] == pytest.approx(tissue.downsample * 0.499)
        rects, gkw, gkind = grid_layer_data(grids, "patch")
        assert gkind == "shapes" and rects.shape == (grids.num_patches, 4, 2)
        x, y = grids.patch_coords[0]
        np.testing.assert_allclose(rects[0, 0], [y - 0.5, x - 0.5])
        np.testing.assert_allclose(rects[0, 2], [y + 255.5, x + 255.5])
