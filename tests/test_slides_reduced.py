"""Coarse levels from reduced tile decodes: JPEG DCT scaling vs full decode + area mean."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_hila.slides import base, open_slide, tiff_tile_reads
from napari_hila.slides.jpeg import decode_jpeg_scaled, jpeg_segments, tiff_jpeg_stream
from napari_hila.slides.synthetic import write_test_slide

W, H = 1200, 900  # 5 x 4 tiles of 256 px, the last column and row partly outside
TILES = 20
COARSEST_SIDE = 40  # so the small slide gets five computed levels, as a 50,000 px one


@pytest.fixture(autouse=True)
def overview_cache(tmp_path, monkeypatch):
    """A private, empty overview cache: these tests count what computing the overview decodes."""
    folder = tmp_path / "overviews"
    monkeypatch.setenv("NAPARI_HILA_OVERVIEW_CACHE", str(folder))
    return folder


def area_mean(image: np.ndarray, scale: int) -> np.ndarray:
    """Each scale x scale block's mean (the exact downsample DCT scaling estimates)."""
    h, w = image.shape[0] // scale * scale, image.shape[1] // scale * scale
    blocks = image[:h, :w].astype(np.float64).reshape(h // scale, scale, w // scale, scale, 3)
    return blocks.mean(axis=(1, 3))


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """A flat (no pyramid) JPEG-tiled slide: YCbCr 4:2:0 tiles with a JFIF marker."""
    return write_test_slide(tmp_path_factory.mktemp("flat") / "flat.tif", W, H, layout="flat")


@pytest.fixture(scope="module")
def tissue(sample_slide):
    with open_slide(sample_slide) as slide:
        return slide.read_region((0, 0), 0, (1024, 768))


def _counting(monkeypatch) -> dict[str, list]:
    """Count full tile decodes and DCT-scaled decodes (by scale) from here on."""
    calls: dict[str, list] = {"full": [], "scaled": []}
    full, scaled = tiff_tile_reads.TiledLevel._decode_tile, tiff_tile_reads.decode_jpeg_scaled

    def counted_full(self, row, column):
        calls["full"].append((row, column))
        return full(self, row, column)

    def counted_scaled(stream, size, scale, colorspace):
        calls["scaled"].append(scale)
        return scaled(stream, size, scale, colorspace)

    monkeypatch.setattr(tiff_tile_reads.TiledLevel, "_decode_tile", counted_full)
    monkeypatch.setattr(tiff_tile_reads, "decode_jpeg_scaled", counted_scaled)
    return calls


def test_abbreviated_tile_with_jpegtables_decodes_like_the_complete_stream(tissue):
    buf = io.BytesIO()
    Image.fromarray(tissue[:256, :256]).save(buf, "JPEG", quality=90, subsampling="4:2:0")
    complete = buf.getvalue()
    # split it the way TIFF writers do: tables in JPEGTables, the rest in the tile
    segments, scan = jpeg_segments(complete)
    is_table = [marker in (0xDB, 0xC4) for marker, _ in segments]
    assert sum(is_table) >= 3, "the split must move the quantisation and Huffman tables"
    pairs = list(zip(segments, is_table, strict=True))
    tables = b"\xff\xd8" + b"".join(seg for (_, seg), table in pairs if table) + b"\xff\xd9"
    tile = b"\xff\xd8" + b"".join(seg for (_, seg), table in pairs if not table) + complete[scan:]
    with pytest.raises(ValueError, match="cannot decode"):  # no tables: not decodable
        decode_jpeg_scaled(tile, (256, 256), 1, "YCbCr")
    stream, size = tiff_jpeg_stream(tile, tables)
    assert size == (256, 256)
    full = np.asarray(Image.open(io.BytesIO(complete)).convert("RGB"))
    np.testing.assert_array_equal(decode_jpeg_scaled(stream, size, 1, "YCbCr"), full)
    for scale in (2, 4, 8):
        reduced = decode_jpeg_scaled(stream, size, scale, "YCbCr")
        assert reduced.shape == (256 // scale, 256 // scale, 3)
        assert np.abs(reduced - area_mean(full, scale)).mean() < 1.5


def test_aperio_rgb_tiles_with_jpegtables_scale_like_their_full_decode(sample_slide):
    """CMU-1's tiles are abbreviated RGB JPEGs whose component ids libjpeg would take for YCbCr."""
    with tifffile.TiffFile(sample_slide) as tif:
        page = tif.pages[0]
        assert page.jpegtables is not None and page.photometric == tifffile.PHOTOMETRIC.RGB
        index = 40
        tif.filehandle.seek(page.dataoffsets[index])
        raw = tif.filehandle.read(page.databytecounts[index])
        full = page.decode(raw, index, jpegtables=page.jpegtables)[0][0]
    stream, size = tiff_jpeg_stream(raw, page.jpegtables)
    assert size == (240, 240)
    np.testing.assert_array_equal(decode_jpeg_scaled(stream, size, 1, "RGB"), full)
    for scale in (2, 4, 8):
        error = np.abs(decode_jpeg_scaled(stream, size, scale, "RGB") - area_mean(full, scale))
        assert error.mean() < 1.0
    wrong = np.abs(decode_jpeg_scaled(stream, size, 8, "YCbCr") - area_mean(full, 8)).mean()
    assert wrong > 20, "the photometric tag, not libjpeg's guess, must set the colour space"


def test_flat_slide_levels_are_dct_scaled_and_close_to_area_means(flat, monkeypatch):
    monkeypatch.setattr(base, "MAX_COARSEST_SIDE", COARSEST_SIDE)
    with open_slide(flat) as slide:
        full = slide.read_region((0, 0), 0, (W, H))
        levels = slide.level_arrays()
        assert [a.shape[:2] for a in levels] == [(H >> k, W >> k) for k in range(6)]
        assert slide.pyramid_downsamples() == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
        calls = _counting(monkeypatch)
        for k in (1, 2, 3):
            level = np.asarray(levels[k])
            error = np.abs(level - area_mean(full, 2**k))
            assert error.mean() < 1.5 and np.percentile(error, 99) < 10
        assert calls["full"] == [] and sorted(set(calls["scaled"])) == [2, 4, 8]
        assert len(calls["scaled"]) == 3 * TILES  # each tile once per scale


def test_flat_slide_coarsest_level_needs_no_full_decode(flat, monkeypatch):
    monkeypatch.setattr(base, "MAX_COARSEST_SIDE", COARSEST_SIDE)
    calls = _counting(monkeypatch)
    with open_slide(flat) as slide:
        calls["full"].clear()  # open_slide's probe decodes one tile to check the file
        coarsest = np.asarray(slide.level_arrays()[-1])
    assert coarsest.shape == (H // 32, W // 32, 3)
    assert calls["full"] == [], "the overview must not decode tiles at full size"
    assert calls["scaled"] == [8] * TILES  # every tile once, at 1/8
    # the reference method (2x2 means of full decodes) gives nearly the same overview
    calls["scaled"].clear()
    with open_slide(flat) as slide:
        slide.reduced_decode = False
        reference = np.asarray(slide.level_arrays()[-1])
    assert len(set(calls["full"])) == TILES and calls["scaled"] == []
    assert np.abs(coarsest.astype(int) - reference).mean() < 1.0
    assert np.abs(coarsest.astype(int) - reference).max() <= 6


def test_non_jpeg_flat_slide_levels_equal_2x2_means_exactly(tmp_path, tissue, monkeypatch):
    path = tmp_path / "deflate.tif"
    tifffile.imwrite(path, tissue, tile=(256, 256), compression="zlib", photometric="rgb")
    monkeypatch.setattr(base, "MAX_COARSEST_SIDE", 100)
    calls = _counting(monkeypatch)
    with open_slide(path) as fast, open_slide(path) as reference:
        reference.reduced_decode = False
        got, expected = fast.level_arrays(), reference.level_arrays()
        assert len(got) == 5  # 1024 -> 512 -> 256 -> 128 -> 64 px wide
        for k in range(1, 5):
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(expected[k]))
    assert calls["scaled"] == []


def test_flat_slide_overview_is_cached_on_disk_for_the_next_open(flat, monkeypatch, overview_cache):
    monkeypatch.setattr(base, "MAX_COARSEST_SIDE", COARSEST_SIDE)
    calls = _counting(monkeypatch)
    reports: list[tuple[int, int]] = []
    with open_slide(flat) as slide:
        assert slide.overview_pending()
        slide.compute_overview(lambda done, total: reports.append((done, total)))
        assert not slide.overview_pending()
        first = np.asarray(slide.level_arrays()[-1])
    assert calls["scaled"] == [8] * TILES
    assert reports[-1][0] == reports[-1][1] == len(reports)  # one report per block, to the end
    files = list(overview_cache.glob("*.npy"))
    assert len(files) == 1 and files[0].name.endswith("-dct-v1.npy")
    calls["scaled"].clear()
    with open_slide(flat) as slide:
        calls["full"].clear()  # the open probe
        assert not slide.overview_pending()  # found on disk
        again = np.asarray(slide.level_arrays()[-1])
    assert calls["scaled"] == [] and calls["full"] == []  # nothing decoded
    np.testing.assert_array_equal(again, first)
    # a damaged cache file is computed again, not trusted
    files[0].write_bytes(b"not an array")
    with open_slide(flat) as slide:
        np.testing.assert_array_equal(np.asarray(slide.level_arrays()[-1]), first)
    assert calls["scaled"] == [8] * TILES
