"""Run a trained model on one slide (or its features) and write every output to a folder.

Writes result.json/result.npz, selection maps and per-prompt heatmaps as PNGs
aligned to thumbnail.png, patches.geojson (QuPath: File > Import objects),
patch_scores.csv, km.png (this slide against the model's cohort) and
contributions.png. Features are cached, so a second run on a slide is fast.

In place of a slide, a feature file (.h5 from `napari-hila extract`, CLAM or
TRIDENT .h5, .pt): no pixel is read, so thumbnail.png and the PNG heatmaps are
skipped. Many slides at once: a folder of slides or feature files, a list file
(.txt, one path per line) or a cohort CSV (patient_id, slide_id, time, event;
external validation). Each slide gets a sub-folder of --out; --out/summary.csv
(slide, status, patches, seconds, error), --out/predictions.csv (slide, risk,
group, percentile [, patient_id, time, event]) and, with outcomes,
--out/metrics.json (patient-level C-index). Re-running resumes: slides already
predicted by the same model from the same file are skipped.

Examples:
  napari-hila predict slide.svs --model runs/hila/final_model --out results/slide
  napari-hila predict feats/ --model runs/hila/final_model --out results/cohort
  napari-hila predict external.csv --slides /data/external --model runs/hila/final_model --out results/ext
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from napari_hila.commands.cluster import add_cluster_arguments, cluster_client, wants_cluster
from napari_hila.commands.options import (
    add_mpp_argument,
    add_slide_search_arguments,
    add_threads_argument,
    printing_slide_warnings,
)
from napari_hila.devices import configure_torch_threads
from napari_hila.errors import HilaError, ModelFileError
from napari_hila.export import NO_PIXELS_NOTE, write_prediction_folder
from napari_hila.io_utils import check_writable_folder
from napari_hila.predict import FEATURE_SUFFIXES, predict_features, predict_slide
from napari_hila.predict_many import (
    LIST_SUFFIXES,
    items_in_cohort,
    items_in_folder,
    items_in_list,
    predict_many,
)
from napari_hila.resources import demo_model_path
from napari_hila.slides import SLIDE_SUFFIXES

# All light: predict, predict_many and export load torch only when a model runs. Every
# command builds the whole parser, which imports this module; these add 3 ms to it
# (predict_many; the rest it already loads). tests/test_startup_imports.py holds it.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "slide",
        help="whole-slide image (.svs, .ndpi, .tif, ...), a feature file (.h5, .pt), a folder "
        "of either, a list file (.txt, one path per line) or a cohort CSV "
        "(patient_id, slide_id, time, event)",
    )
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
    parser.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="local weights of the model's patch encoder when it needs some (default: the "
        "encoders config, ~/.napari-hila/encoders.yaml or $NAPARI_HILA_ENCODERS); cached "
        "features of the weights the model was trained with need none",
    )
    parser.add_argument(
        "--slides",
        default=None,
        metavar="DIR",
        help="with a cohort CSV: the folder holding its slides or feature files "
        "(<slide_id>.svs, .h5, ...; default: the CSV's folder)",
    )
    add_slide_search_arguments(parser, "with a folder", "*.svs")
    parser.add_argument(
        "--quiet", action="store_true", help="no per-stage progress lines (log files)"
    )
    add_cluster_arguments(parser)  # for many slides: one task per slide
    add_mpp_argument(parser)
    add_threads_argument(parser)


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


def contribution_text(c) -> str:
    """One prompt's effect in words: direction, size in risk and in cohort SDs, or negligible."""
    if c.negligible:
        return f"negligible ({c.delta_risk:+.3f}, within its noise floor {c.noise_floor:.3f})"
    direction = "raises" if c.delta_risk > 0 else "lowers"
    sd = f" ({abs(c.delta_sd):.2f} cohort risk SD)" if c.delta_sd is not None else ""
    return f"{direction} risk by {abs(c.delta_risk):.3f}{sd}"


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
    exp = result.explanation
    if exp.baseline_risk is not None and exp.contributions:
        lines.append(
            f"prompts: risk = baseline {exp.baseline_risk:.3f} (the model cohort's mean prompt "
            "terms) + the prompts' contributions"
        )
    ranked = sorted(exp.contributions, key=lambda c: abs(c.delta_risk), reverse=True)
    ungrounded = set(result.extra.get("ungrounded_prompts", []))
    for c in ranked[:top]:
        note = "  (not grounded: a label on an arbitrary direction)" if c.name in ungrounded else ""
        lines.append(f"  [{c.level}] {c.name}: {contribution_text(c)}{note}")
    for level, lv in result.explanation.levels.items():
        lines.append(f"{level}: {int(lv.selected.sum())} of {len(lv.coords)} selected")
    lines.extend(f"note:   {w}" for w in result.warnings)
    return "\n".join(lines)


