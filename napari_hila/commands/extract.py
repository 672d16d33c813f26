"""Extract patch and region features for slides into one HDF5 file per slide.

Examples:
  napari-hila extract slides/ --out features/
  napari-hila extract a.svs b.ndpi --out features/ --encoder uni --weights uni.safetensors
  napari-hila extract slides/ --out features/ --workers 4          # a local Dask cluster
  napari-hila extract slides/ --out features/ --scheduler tcp://head:8786

Finished slides are cached: a rerun skips them, and an interrupted slide
resumes where it stopped. One slide failing does not stop the others; the exit
status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_hila.commands.cluster import add_cluster_arguments, cluster_client, wants_cluster
from napari_hila.commands.options import add_mpp_argument, add_slide_search_arguments, at_least
from napari_hila.errors import HilaError
from napari_hila.io_utils import write_failure
from napari_hila.slides.grids import PATCH_PX, REGION_PX, TARGET_MPP
from napari_hila.slides.opener import slide_warnings_printed

# Imported where used, not here: every command builds the whole parser, which imports
# this module (0.25 s; tests/test_startup_imports.py). napari_hila.encoders and
# features.extract / extract_many load torch (0.9-1.4 s on top of the parser, measured
# here), and tqdm.auto adds 24 ms (a tenth of the parser) for extract's progress bars.

#: ``--precision`` choices (encoders.vit.resolve_precision; named here so --help loads no torch)
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slides", nargs="+", metavar="SLIDES_OR_DIR", help="slide files or folders")
    parser.add_argument("--out", required=True, help="folder for the feature files (the cache)")
    add_slide_search_arguments(parser, "in the named folders", "TCGA-*.svs")
    parser.add_argument(
        "--qc",
        action="store_true",
        help="also write OUT/qc/<file>.png per slide: the thumbnail with non-tissue dimmed and "
        "the encoded patches (green) and regions (yellow) outlined",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (log files); failures and the summary are still printed",
    )
    parser.add_argument(
        "--encoder",
        default="hila-descriptor",
        help="patch encoder: hila-descriptor (default, no weights), or with weights (--weights "
        "or the encoders config): conch, conch-trunk, plip, quiltnet, clip, uni, vit",
    )
    parser.add_argument(
        "--region-encoder", default=None, help="region encoder (default: the patch encoder)"
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="local weights of the patch encoder (default: the encoders config, "
        "~/.napari-hila/encoders.yaml or $NAPARI_HILA_ENCODERS)",
    )
    parser.add_argument(
        "--region-weights", default=None, help="local weights of the region encoder"
    )
    parser.add_argument(
        "--region-mode",
        choices=("view", "mean"),
        default="view",
        help="region feature: the encoder on the whole region at low magnification "
        "(view, default) or the mean of its patch features (mean)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="what a network encoder runs in (default: $NAPARI_HILA_PRECISION, else auto: "
        "bfloat16 or float16 on a GPU, float32 on the CPU); one set explicitly is part of "
        "the cache key and the feature files' names, so it gets its own files",
    )
    parser.add_argument(  # the grid's one definition: slides.grids
        "--patch-px", type=int, default=PATCH_PX, help=f"patch side at target mpp ({PATCH_PX})"
    )
    parser.add_argument(
        "--region-px", type=int, default=REGION_PX, help=f"region side at target mpp ({REGION_PX})"
    )
    parser.add_argument(
        "--target-mpp",
        type=float,
        default=TARGET_MPP,
        help=f"um per pixel of the grid ({TARGET_MPP} = 20x)",
    )
    parser.add_argument(
        "--magnifications",
        default=None,
        help="also store patches at these magnifications, e.g. 5x,10x,20x (CrossFusion)",
    )
    parser.add_argument(
        "--multiscale", action="store_true", help="shorthand for --magnifications 5x,10x,20x"
    )
    parser.add_argument(
        "--batch-size", type=at_least(1), default=64, help="tiles per encoder batch (64)"
    )
    add_mpp_argument(parser)
    add_cluster_arguments(parser)


def options_from_args(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``extract_slide`` given on the command line."""
    if args.multiscale and not args.magnifications:
        args.magnifications = "5x,10x,20x"
    mags = (
        tuple(m.strip() for m in args.magnifications.split(",") if m.strip())
        if args.magnifications
        else None
    )
    return {
        "encoder": args.encoder,
        "region_encoder": args.region_encoder,
        "weights": args.weights,
        "region_weights": args.region_weights,
        "region_mode": args.region_mode,
        "device": args.device,
        "precision": args.precision,
        "patch_px": args.patch_px,
        "region_px": args.region_px,
        "target_mpp": args.target_mpp,
        "magnifications": mags,
        "batch_size": args.batch_size,
        "mpp": args.mpp,
    }


