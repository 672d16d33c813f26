"""Run a trained model on one slide and write every output to a folder.

Writes result.json/result.npz, selection maps and per-prompt heatmaps as PNGs
aligned to thumbnail.png, patches.geojson (QuPath: File > Import objects),
patch_scores.csv, km.png (this slide against the model's cohort) and
contributions.png. Features are cached, so a second run on a slide is fast.

Example:
  napari-hila predict slide.svs --model runs/hila/final_model --out results/slide
"""

from __future__ import annotations

import argparse
import sys
import time

from napari_hila.commands.options import add_mpp_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", help="whole-slide image (.svs, .ndpi, .tif, ...)")
    parser.add_argument(
        "--model",
        default=None,
        help="model directory (RUN_DIR/final_model); default: the shipped demo model (synthetic, not for clinical use)",
    )
    parser.add_argument("--out", required=True, help="folder for the outputs (created)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument(
        "--cache", default=None, help="feature cache folder (default: the user cache)"
    )
    add_mpp_argument(parser)


class StageProgress:
    """Prints one line per stage and a percentage, for the terminal."""

    def __init__(self, out=None):
        self.out = out  # None: whatever sys.stderr is when a line is printed
        self.stage = None
        self.last = -1
        self.started = time.perf_counter()

    def __call__(self, stage: str, fraction: float) -> None:
        percent = int(100 * min(max(fraction, 0.0), 1.0))
        if stage != self.stage:
            self.stage, self.last = stage, -1
        if percent // 10 != self.last // 10 or percent == 100 and self.last != 100:
            elapsed = time.perf_counter() - self.started
            print(
                f"  {stage:<9} {percent:3d}%  ({elapsed:.0f} s)",
                file=self.out or sys.stderr,
                flush=True,
            )
            self.last = percent


def result_summary(result, top: int = 3) -> str:
    """A few lines a person reads first: risk, group, percentile, strongest prompts."""
    lines = [f"model:  {result.model_label}"]
    group = result.risk_group or "n/a"
    pct = (
        "n/a"
        if result.risk_percentile is None
        else f"{result.risk_percentile:.0f}th percentile of the model's cohort"
    )
    lines.append(f"risk:   {result.risk:.3f}  ({group} risk; {pct})")
    survival = ", ".join(f"{s:.2f}" for s in result.explanation.survival)
    lines.append(f"S(t) at the end of each time bin ({result.time_unit}): {survival}")
    ranked = sorted(result.explanation.contributions, key=lambda c: abs(c.delta_risk), reverse=True)
    for c in ranked[:top]:
        direction = "raises" if c.delta_risk > 0 else "lowers"
        lines.append(f"  [{c.level}] {c.name}: {direction} risk by {abs(c.delta_risk):.3f}")
    for level, lv in result.explanation.levels.items():
        lines.append(f"{level}: {int(lv.selected.sum())} of {len(lv.coords)} selected")
    lines.extend(f"note:   {w}" for w in result.warnings)
    return "\n".join(lines)


def default_model_path():
    """The shipped demo model directory."""
    from napari_hila.errors import ModelFileError
    from napari_hila.resources import resource_path

    try:
        return resource_path("demo_model")
    except FileNotFoundError:
        raise ModelFileError(
            "the demo model is not installed; pass --model RUN_DIR/final_model"
        ) from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_hila.predict import predict_slide

    model = args.model or default_model_path()
    print(f"predicting {args.slide} with {model}", file=sys.stderr)
    result = predict_slide(
        args.slide,
        model,
        out_dir=args.out,
        cache_dir=args.cache,
        device=args.device,
        progress=StageProgress(),
        mpp=args.mpp,
    )
    print(result_summary(result))
    print(f"outputs: {Path(args.out).resolve()}")
    return 0
