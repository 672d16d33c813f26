"""Feature extraction speed: tiles per second end to end vs decode only.

On generated slides of two sizes (real tissue, Aperio layout, 40x by default) this
measures, for the same grid patches read through the same prefetching reader:

- ``decode_only``: reading and decoding the tiles, nothing else (the limit on
  this machine, the peer every extractor is bound by);
- ``encode_only``: the encoder on tiles already in memory;
- ``end_to_end``: :func:`extract_slide` from an empty cache (tissue, grid,
  read, encode, write), with the patch-stage rate and the whole-slide time;
- peak resident memory during each, to show it stays flat as the slide grows
  (each slide is measured in a fresh process, so the peaks are comparable).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_hila.bench.io import _reset_peak_rss, _rss_mb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slide", default=None, help="benchmark this slide instead of generated ones"
    )
    parser.add_argument(
        "--sizes",
        default="20000,40000",
        help="sides in px of the generated slides (default 20000,40000)",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        default=0.25,
        help="um/px of the generated slides (0.25: a 40x scan, as most of TCGA; "
        "0.5: a 20x scan whose tiles are the patches)",
    )
    parser.add_argument("--encoder", default="hila-descriptor", help="vision encoder to time")
    parser.add_argument("--weights", default=None, help="local weights for that encoder")
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per encoder batch")
    parser.add_argument("--cache-dir", default=None, help="where generated slides are kept")


def _decode_only(slide, grids, batch_size: int) -> dict[str, Any]:
    from napari_hila.features.extract import available_cores
    from napari_hila.features.tiles import iter_tile_batches

    _reset_peak_rss()
    t0, cpu0 = time.perf_counter(), time.process_time()
    n = 0
    threads = available_cores()  # every core reading: the machine's limit
    for _, tiles in iter_tile_batches(
        slide, grids.patch_coords, grids.patch_size, grids.patch_px, batch_size, threads=threads
    ):
        n += len(tiles)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "tiles": n,
        "read_threads": threads,
        "seconds": round(seconds, 2),
        "tiles_per_s": round(n / seconds, 1),
        "cpu_ms_per_tile": round(1000 * cpu / max(n, 1), 2),
        **_rss_mb(),
    }


def _encode_only(slide, grids, encoder, batch_size: int) -> dict[str, Any]:
    import torch

    from napari_hila.features.extract import (
        cpu_threads_for_encoder,
        encodes_in_reader_threads,
        read_threads_for,
    )
    from napari_hila.features.tiles import read_batch

    coords = grids.patch_coords[: 4 * batch_size]
    tiles = read_batch(slide, coords, grids.patch_size, grids.patch_px, 0)
    # the same thread budget as during extraction
    with cpu_threads_for_encoder(read_threads_for(encoder)):
        threads = torch.get_num_threads()
        encoder.encode(tiles[:batch_size])  # warm-up
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(0, len(tiles), batch_size):
            encoder.encode(tiles[i : i + batch_size])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "tiles": len(tiles),
        "torch_threads": threads,
        "read_threads_during_extraction": read_threads_for(encoder),
        "encodes_in_reader_threads": encodes_in_reader_threads(encoder),
        "tiles_per_s": round(len(tiles) / seconds, 1),
        "cpu_ms_per_tile": round(1000 * cpu / len(tiles), 2),
    }


def _end_to_end(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from napari_hila.features.extract import extract_slide
    from napari_hila.features.store import load_features

    marks: dict[str, float] = {}

    def progress(stage: str, fraction: float) -> None:
        now = time.perf_counter()
        marks.setdefault(f"{stage}_start", now)
        marks[f"{stage}_end"] = now

    with tempfile.TemporaryDirectory(prefix="hila-bench-") as out:
        _reset_peak_rss()
        before = _rss_mb().get("rss_mb", 0.0)
        t0, cpu0 = time.perf_counter(), time.process_time()
        feature_file = extract_slide(
            path,
            out,
            encoder=args.encoder,
            weights=args.weights,
            batch_size=args.batch_size,
            progress=progress,
        )
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        memory = _rss_mb()
        feats = load_features(feature_file)
        t1 = time.perf_counter()
        extract_slide(path, out, encoder=args.encoder, weights=args.weights)
        cached = time.perf_counter() - t1
    patch_seconds = marks["tiles_end"] - marks["tiles_start"]
    return {
        "patches": feats.num_patches,
        "regions": feats.num_regions,
        "patch_stage_seconds": round(patch_seconds, 2),
        "tiles_per_s": round(feats.num_patches / max(patch_seconds, 1e-9), 1),
        "tissue_seconds": round(marks["tissue_end"] - marks["tissue_start"], 2),
        "total_seconds": round(total, 2),
        "tiles_per_s_whole_slide": round(feats.num_patches / total, 1),
        # the load-independent number: all threads' CPU (tissue, grid, regions included)
        "cpu_ms_per_tile_whole_slide": round(1000 * cpu / max(feats.num_patches, 1), 2),
        "cache_hit_seconds": round(cached, 3),
        "rss_before_mb": before,
        **memory,
        # what the extraction itself added at its peak (the process held other things before)
        "peak_over_start_mb": round(memory.get("peak_rss_mb", 0.0) - before, 1),
    }


def _bench_slide_in_child(path: str, settings: dict) -> dict[str, Any]:
    """One slide's measurements in a fresh process, so peak memory is that slide's alone."""
    from napari_hila.features.extract import vision_encoder

    args = argparse.Namespace(**settings)
    return _bench_slide(Path(path), args, vision_encoder(args.encoder, args.weights, "auto"))


def _run_child(path: Path, settings: dict) -> dict[str, Any]:
    code = (
        "import json, sys; from napari_hila.bench.extract import _bench_slide_in_child as b; "
        "print(json.dumps(b(sys.argv[1], json.loads(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), json.dumps(settings)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _detect_tissue_memory(slide) -> tuple[Any, dict[str, Any]]:
    """Tissue detection's time and memory: first thing in a fresh process, so its peaks are its own."""
    import tracemalloc

    from napari_hila.slides import detect_tissue

    _reset_peak_rss()
    before = _rss_mb().get("rss_mb", 0.0)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        tissue = detect_tissue(slide)
        seconds = time.perf_counter() - t0
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return tissue, {
        "seconds": round(seconds, 2),
        "view_px": list(tissue.mask.shape[::-1]),
        "traced_peak_mb": round(traced_peak / 2**20, 1),
        "rss_before_mb": before,
        **_rss_mb(),
    }


