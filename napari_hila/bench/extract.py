"""Feature extraction speed against the physical limit: pure JPEG decoding.

On generated slides of two sizes (real tissue, Aperio layout, 40x by default;
or ``--slide``), each in a fresh process so its peak memory is its own, three
measurements of the same grid patches run interleaved for ``--rounds``
rounds (A, B, C, A, B, C), on every core extraction may use:

- ``jpeg_decode``: the physical limit. The raw bytes of every stored JPEG
  tile the patches touch at the level they are read from, read from the file
  beforehand, each decoded once by imagecodecs (libjpeg-turbo) on a thread
  pool, nothing else: no extractor reading these tiles can be faster;
- ``read_path``: the project's read path, :func:`iter_tile_batches` (decode,
  assemble the patch, reduce it to ``patch_px``);
- ``end_to_end``: :func:`extract_slide` from an empty cache (tissue, grid,
  read, encode, write); its patch stage is timed against the two above, the
  whole-slide time and peak memory reported beside.

Ratios are rates over rates per round (median, min, max). End to end over
the read path, or either over the JPEG decode, cannot exceed 1 (the whole
cannot outrun a part of itself): a value above 1 is flagged as a broken
measurement. ``encode_only`` times the encoder on tiles in memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from napari_hila.bench.io import _reset_peak_rss, _rss_mb
from napari_hila.bench.timing import check_at_most_one, interleave, spread
from napari_hila.devices import DEVICE_CHOICES, resolve_device
from napari_hila.slides import detect_tissue, make_grids, open_slide
from napari_hila.slides.base import pick_level
from napari_hila.slides.synthetic import cached_test_slide

# Imported where used, not here: torch and features.extract (torch, 2.7 s) and
# features.tile_reader (numba, 0.13 s). Every napari-hila command imports this module to
# build its parser (tests/test_startup_imports.py).

GOAL_VS_JPEG_DECODE = 0.7  # extraction's patch rate over pure JPEG decoding's


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
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where the encoder runs (auto: CUDA, then MPS, then CPU); the JSON names the "
        "device used and says when the one asked for is absent",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="what a network encoder runs in (auto: bfloat16 or float16 on a GPU, float32 on "
        "the CPU); the JSON names the dtype used",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per encoder batch")
    parser.add_argument("--cache-dir", default=None, help="where generated slides are kept")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the three measurements (3)"
    )


def stored_tiles(path: Path, level: int, coords: np.ndarray, size: int, downsample: float):
    """Raw JPEG bytes of every stored tile the patches touch at ``level``, each once.

    Returns the tiles' bytes, the level's JPEGTables and the colour spaces to
    decode with (tifffile's choice for the page's photometric tag).
    """
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].keyframe
        if page.compression != 7 or not page.is_tiled:
            raise ValueError(f"{path}: level {level} is not JPEG tiles; no decode limit to state")
        tiles_across = -(-page.imagewidth // page.tilewidth)
        tiles_down = -(-page.imagelength // page.tilelength)
        side = int(np.ceil(size / downsample))
        wanted: set[int] = set()
        for x, y in np.asarray(coords) / downsample:  # a box past the edge touches no more
            last_col = min((int(x) + side - 1) // page.tilewidth, tiles_across - 1)
            last_row = min((int(y) + side - 1) // page.tilelength, tiles_down - 1)
            cols = range(int(x) // page.tilewidth, last_col + 1)
            rows = range(int(y) // page.tilelength, last_row + 1)
            wanted.update(r * tiles_across + c for r in rows for c in cols)
        handle = tif.filehandle
        data = []
        for index in sorted(wanted):
            handle.seek(page.dataoffsets[index])
            data.append(handle.read(page.databytecounts[index]))
        colorspace = tifffile.tifffile.jpeg_decode_colorspace(
            page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
        )
        return data, page.jpegtables, colorspace, page.tilewidth


def _jpeg_decode_step(tiles: list[bytes], tables: bytes | None, colorspace, threads: int):
    """Decode every tile once with imagecodecs on ``threads`` threads: the physical limit."""
    source, target = colorspace

    def decode(chunk: list[bytes]) -> int:
        for data in chunk:
            imagecodecs.jpeg_decode(data, tables=tables, colorspace=source, outcolorspace=target)
        return len(chunk)

    chunks = [tiles[i : i + 64] for i in range(0, len(tiles), 64)]

    def step() -> int:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return sum(pool.map(decode, chunks))

    return step


def _read_path_step(slide, grids, batch_size: int, threads: int):
    """The project's read path: :func:`iter_tile_batches` (decode, assemble, reduce)."""
    from napari_hila.features.tile_reader import iter_tile_batches

    def step() -> int:
        n = 0
        for _, tiles in iter_tile_batches(
            slide,
            grids.patch_coords,
            grids.patch_size,
            grids.patch_px,
            batch_size,
            threads=threads,
        ):
            n += len(tiles)
        return n

    return step


