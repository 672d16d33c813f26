"""`napari-hila bench io` and scripts/make_test_slide.py run end to end (tiny sizes)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import openslide

from napari_hila.bench import io as bench_io

ROOT = Path(__file__).resolve().parents[1]


def test_bench_io_reports_ours_beside_raw_openslide(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    parser = argparse.ArgumentParser()
    bench_io.add_arguments(parser)
    args = parser.parse_args(["--size", "2048", "--tiles", "12", "--cache-dir", str(tmp_path)])
    result = bench_io.run(args)
    assert result["slide"]["dimensions"] == [2048, 2048]
    opened = result["open"]
    assert opened["ours_backend"] == "tifffile" and opened["rounds"] == 30
    peers = ["openslide_raw_open", "tiffslide_open"]
    for name in ["ours_open", "ours_open_with_napari_levels", *peers]:
        assert opened[name]["median_ms"] > 0, name
    ratio = opened["vs_openslide_median_ratio"]["ours_open"]
    assert ratio == round(opened["ours_open"]["median_ms"] / opened[peers[0]]["median_ms"], 3)
    reads = result["tile_reads"]
    assert reads["count"] == 12
    for name in (
        "openslide_raw_read_region",
        "tiffslide_read_region",
        "tifffile_zarr_slice",
        "jpeg_decode_limit",
        "ours_tifffile_read_region",
        "ours_openslide_read_region",
        "ours_tifffile_napari_level_view",
        "ours_tifffile_dask_pyramid",
    ):
        timing = reads[name]
        assert timing["median_ms"] > 0 and timing["p95_ms"] >= timing["median_ms"]
        assert timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    vs_raw = reads["vs_openslide_raw_read_region_median_ratio"]
    assert set(vs_raw) >= {"ours_tifffile_read_region", "tiffslide_read_region"}
    assert "openslide_raw_read_region" not in vs_raw and "jpeg_decode_limit" not in vs_raw
    raw = reads["openslide_raw_read_region"]["median_ms"]
    assert vs_raw["tifffile_zarr_slice"] == round(
        reads["tifffile_zarr_slice"]["median_ms"] / raw, 3
    )
    # every reader against the decode limit; exactly those below 1 are flagged
    vs_limit = reads["vs_jpeg_decode_limit_median_ratio"]
    assert "openslide_raw_read_region" in vs_limit and "jpeg_decode_limit" not in vs_limit
    below = sorted(name for name, ratio in vs_limit.items() if ratio < 1)
    assert (
        sorted(f.split(" values of ")[1].split("/")[0] for f in reads["impossible_ratio_flags"])
        == below
    )
    assert reads["jpeg_decode_limit_tiles"]["tiles_touched"] >= 12
    if importlib.util.find_spec("fastslide") is None:
        assert "not installed" in reads["fastslide_read_region"]["skipped"]
    assert result["peers"]["tiffslide"] == "installed"
    assert "no display" in result["first_render"]["skipped"]
    assert "own pyramid" in result["overview"]["skipped"]  # nothing computed: nothing to time
    # the generated slide is cached and reused
    assert len(list(tmp_path.glob("synthetic-svs-2048x2048-*.svs"))) == 1


def test_make_test_slide_script_writes_an_openslide_pyramid(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_test_slide", ROOT / "scripts" / "make_test_slide.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "script.svs"
    assert script.main([str(out), "--size", "2400", "--height", "1300", "--mpp", "0.5"]) == 0
    slide = openslide.OpenSlide(str(out))
    assert slide.level_dimensions == ((2400, 1300), (600, 325))
    assert float(slide.properties["openslide.mpp-x"]) == 0.5


def test_bench_io_times_the_flat_overview_both_ways(tmp_path, monkeypatch):
    from napari_hila.slides import base

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(base, "MAX_COARSEST_SIDE", 100)  # 1024 -> 512, 256, 128, 64 px
    parser = argparse.ArgumentParser()
    bench_io.add_arguments(parser)
    args = parser.parse_args(
        ["--size", "1024", "--layout", "flat", "--tiles", "4", "--cache-dir", str(tmp_path)]
    )
    overview = bench_io.run(args)["overview"]
    assert overview["computed_levels"] == 4 and overview["coarsest_shape"] == [64, 64]
    assert overview["source_level_tiles"] == 16
    for method in ("dct_scaled", "full_decode"):
        assert overview[method]["wall_s"] > 0 and overview[method]["cpu_s"] >= 0
    assert overview["speedup_wall"] > 0


def test_peer_readers_return_openslides_pixels(tmp_path):
    from napari_hila.slides.synthetic import cached_test_slide

    path = cached_test_slide(2048, 2048, cache_dir=tmp_path)
    readers, opened, _ = bench_io._peer_readers(path, 256)
    assert {"tiffslide_read_region", "tifffile_zarr_slice"} <= set(readers)
    with openslide.OpenSlide(str(path)) as raw:
        expected = np.asarray(raw.read_region((300, 517), 0, (256, 256)).convert("RGB"))
    for name, read in readers.items():
        assert np.array_equal(np.asarray(read(300, 517))[..., :3], expected), name
    for handle in opened:
        handle.close()


def test_jpeg_limit_decodes_exactly_the_tiles_a_read_touches(tmp_path):
    from napari_hila.slides.synthetic import cached_test_slide

    path = cached_test_slide(2048, 2048, cache_dir=tmp_path)
    tile = openslide.OpenSlide(str(path)).properties["openslide.level[0].tile-width"]
    tile = int(tile)
    on_grid = np.array([[tile, tile]])  # one tile
    straddling = np.array([[tile + 10, 2 * tile + 10]])  # a 2 x 2 block of tiles
    decode, counts = bench_io._jpeg_decode_reader(path, on_grid, tile)
    assert counts == {"tiles_touched": 1, "distinct_tiles": 1}
    decode(tile, tile)
    _, counts = bench_io._jpeg_decode_reader(path, np.vstack([straddling, straddling]), tile)
    assert counts == {"tiles_touched": 4, "distinct_tiles": 4}  # one location, once


def test_a_ratio_that_cannot_be_below_one_is_flagged_when_it_is():
    from napari_hila.bench.timing import check_at_least_one

    assert check_at_least_one("a/limit", [1.2, 3.0])["flag"] is None
    flagged = check_at_least_one("a/limit", [1.2, 0.8])
    assert flagged["values_below_1"] == [0.8] and "1 of 2 values of a/limit" in flagged["flag"]