def _bench_slide(path: Path, args: argparse.Namespace, encoder) -> dict[str, Any]:
    from napari_hila.slides import make_grids, open_slide

    with open_slide(path) as slide:
        tissue, tissue_row = _detect_tissue_memory(slide)
        grids = make_grids(slide, tissue)
        info = {
            "slide": str(path),
            "dimensions": list(slide.dimensions),
            "mpp": slide.mpp,
            "levels": slide.level_count,
            "grid_patches": grids.num_patches,
        }
        decode = _decode_only(slide, grids, args.batch_size)
        encode = _encode_only(slide, grids, encoder, args.batch_size)
    e2e = _end_to_end(path, args)
    return {
        **info,
        "detect_tissue": tissue_row,
        "decode_only": decode,
        "encode_only": encode,
        "end_to_end": e2e,
        "end_to_end_vs_decode": round(e2e["tiles_per_s"] / decode["tiles_per_s"], 3),
        # what the ratio would be if decoding and encoding shared the cores perfectly
        "end_to_end_vs_decode_bound": round(
            decode["cpu_ms_per_tile"] / (decode["cpu_ms_per_tile"] + encode["cpu_ms_per_tile"]), 3
        ),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from napari_hila.features.extract import vision_encoder

    vision_encoder(args.encoder, args.weights, "auto")  # fail early on a bad name or weights
    if args.slide:
        slides = [Path(args.slide)]
    else:
        from napari_hila.slides.synthetic import cached_test_slide

        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        slides = [
            cached_test_slide(s, s, layout="svs", mpp=args.mpp, cache_dir=args.cache_dir)
            for s in sizes
        ]
    settings = {"encoder": args.encoder, "weights": args.weights, "batch_size": args.batch_size}
    results = [_run_child(p, settings) for p in slides]
    ratios = [r["end_to_end_vs_decode"] for r in results]
    peaks = [r["end_to_end"].get("peak_rss_mb", 0.0) for r in results]
    tissue_peaks = [r["detect_tissue"].get("peak_rss_mb", 0.0) for r in results]
    return {
        "encoder": args.encoder,
        "batch_size": args.batch_size,
        "slides": results,
        "summary": {
            "end_to_end_tiles_per_s": [r["end_to_end"]["tiles_per_s"] for r in results],
            "decode_only_tiles_per_s": [r["decode_only"]["tiles_per_s"] for r in results],
            "end_to_end_vs_decode": ratios,
            "end_to_end_vs_decode_bound": [r["end_to_end_vs_decode_bound"] for r in results],
            "goal_end_to_end_vs_decode": 0.5,
            "peak_rss_mb_by_slide": peaks,
            "patches_by_slide": [r["end_to_end"]["patches"] for r in results],
            "peak_rss_growth_mb": round(float(np.ptp(peaks)), 1) if peaks else 0.0,
            "extraction_peak_over_start_mb_by_slide": [
                r["end_to_end"]["peak_over_start_mb"] for r in results
            ],
            "detect_tissue_peak_rss_mb_by_slide": tissue_peaks,
            "detect_tissue_traced_peak_mb_by_slide": [
                r["detect_tissue"]["traced_peak_mb"] for r in results
            ],
        },
    }
