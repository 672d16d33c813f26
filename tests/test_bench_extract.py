"""`napari-hila bench extract` runs end to end on a tiny generated slide."""

from __future__ import annotations

import argparse

from napari_hila.bench import extract as bench_extract
from napari_hila.bench.timing import check_at_most_one


def test_bench_extract_interleaves_end_to_end_with_jpeg_decode_and_read_path(tmp_path):
    parser = argparse.ArgumentParser()
    bench_extract.add_arguments(parser)
    args = parser.parse_args(
        ["--sizes", "4000", "--mpp", "0.5", "--batch-size", "16", "--rounds", "2"]
        + ["--cache-dir", str(tmp_path), "--device", "cuda"]
    )
    result = bench_extract.run(args)
    import torch

    # the device used is named; without CUDA the run says so and times the CPU
    if torch.cuda.is_available():
        assert result["device"].startswith("cuda") and result["device_note"] is None
    else:
        assert result["device"] == "cpu" and "not available" in result["device_note"]
    assert result["device_asked"] == "cuda"
    # the weight-free descriptor computes in float32 whatever precision is asked
    assert result["dtype"] == "float32" and result["precision_asked"] == "auto"
    (slide,) = result["slides"]
    assert slide["dimensions"] == [4000, 4000]
    patches = slide["grid_patches"]
    assert patches > 16 and slide["end_to_end"]["patches"] == patches
    # at 20x a 256 px patch is one stored 256 px tile: each decoded once
    assert slide["stored_tile_px"] == 256 and slide["stored_tiles_decoded"] == patches
    assert slide["encode_only"]["encodes_in_reader_threads"] is True
    for label in ("jpeg_decode", "read_path", "end_to_end_patch_stage"):
        rates = slide["patches_per_s"][label]
        assert 0 < rates["min"] <= rates["median"] <= rates["max"]
        assert len(slide["seconds"][label]) == 3
    assert len(slide["end_to_end_rounds"]) == 2
    ratio = slide["ratios"]["end_to_end_vs_jpeg_decode"]
    assert len(ratio["per_round"]) == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    names = [check["ratio"] for check in slide["impossible_ratios"]]
    assert names == [
        "end_to_end_vs_jpeg_decode",
        "read_path_vs_jpeg_decode",
        "end_to_end_vs_read_path",
    ]
    summary = result["summary"]
    assert summary["patches_by_slide"] == [patches]
    assert summary["goal_end_to_end_vs_jpeg_decode"] == 0.7
    flagged = [c["flag"] for c in slide["impossible_ratios"] if c["flag"]]
    assert summary["impossible_ratio_flags"] == flagged
    growth = slide["end_to_end"]["peak_over_start_mb"]
    assert summary["extraction_peak_over_start_mb_by_slide"] == [growth] and growth > 0


def test_a_part_outrunning_the_whole_is_flagged():
    ok = check_at_most_one("e2e/decode", [0.5, 0.9, 1.0])
    assert ok["flag"] is None and ok["values_above_1"] == []
    bad = check_at_most_one("e2e/decode", [0.5, 1.2, 1.4])
    assert bad["values_above_1"] == [1.2, 1.4]
    assert "2 of 3" in bad["flag"] and "impossible" in bad["flag"]


def test_jpeg_decode_limit_decodes_the_pixels_the_reader_reads(tmp_path):
    import imagecodecs
    import numpy as np

    from napari_hila.slides import open_slide
    from napari_hila.slides.synthetic import cached_test_slide

    path = cached_test_slide(1024, 1024, layout="svs", mpp=0.5, cache_dir=tmp_path)
    coords = np.array([[256, 512]])
    tiles, tables, colorspace, tile_px = bench_extract.stored_tiles(path, 0, coords, 256, 1.0)
    assert len(tiles) == 1 and tile_px == 256
    source, target = colorspace
    pixels = imagecodecs.jpeg_decode(
        tiles[0], tables=tables, colorspace=source, outcolorspace=target
    )
    with open_slide(path) as slide:
        expected = slide.read_region((256, 512), 0, (256, 256))
    np.testing.assert_array_equal(pixels, expected)
