"""Train and cross-validate a survival model on extracted features.

Patient-level k-fold cross-validation (stratified by event, splits saved in
RUN_DIR), a fixed number of epochs (no model selection on the reported fold),
then a final model trained on all patients for use in the viewer
(RUN_DIR/final_model). Re-running the same command resumes an interrupted run;
a changed cohort, feature file or setting is refused (--force starts over).

Example:
  napari-hila train --cohort cohort.csv --features feats/ --out runs/hila --prompts brca
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_hila.commands.options import (
    add_threads_argument,
    at_least,
    non_negative_float,
    positive_float,
)
from napari_hila.devices import configure_torch_threads, resolve_device
from napari_hila.errors import FeatureFileError, HilaError
from napari_hila.survival.cohort_csv import feature_file_for, read_cohort

# models and training are imported where used (torch, 2.7 s): every napari-hila command
# builds this parser, `--help` included (tests/test_startup_imports.py).

DEFAULT_PROMPT_SET = "BRCA"


def models_epilog() -> str:
    """The registered models, one line each (shown by ``train --help``)."""
    from napari_hila.models.registry import available_models, get_model_spec

    names = available_models()
    width = max(map(len, names))
    lines = [f"  {n:<{width}}  {get_model_spec(n).description}" for n in names]
    return "models (--model):\n" + "\n".join(lines)


def _list_models_in_help(parser: argparse.ArgumentParser) -> None:
    # the registry imports torch: built only when help is printed, so other commands stay fast
    plain_format_help = parser.format_help

    def format_help() -> str:
        parser.epilog = models_epilog()
        return plain_format_help()

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.format_help = format_help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _list_models_in_help(parser)
    parser.add_argument(
        "--cohort", required=True, help="CSV: patient_id, slide_id, time, event [, fold]"
    )
    parser.add_argument(
        "--features",
        default=None,
        help="folder of <slide_id>.h5 feature files (feature-based models)",
    )
    parser.add_argument(
        "--slides",
        default=None,
        help="folder of <slide_id>.svs/.tif/... slide files (models trained end to end on tiles, e.g. vptsurv)",
    )
    parser.add_argument("--out", required=True, help="run folder (created; re-use it to resume)")
    parser.add_argument(
        "--model", default="hila", help="registry model name, listed below (default: hila)"
    )
    parser.add_argument(
        "--prompts",
        default=DEFAULT_PROMPT_SET,
        help="prompt set (cancer type, e.g. BRCA, or a YAML file) for models that use prompts "
        f"(default: {DEFAULT_PROMPT_SET})",
    )
    parser.add_argument(
        "--text-encoder",
        default="auto",
        help="text encoder for the prompts (default: auto: the features' own text tower for "
        "conch, plip, quiltnet and clip features, descriptor-vocabulary for hila-descriptor "
        "features, whose space it shares, else minilm); a prompt set with its own embeddings "
        "file uses those instead",
    )
    parser.add_argument(
        "--text-weights",
        default=None,
        metavar="PATH",
        help="local weights of the text encoder (default: the encoders config, "
        "~/.napari-hila/encoders.yaml or $NAPARI_HILA_ENCODERS)",
    )
    parser.add_argument(
        "--folds",
        type=at_least(2),
        default=5,
        help="cross-validation folds, by patient (default: 5)",
    )
    parser.add_argument(
        "--epochs",
        type=at_least(1),
        default=20,
        help="fixed epochs per fold; no best-epoch picking (20)",
    )
    parser.add_argument("--lr", type=positive_float, default=2e-4, help="Adam learning rate (2e-4)")
    parser.add_argument(
        "--weight-decay", type=non_negative_float, default=1e-5, help="Adam weight decay (1e-5)"
    )
    parser.add_argument(
        "--bins", type=at_least(1), default=4, help="time bins (quantiles of uncensored times)"
    )
    parser.add_argument(
        "--batch-size", type=at_least(1), default=1, help="slides per optimiser step"
    )
    parser.add_argument(
        "--max-patches", type=at_least(1), default=None, help="random patches per bag per step"
    )
    parser.add_argument("--splits", default=None, help="reuse a splits.json from an earlier run")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for splits, initialisation and sampling (0)"
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument(
        "--time-unit", default="months", help="unit of the CSV's time column, shown in plots"
    )
    parser.add_argument("--label", default=None, help="label shown with the model in the viewer")
    parser.add_argument(
        "--cancer-type", default=None, help="shown on the model card (default: the prompt set)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model setting, e.g. --set select_ratio=0.5 (value parsed as JSON when it can be)",
    )
    parser.add_argument("--no-final", action="store_true", help="skip the final all-patient model")
    parser.add_argument(
        "--force",
        action="store_true",
        help="start over: delete the run already in --out (its settings, folds and final model) "
        "instead of resuming it; needed when the cohort, the features or the settings changed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_argument(parser)


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (JSON values where they parse)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise HilaError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def print_fold_table(metrics: dict[str, Any], out=None) -> None:
    """The per-fold C-index table with mean and standard deviation."""
    print(f"\n{'fold':>6}  {'C-index':>8}", file=out)
    for k, c in enumerate(metrics["c_index_per_fold"]):
        print(f"{k + 1:>6}  {c:>8.4f}", file=out)
    print(
        f"{'mean':>6}  {metrics['c_index_mean']:>8.4f}  (std {metrics['c_index_std']:.4f}, ddof=1)",
        file=out,
    )
    print(
        f"log-rank p (high vs low at training-fold median risk, out of fold): {metrics['logrank_p']:.3g}",
        file=out,
    )
    print(f"{metrics['patient_risk']}", file=out)


def check_magnifications_present(cohort, bags, features_dir) -> None:
    """A multi-magnification model needs the extra magnifications in every feature file."""
    lacking = [row.slide_id for row, bag in zip(cohort.rows, bags, strict=True) if not bag.scales]
    if lacking:
        raise FeatureFileError(
            f"{feature_file_for(features_dir, lacking[0])}: no extra magnifications "
            f"({len(lacking)} of {len(bags)} feature files lack them); this model needs patches "
            "at 5x, 10x and 20x: run `napari-hila extract SLIDES --out DIR --magnifications 5x,10x,20x`"
        )


def run(args: argparse.Namespace) -> int:
    configure_torch_threads(args.threads)

    from napari_hila.models.registry import get_model_spec
    from napari_hila.training.crossval import (
        RunSettings,
        embed_prompts,
        load_cohort_features,
        run_training,
    )
    from napari_hila.training.trainer import wants_prompts

    spec = get_model_spec(args.model)  # an unknown name is a ModelConfigError (a HilaError)
    device = str(resolve_device(args.device))
    if spec.inputs == "tiles":
        from napari_hila.training.cohort_slides import cohort_slide_refs

        if not args.slides:
            raise HilaError(
                f"model {args.model!r} trains end to end on raw tiles: give --slides DIR, "
                "the folder holding the cohort's slide files"
            )
        cohort = read_cohort(args.cohort, None, time_unit=args.time_unit)
        bags = cohort_slide_refs(cohort, args.slides)
    else:
        if not args.features:
            raise HilaError(
                f"model {args.model!r} trains on extracted features: give --features DIR "
                "(run `napari-hila extract` first)"
            )
        cohort = read_cohort(args.cohort, args.features, time_unit=args.time_unit)
        bags = load_cohort_features(cohort, args.features)
        if spec.inputs == "multiscale":
            check_magnifications_present(cohort, bags, args.features)
    prompt_set = None
    if wants_prompts(spec.config_cls):
        vision_encoder = getattr(bags[0], "encoder", None) if bags else None
        prompt_set = embed_prompts(
            args.prompts,
            args.text_encoder,
            device,
            vision_encoder=vision_encoder,
            text_weights=args.text_weights,
        )
    settings = RunSettings(
        model=args.model,
        model_config=parse_settings(args.set),
        prompts=prompt_set["name"] if prompt_set else None,
        folds=args.folds,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        n_bins=args.bins,
        batch_size=args.batch_size,
        max_patches=args.max_patches,
        seed=args.seed,
        time_unit=args.time_unit,
        label=args.label,
        cancer_type=args.cancer_type or (prompt_set or {}).get("cancer_type"),
        train_final=not args.no_final,
    )
    metrics = run_training(
        cohort,
        bags,
        args.out,
        settings,
        prompt_set=prompt_set,
        splits_file=args.splits,
        device=device,
        show_progress=not args.quiet,
        force=args.force,
    )
    print_fold_table(metrics)
    out = Path(args.out)
    print(f"\nmetrics: {out / 'metrics.json'}\nsplits:  {out / 'splits.json'}")
    if settings.train_final:
        print(f"model:   {out / 'final_model'} (trained on all patients, for the viewer)")
    return 0