def _encode_only(slide, grids, encoder, batch_size: int) -> dict[str, Any]:
    import torch

    from napari_hila.features.extract import (
        cpu_threads_for_encoder,
        encodes_in_reader_threads,
        read_threads_for,
    )
    from napari_hila.features.tile_reader import read_batch

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

    # the same settings for the timed run and its cache hit
    settings = {"encoder": args.encoder, "weights": args.weights, "device": args.device}
    settings["precision"] = args.precision
    with tempfile.TemporaryDirectory(prefix="hila-bench-") as out:
        _reset_peak_rss()
        before = _rss_mb().get("rss_mb", 0.0)
        t0, cpu0 = time.perf_counter(), time.process_time()
        feature_file = extract_slide(
            path, out, batch_size=args.batch_size, progress=progress, **settings
        )
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        memory = _rss_mb()
        feats = load_features(feature_file)
        t1 = time.perf_counter()
        extract_slide(path, out, **settings)
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
    encoder = vision_encoder(args.encoder, args.weights, args.device, args.precision)
    return _bench_slide(Path(path), args, encoder)


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
    from napari_hila.features.extract import available_cores

    threads = available_cores()  # every core, as extraction uses
    with open_slide(path) as slide:
        tissue, tissue_row = _detect_tissue_memory(slide)
        grids = make_grids(slide, tissue)
        level = pick_level(slide.level_downsamples, grids.patch_size / grids.patch_px)
        downsample = slide.level_downsamples[level]
        info = {
            "slide": str(path),
            "dimensions": list(slide.dimensions),
            "mpp": slide.mpp,
            "levels": slide.level_count,
            "grid_patches": grids.num_patches,
            "patch_level_0_px": grids.patch_size,
            "patch_px": grids.patch_px,
            "read_level": level,
            "threads": threads,
            "rounds": args.rounds,
        }
        tiles, tables, colorspace, tile_px = stored_tiles(
            path, level, grids.patch_coords, grids.patch_size, downsample
        )
        info["stored_tiles_decoded"] = len(tiles)
        info["stored_tile_px"] = tile_px
        encode = _encode_only(slide, grids, encoder, args.batch_size)
        marks: list[dict[str, Any]] = []
        steps = {
            "jpeg_decode": _jpeg_decode_step(tiles, tables, colorspace, threads),
            "read_path": _read_path_step(slide, grids, args.batch_size, threads),
            "end_to_end": lambda: marks.append(_end_to_end(path, args)),
        }
        times = interleave(steps, args.rounds, warm_up=False)
    # each end-to-end round from an empty cache; its patch stage is what the others do
    patch_stage = [row["patch_stage_seconds"] for row in marks]
    times["end_to_end_patch_stage"] = patch_stage
    n = grids.num_patches
    rates = {
        label: spread([n / t for t in times[label]], 1)
        for label in ("jpeg_decode", "read_path", "end_to_end_patch_stage")
    }
    ratios = {
        "end_to_end_vs_jpeg_decode": _ratio(times, "end_to_end_patch_stage", "jpeg_decode"),
        "read_path_vs_jpeg_decode": _ratio(times, "read_path", "jpeg_decode"),
        "end_to_end_vs_read_path": _ratio(times, "end_to_end_patch_stage", "read_path"),
    }
    return {
        **info,
        "detect_tissue": tissue_row,
        "patches_per_s": rates,
        "seconds": {label: spread(t, 3) for label, t in times.items()},
        "ratios": ratios,
        "impossible_ratios": [
            check_at_most_one(name, row["per_round"]) for name, row in ratios.items()
        ],
        "encode_only": encode,
        "end_to_end": marks[0],
        "end_to_end_rounds": marks,
    }


def _ratio(times: dict[str, list[float]], whole: str, part: str) -> dict[str, Any]:
    """Rate of ``whole`` over the rate of ``part`` (= part's time / whole's), per round."""
    per_round = [tp / tw for tw, tp in zip(times[whole], times[part], strict=True)]
    return {
        "ratio": f"{whole} rate / {part} rate",
        "per_round": [round(r, 3) for r in per_round],
        **spread(per_round, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from napari_hila.features.extract import ran_in, vision_encoder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = str(resolve_device(args.device))
    device_note = "; ".join(str(w.message) for w in caught) or None
    # fail early on a bad name or weights; the dtype the encoder runs in goes in the JSON
    dtype = ran_in(vision_encoder(args.encoder, args.weights, device, args.precision))["dtype"]
    if args.slide:
        slides = [Path(args.slide)]
    else:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        slides = [
            cached_test_slide(s, s, layout="svs", mpp=args.mpp, cache_dir=args.cache_dir)
            for s in sizes
        ]
    settings = {
        "encoder": args.encoder,
        "weights": args.weights,
        "device": device,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
    }
    results = [_run_child(p, settings) for p in slides]
    peaks = [r["end_to_end"].get("peak_rss_mb", 0.0) for r in results]
    tissue_peaks = [r["detect_tissue"].get("peak_rss_mb", 0.0) for r in results]

    def by_slide(group: str, key: str) -> list:
        return [r[group][key] for r in results]

    return {
        "encoder": args.encoder,
        "device": device,
        "device_asked": args.device,
        "device_note": device_note,
        "dtype": dtype,
        "precision_asked": args.precision,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "slides": results,
        "summary": {
            "patches_by_slide": [r["grid_patches"] for r in results],
            "end_to_end_patches_per_s": by_slide("patches_per_s", "end_to_end_patch_stage"),
            "read_path_patches_per_s": by_slide("patches_per_s", "read_path"),
            "jpeg_decode_patches_per_s": by_slide("patches_per_s", "jpeg_decode"),
            "end_to_end_vs_jpeg_decode": by_slide("ratios", "end_to_end_vs_jpeg_decode"),
            "read_path_vs_jpeg_decode": by_slide("ratios", "read_path_vs_jpeg_decode"),
            "goal_end_to_end_vs_jpeg_decode": GOAL_VS_JPEG_DECODE,
            "impossible_ratio_flags": [
                check["flag"] for r in results for check in r["impossible_ratios"] if check["flag"]
            ],
            "peak_rss_mb_by_slide": peaks,
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
