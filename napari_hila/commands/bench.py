"""Benchmarks that print one JSON object: ours side by side with the peer.

``napari-hila bench io|model|extract|survival|train|viewer``. Each benchmark module in
``napari_hila.bench`` defines ``add_arguments(parser)`` and ``run(args) -> dict``.
These are measurements for humans and notes, never pass/fail tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys

from napari_hila.io_utils import atomic_path

# torch is imported where used (2.7 s): every napari-hila command builds this parser
# (tests/test_startup_imports.py).

BENCHMARKS: dict[str, tuple[str, str]] = {
    "io": (
        "napari_hila.bench.io",
        "open time, first render, tile reads vs OpenSlide, tiffslide, tifffile+zarr, JPEG decode",
    ),
    "model": (
        "napari_hila.bench.model",
        "forward/backward time and memory per model; Sinkhorn vs POT",
    ),
    "extract": ("napari_hila.bench.extract", "patches per second end to end vs JPEG decode"),
    "survival": (
        "napari_hila.bench.survival",
        "C-index time vs lifelines and scikit-survival at 100,000 patients",
    ),
    "train": ("napari_hila.bench.train", "seconds per epoch and peak memory for hila and abmil"),
    "viewer": (
        "napari_hila.bench.viewer",
        "the dock's run, cancel latency; --gui: display vs napari's own image layer, export",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name, help=help_text, description=(module.__doc__ or help_text).strip()
        )
        module.add_arguments(cmd)
        cmd.add_argument("--out", default=None, help="also write the JSON to this file")
        cmd.set_defaults(_bench=module.run, _bench_name=name)


def machine_info() -> dict:
    """What the numbers were measured on."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def run(args: argparse.Namespace) -> int:
    result = {"benchmark": args._bench_name, "machine": machine_info()}
    result.update(args._bench(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")
    sys.stdout.flush()
    return 0