def default_model_path():
    """The shipped demo model directory."""
    try:
        return demo_model_path()
    except FileNotFoundError:
        raise ModelFileError(
            "the demo model is not installed; pass --model RUN_DIR/final_model"
        ) from None


def input_kind(path: str) -> str:
    """ "slide", "features", "folder", "list" (.txt: one file per line) or "cohort" (.csv),
    from what ``path`` is; anything else is one clear error."""
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_file() and suffix in FEATURE_SUFFIXES:
        return "features"
    if p.is_file() and suffix in LIST_SUFFIXES:
        return "list"
    if p.is_file() and suffix == ".csv":
        return "cohort"
    if p.exists() and suffix in SLIDE_SUFFIXES:
        return "slide"
    if p.is_dir():
        return "folder"
    what = "does not exist" if not p.exists() else f"is not a slide or feature file ({suffix})"
    raise HilaError(
        f"{path}: {what}; give a slide ({', '.join(sorted(SLIDE_SUFFIXES))}), a feature file "
        f"({', '.join(FEATURE_SUFFIXES)}), a folder of them, a list file (.txt) or a cohort CSV"
    )


def predict_several(args: argparse.Namespace, kind: str, model) -> int:
    """Many slides into one folder each; the tables; exit 1 when any slide failed."""
    if kind == "folder":
        items = items_in_folder(args.slide, recursive=args.recursive, pattern=args.pattern)
    elif kind == "list":
        items = items_in_list(args.slide)
    else:
        items = items_in_cohort(args.slide, args.slides)
    if not items:
        raise HilaError(f"{args.slide}: no slides or feature files to predict")
    many = {"cache_dir": args.cache, "device": args.device, "mpp": args.mpp}
    many["weights"] = args.weights
    if wants_cluster(args):
        with cluster_client(args, len(items)) as client:
            done = predict_many(items, model, args.out, **many, client=client, threads=args.threads)
    else:
        done = predict_many(items, model, args.out, **many)
    failed = len(done.failures)
    print(
        f"{len(items) - failed} of {len(items)} slides predicted "
        f"({len(done.cached)} already done), {failed} failed: {done.table}, {done.summary}"
    )
    if done.metrics is not None:
        c = done.metrics.get("c_index")
        shown = "n/a" if c is None else f"{c:.4f}"
        print(
            f"C-index {shown} over {done.metrics['n_patients']} patients "
            f"({done.metrics['n_events']} events; a patient's risk is the mean of their slides')"
        )
    return 1 if failed else 0


@printing_slide_warnings
def run(args: argparse.Namespace) -> int:
    kind = input_kind(args.slide)
    check_writable_folder(args.out, "the prediction's outputs")  # before any work, not after
    configure_torch_threads(args.threads)
    model = args.model or default_model_path()
    print(f"predicting {args.slide} with {model}", file=sys.stderr)
    if kind in ("folder", "list", "cohort"):
        return predict_several(args, kind, model)
    if args.scheduler or args.workers:
        raise HilaError(
            "--scheduler/--workers spread many slides over a cluster; for one slide leave them "
            "out (or give a folder, a list file or a cohort CSV)"
        )
    progress = None if args.quiet else StageProgress()
    if kind == "features":
        result = predict_features(args.slide, model, device=args.device, progress=progress)
    else:
        result = predict_slide(
            args.slide,
            model,
            cache_dir=args.cache,
            device=args.device,
            progress=progress,
            mpp=args.mpp,
            weights=args.weights,
        )
    write_prediction_folder(result, args.out, read_slide=kind != "features", progress=progress)

    if NO_PIXELS_NOTE in result.warnings:
        print(f"note: {NO_PIXELS_NOTE}", file=sys.stderr)
    print(result_summary(result))
    print(f"outputs: {Path(args.out).resolve()}")
    return 0
