"""`napari-hila bench io` and scripts/make_test_slide.py run end to end (tiny sizes)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

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
        "ours_tifffile_read_region",
        "ours_openslide_read_region",
        "ours_tifffile_napari_level_view",
        "ours_tifffile_dask_pyramid",
    ):
        assert reads[name]["median_ms"] > 0 and reads[name]["p95_ms"] >= reads[name]["median_ms"]
    assert set(reads["ours_vs_raw_median_ratio"]) >= {"ours_tifffile_read_region"}
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
