"""`napari-hila bench extract` runs end to end on a tiny generated slide."""

from __future__ import annotations

import argparse

from napari_hila.bench import extract as bench_extract


def test_bench_extract_reports_end_to_end_beside_decode_only(tmp_path):
    parser = argparse.ArgumentParser()
    bench_extract.add_arguments(parser)
    args = parser.parse_args(
        ["--sizes", "4000", "--mpp", "0.5", "--batch-size", "16", "--cache-dir", str(tmp_path)]
    )
    result = bench_extract.run(args)
    (slide,) = result["slides"]
    assert slide["dimensions"] == [4000, 4000]
    patches = slide["grid_patches"]
    assert patches > 16
    assert slide["decode_only"]["tiles"] == slide["end_to_end"]["patches"] == patches
    assert slide["encode_only"]["encodes_in_reader_threads"] is True
    assert slide["encode_only"]["torch_threads"] == 1
    for stage in ("decode_only", "encode_only", "end_to_end"):
        assert slide[stage]["tiles_per_s"] > 0
    assert 0 < slide["end_to_end_vs_decode_bound"] < 1
    assert slide["end_to_end"]["cache_hit_seconds"] < slide["end_to_end"]["total_seconds"]
    summary = result["summary"]
    assert summary["patches_by_slide"] == [patches]
    assert summary["goal_end_to_end_vs_decode"] == 0.5
    growth = slide["end_to_end"]["peak_over_start_mb"]
    assert summary["extraction_peak_over_start_mb_by_slide"] == [growth] and growth > 0