def _check_options(options: dict) -> None:
    """Fail once, before any slide, on settings that would fail every slide."""
    from napari_hila.encoders import get_encoder_spec  # torch: see the imports above

    for key in ("encoder", "region_encoder"):
        if options[key]:
            spec = get_encoder_spec(options[key])
            if spec.kind != "vision":
                raise HilaError(f"--{key.replace('_', '-')} {options[key]!r} is a text encoder")
    if options["region_px"] % options["patch_px"]:
        raise HilaError(f"--region-px {options['region_px']} must be a multiple of --patch-px")
    for key in ("weights", "region_weights"):
        if options[key] and not Path(options[key]).expanduser().exists():
            raise HilaError(
                f"--{key.replace('_', '-')} {options[key]}: no such file or folder; give the "
                "path of the encoder's local weights"
            )


def _check_encoders_load(options: dict, on_cluster: bool) -> None:
    """Load the encoders once, so weights that do not load fail before any slide.

    Locally the loaded encoders stay cached for the extraction itself; for a cluster
    the check loads them on the CPU, so this process holds no GPU memory it never uses.
    """
    from napari_hila.features.extract import check_encoders_load  # torch

    check_encoders_load(
        *(options[k] for k in ("encoder", "weights", "region_encoder", "region_weights")),
        device="cpu" if on_cluster else options["device"],
        region_mode=options["region_mode"],
        precision=options["precision"],
    )


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm  # 24 ms, and torch below: see the imports above

    from napari_hila.features.extract_many import (
        extract_many,
        find_slides,
        format_summary,
        write_summary_csv,
    )

    options = options_from_args(args)
    _check_options(options)
    if args.qc:
        options["qc_dir"] = str((Path(args.out) / "qc").resolve())
    slides = find_slides(args.slides, recursive=args.recursive, pattern=args.pattern)
    if not slides:
        where = " ".join(args.slides)
        hint = "" if args.recursive else " (sub-folders are searched with --recursive)"
        print(f"error: no slides found in {where}{hint}", file=sys.stderr)
        return 1
    _check_encoders_load(options, on_cluster=wants_cluster(args))
    overall = tqdm(
        total=len(slides),
        desc="slides",
        unit="slide",
        position=0,
        file=sys.stderr,
        disable=args.quiet,
    )

    def on_row(row: dict) -> None:
        overall.update(1)
        if row["status"] == "failed":
            tqdm.write(f"failed: {row['error']}", file=sys.stderr)

    if wants_cluster(args):
        rows = _run_on_cluster(slides, args, options, on_row)
    else:
        bars: dict = {}

        def progress_for(slide):
            bar = tqdm(
                total=100,
                desc=slide.name[:30],
                unit="%",
                position=1,
                leave=False,
                file=sys.stderr,
                disable=args.quiet,
            )
            bars[slide] = bar

            def progress(stage: str, fraction: float) -> None:
                bar.set_postfix_str(stage)
                bar.n = int(100 * fraction) if stage == "tiles" else bar.n
                bar.refresh()

            return progress

        def close_bar(row: dict) -> None:
            for bar in bars.values():
                bar.close()
            bars.clear()
            on_row(row)

        # each slide's warnings (pixel size assumed, levels left out) once, above the bars
        with slide_warnings_printed(lambda line: tqdm.write(line, file=sys.stderr)):
            rows = extract_many(
                slides, args.out, options, on_row=close_bar, progress_for=progress_for
            )
    overall.close()
    print(format_summary(rows))
    try:
        print(f"summary: {write_summary_csv(Path(args.out) / 'summary.csv', rows)}")
    except OSError as err:  # a read-only cache that had every slide: the table above is it
        print(f"note: {write_failure(args.out, err, 'summary.csv')}", file=sys.stderr)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _run_on_cluster(slides, args, options, on_row) -> list[dict]:
    from napari_hila.features.extract_many import extract_on_cluster  # torch

    with cluster_client(args, len(slides)) as client:
        return extract_on_cluster(slides, args.out, options, client, on_row)
