"""open_slide: both backends give OpenSlide's pixels, levels, mpp and metadata."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from napari_hila.errors import SlideError
from napari_hila.slides import ASSUMED_MPP, detect_tissue, make_grids, open_slide
from napari_hila.slides.layers import slide_metadata
from napari_hila.slides.synthetic import expected_level_count, write_test_slide
from napari_hila.slides.tissue import saturation

W, H = 2400, 1800  # small enough to write in about a second, big enough for levels


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """Generated slides by layout (plus one flat slide without mpp)."""
    folder = tmp_path_factory.mktemp("synthetic")
    slides = {
        "svs": write_test_slide(folder / "s.svs", W, H, layout="svs", mpp=0.25),
        "ome": write_test_slide(folder / "s.ome.tif", W, H, layout="ome", mpp=0.5),
        "flat": write_test_slide(folder / "flat.tif", W, H, layout="flat", mpp=0.25),
        "pages": write_test_slide(folder / "pages.tif", W, H, layout="pages", mpp=0.25),
        "nompp": write_test_slide(folder / "nompp.tif", 1200, 900, layout="flat", mpp=None),
    }
    return slides


def _regions(level_w: int, level_h: int) -> list[tuple[int, int, int, int]]:
    """Level-pixel boxes: origin, interior crossing tile borders, right/bottom edges, outside."""
    return [
        (0, 0, 300, 300),
        (230, 250, 300, 40),  # crosses the 240/256 px tile borders
        (level_w - 100, level_h - 60, 256, 256),  # slide edge: part outside
        (-10, -20, 64, 64),  # before the slide's origin
    ]


def _assert_matches_openslide(path, backend, levels):
    ref = openslide.OpenSlide(str(path))
    with open_slide(path, backend=backend) as slide:
        for level in levels:
            ds = ref.level_downsamples[level]
            lw, lh = ref.level_dimensions[level]
            for lx, ly, w, h in _regions(lw, lh):
                loc = (int(round(lx * ds)), int(round(ly * ds)))
                expected = np.asarray(ref.read_region(loc, level, (w, h)))
                got = slide.read_region(loc, level, (w, h))
                assert got.shape == (h, w, 3) and got.dtype == np.uint8
                inside = expected[..., 3] == 255
                np.testing.assert_array_equal(got[inside], expected[..., :3][inside])
                assert (got[~inside] == 255).all(), "outside the slide must be white"
    ref.close()


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_sample_pixels_equal_openslide(sample_slide, backend):
    _assert_matches_openslide(sample_slide, backend, levels=[0])


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_generated_svs_pixels_equal_openslide_on_every_level(synthetic, backend):
    # level 1 has an exact 4x downsample; compare it edges included
    _assert_matches_openslide(synthetic["svs"], backend, levels=[0, 1])


def test_pyramid_chunks_equal_openslide(synthetic):
    path = synthetic["svs"]
    ref = openslide.OpenSlide(str(path))
    with open_slide(path, backend="tifffile") as slide:
        pyramid = slide.pyramid()
        for level, array in enumerate(pyramid[: ref.level_count]):
            assert array.dtype == np.uint8 and array.shape[2] == 3
            assert array.chunksize[:2] == (256, 256), "chunks must be the file's tiles"
            lw, lh = ref.level_dimensions[level]
            assert array.shape[:2] == (lh, lw)
            block = array[100:400, 150:550].compute()  # crosses tile borders
            ds = ref.level_downsamples[level]
            expected = np.asarray(
                ref.read_region((round(150 * ds), round(100 * ds)), level, (400, 300))
            )
            np.testing.assert_array_equal(block, expected[..., :3])


def test_levels_mpp_and_metadata_of_sample(sample_slide):
    with open_slide(sample_slide) as slide:
        assert slide.backend == "tifffile"  # faster on Aperio, see `napari-hila bench io`
        assert slide.level_dimensions == [(2220, 2967)]
        assert slide.mpp == pytest.approx(0.499) and not slide.mpp_is_assumed
        assert slide.objective_power == 20
        assert slide.vendor == "aperio"
        assert slide.tile_size == (240, 240)
        assert set(slide.associated_image_names) == {"label", "macro", "thumbnail"}
        label = slide.read_associated("label")
        assert label.shape == (463, 387, 3) and label.dtype == np.uint8
        assert slide.properties["aperio.AppMag"] == "20"
    with open_slide(sample_slide, backend="openslide") as slide:
        assert slide.mpp == pytest.approx(0.499) and slide.objective_power == 20
        assert slide.vendor == "aperio" and slide.tile_size == (240, 240)
        assert set(slide.associated_image_names) == {"label", "macro", "thumbnail"}
        np.testing.assert_array_equal(slide.read_associated("macro").shape, (431, 1280, 3))


def test_generated_svs_is_multilevel_for_openslide(synthetic):
    ref = openslide.OpenSlide(str(synthetic["svs"]))
    assert ref.level_count == expected_level_count(W, H, "svs") == 2
    assert ref.properties["openslide.vendor"] == "aperio"
    assert float(ref.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    with open_slide(synthetic["svs"]) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_dimensions == [(W, H), (W // 4, H // 4)]
        assert "label" in slide.associated_image_names


@pytest.mark.parametrize("layout", ["ome", "pages"])
def test_tiff_pyramids_openslide_sees_as_one_level_use_tifffile(synthetic, layout):
    path = synthetic[layout]
    assert openslide.OpenSlide(str(path)).level_count == 1
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_count == expected_level_count(W, H, layout) == 3
        assert slide.level_dimensions == [(W, H), (W // 2, H // 2), (W // 4, H // 4)]
        assert slide.level_downsamples == [1.0, 2.0, 4.0]
        assert slide.mpp == pytest.approx(0.5 if layout == "ome" else 0.25)
        assert slide.vendor == ("ome-tiff" if layout == "ome" else "generic-tiff")
    # level 0 is the same image OpenSlide reads
    _assert_matches_openslide(path, "tifffile", levels=[0])


def test_flat_slide_gets_lazy_coarser_levels(synthetic):
    with open_slide(synthetic["flat"]) as slide:
        assert slide.level_count == 1
        pyramid = slide.pyramid()
        assert [a.shape[:2] for a in pyramid] == [(H, W), (H // 2, W // 2)]
        assert slide.pyramid_downsamples() == [1.0, 2.0]
        # on tissue (saturated, textured), the coarse level is the 2x2 mean of level 0 up
        # to the DCT-scaled decode's error: mean |error| 1.5 and 99th percentile 10 grey
        # levels measured; taking every other pixel instead gives 9 and 67
        full = slide.read_region((1024, 1024), 0, (512, 512)).astype(np.float64)
        assert saturation(full.astype(np.uint8)).mean() > 0.15, "the box must be tissue"
        expected = full.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        got = pyramid[1][512:768, 512:768].compute().astype(np.float64)
        error = np.abs(got - expected)
        assert error.mean() < 2.5 and np.percentile(error, 99) < 15
        assert abs(got.mean() - expected.mean()) < 0.5  # no brightness bias


def test_missing_mpp_is_assumed_and_flagged(synthetic):
    with open_slide(synthetic["nompp"]) as slide:
        assert slide.mpp_is_assumed and slide.mpp == ASSUMED_MPP
        assert slide.mpp_source == "assumed"


def test_user_mpp_supplies_a_missing_one_and_sets_the_grid(synthetic):
    """0.25 um/px given for a slide without mpp: 40x, so 512 px level-0 patches."""
    with open_slide(synthetic["nompp"], mpp=0.25) as slide:
        assert slide.mpp == 0.25 and not slide.mpp_is_assumed and slide.mpp_source == "user"
        tissue = detect_tissue(slide)
        grids = make_grids(slide, tissue)
        assert grids.patch_size == 512 and grids.region_size == 8192 and grids.mpp == 0.25
        assert slide_metadata(slide)["mpp_source"] == "user"
    with open_slide(synthetic["nompp"]) as slide:  # the assumed 0.5 gives 256 px patches
        assert make_grids(slide, detect_tissue(slide)).patch_size == 256


def test_user_mpp_overrides_the_file_value(synthetic):
    with open_slide(synthetic["svs"]) as slide:
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "file"
    with open_slide(synthetic["svs"], mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "user" and not slide.mpp_is_assumed


@pytest.mark.parametrize("bad", [0, -0.25, 0.01, 25.0, float("nan"), float("inf"), "abc"])
def test_implausible_user_mpp_is_refused_with_the_range(synthetic, bad):
    with pytest.raises(SlideError, match=r"nompp\.tif: mpp .* between 0\.05 and 20"):
        open_slide(synthetic["nompp"], mpp=bad)


def test_fingerprint_stable_and_content_based(sample_slide, sample_copy, synthetic):
    with open_slide(sample_slide) as a, open_slide(sample_copy, backend="tifffile") as b:
        assert a.fingerprint() == a.fingerprint() == b.fingerprint()  # name and backend free
        assert len(a.fingerprint()) == 32
    with open_slide(synthetic["svs"]) as c, open_slide(synthetic["pages"]) as d:
        assert len({a.fingerprint(), c.fingerprint(), d.fingerprint()}) == 3


def test_thumbnail_respects_max_side(sample_slide):
    with open_slide(sample_slide) as slide:
        thumb = slide.get_thumbnail(300)
        assert max(thumb.shape[:2]) == 300 and thumb.shape[2] == 3
        assert thumb.shape[0] == round(2967 * 300 / 2967) and abs(thumb.shape[1] - 224) <= 1


def test_read_region_rejects_missing_level(sample_slide):
    with open_slide(sample_slide) as slide, pytest.raises(ValueError, match="level 3"):
        slide.read_region((0, 0), 3, (10, 10))


def test_level_views_slice_like_numpy(sample_slide):
    with open_slide(sample_slide) as slide:
        view = slide.level_arrays()[0]
        whole = slide.read_region((0, 0), 0, slide.dimensions)
        assert view.shape == whole.shape and view.dtype == np.uint8 and view.ndim == 3
        for key in [
            (slice(100, 400), slice(230, 530)),
            (slice(2900, None), slice(None, 50)),
            (slice(0, 600, 3), slice(10, 700, 2)),
            (17, slice(5, 300)),
            (slice(5, 9), 2000, slice(0, 2)),
            (slice(300, 300), slice(0, 10)),
        ]:
            np.testing.assert_array_equal(view[key], whole[key])
        coarse = slide.level_arrays()[1]
        np.testing.assert_array_equal(np.asarray(coarse), slide.pyramid()[1].compute())


def test_ycbcr_subsampled_jpeg_svs_equals_openslide(tmp_path, sample_slide):
    """Most scanners store YCbCr 4:2:0 JPEG tiles; tifffile must decode them as OpenSlide does."""
    with open_slide(sample_slide) as sample:
        tissue = sample.read_region((0, 0), 0, (1024, 1024))
    head = "Aperio Image Library v12.0.0 \r\n1024x1024"
    path = tmp_path / "ycc.svs"
    options = dict(tile=(256, 256), compression="jpeg", photometric="ycbcr", subsampling=(2, 2))
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            tissue,
            description=f"{head} [0,0 1024x1024] (256x256) JPEG/YCC|MPP = 0.5",
            metadata=None,
            **options,
        )
        tif.write(
            tissue[::8, ::8],
            description=f"{head} -> 128x128 - |",
            metadata=None,
            compression="jpeg",
            photometric="rgb",
        )
        tif.write(
            np.ascontiguousarray(tissue[::4, ::4]),
            description=f"{head} -> 256x256 - |",
            metadata=None,
            **options,
        )
    with open_slide(path) as slide:
        assert slide.backend == "tifffile" and slide.level_dimensions == [(1024, 1024), (256, 256)]
    _assert_matches_openslide(path, "tifffile", levels=[0, 1])


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_off_grid_reads_on_reduced_levels_snap_down_to_the_level_grid(synthetic, backend):
    """A level-0 location between level-1 pixels reads the file's pixels from floor(x / ds).

    OpenSlide instead shifts the level by the fraction and interpolates (up to
    hundreds of grey levels apart on sharp edges); napari-hila keeps the file's
    exact pixels, so its result equals OpenSlide's at the snapped location,
    negative locations included (floor, not truncation toward zero).
    """
    ref = openslide.OpenSlide(str(synthetic["svs"]))
    ds = ref.level_downsamples[1]
    assert ds == 4.0
    with open_slide(synthetic["svs"], backend=backend) as slide:
        for x, y in [(1001, 802), (1002, 803), (1003, 1), (-10, -6), (-1, -4), (-5, 7)]:
            snapped = (int(np.floor(x / ds) * ds), int(np.floor(y / ds) * ds))
            expected = np.asarray(ref.read_region(snapped, 1, (64, 48)))
            got = slide.read_region((x, y), 1, (64, 48))
            inside = expected[..., 3] == 255
            np.testing.assert_array_equal(got[inside], expected[..., :3][inside])
            assert (got[~inside] == 255).all()
        # (-10, -6) at 1/4: level pixel (0, 0) lands at column 3 (floor(-2.5) = -3), row 2
        corner = slide.read_region((-10, -6), 1, (8, 8))
        level = slide.read_region((0, 0), 1, (5, 6))
        assert (corner[:2] == 255).all() and (corner[:, :3] == 255).all()
        np.testing.assert_array_equal(corner[2:, 3:], level)
    off_grid = np.asarray(ref.read_region((1002, 802), 1, (64, 48)))[..., :3]
    on_grid = np.asarray(ref.read_region((1000, 800), 1, (64, 48)))[..., :3]
    assert np.abs(off_grid.astype(int) - on_grid).max() > 20, "OpenSlide interpolates"
    ref.close()
