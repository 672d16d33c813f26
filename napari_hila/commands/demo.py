"""Run the whole pipeline on the bundled sample slide with the demo model.

Extracts features from CMU-1-Small-Region (cached after the first run), runs
the shipped HiLa demo model, writes every output to --out, and opens napari
with the overlays when there is a display. The demo model was trained on a
SYNTHETIC cohort made from tiles of this very slide: it shows the software
working and is not for clinical use.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from napari_hila.commands.predict import StageProgress, default_model_path, result_summary
from napari_hila.export import write_prediction_folder
from napari_hila.predict import predict_slide
from napari_hila.resources import sample_slide_path

# napari and the viewer (Qt) are imported only when a window is opened: they are optional
# and take seconds to load.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="demo-output", help="folder for the outputs (default: ./demo-output)"
    )
    parser.add_argument(
        "--no-viewer", action="store_true", help="write files only, do not open napari"
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument(
        "--model", default=None, help="another model directory instead of the demo model"
    )


def display_available() -> bool:
    """True when a napari window can be shown (a display and napari installed)."""
    has_screen = bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ) or sys.platform in (
        "darwin",
        "win32",
    )
    return has_screen and importlib.util.find_spec("napari") is not None


def _open_viewer(slide, result_dir, model) -> bool:
    """Show the result in napari; False when the viewer cannot start (then files suffice)."""
    try:
        from napari_hila._qt.app import launch_viewer
    except ImportError as err:
        print(
            f"napari viewer unavailable ({err}); the outputs are in the folder above",
            file=sys.stderr,
        )
        return False
    import napari

    launch_viewer(str(slide), result=str(result_dir), model=str(model))
    napari.run()
    return True


def run(args: argparse.Namespace) -> int:
    slide = sample_slide_path()
    model = Path(args.model) if args.model else default_model_path()
    out = Path(args.out).resolve()
    print(f"napari-hila demo: {slide.name} with {model}", file=sys.stderr)
    progress = StageProgress()
    result = predict_slide(
        slide, model, cache_dir=out / "feature-cache", device=args.device, progress=progress
    )
    write_prediction_folder(result, out, progress=progress)
    print(result_summary(result))
    print(f"\noutputs written to {out}:")
    for name in (
        "result.json",
        "thumbnail.png",
        "selection_patch.png",
        "km.png",
        "contributions.png",
        "patches.geojson",
        "patch_scores.csv",
    ):
        if (out / name).exists():
            print(f"  {name}")
    heatmaps = sorted(p.name for p in out.glob("heatmap_*.png"))
    if heatmaps:
        print(f"  {len(heatmaps)} per-prompt heatmaps (heatmap_<level>_<k>_<prompt>.png)")
    if args.no_viewer or not display_available():
        if not args.no_viewer:
            print(
                "no display: not opening napari (run `napari-hila view` on a desktop)",
                file=sys.stderr,
            )
        return 0
    _open_viewer(slide, out, model)
    return 0
