"""Build the SYNTHETIC demo cohort and train the shipped demo model (reproducible, seeded).

    .venv/bin/python scripts/train_demo_model.py            # full build (tens of minutes on 2 cores)
    .venv/bin/python scripts/train_demo_model.py --quick    # small smoke run into --work only

Steps, each resumable (re-running skips what is done):
1. tile library from the bundled sample slide (descriptor features, morphology groups);
2. virtual patients whose hazard comes from composition and spatial arrangement
   (napari_hila.demo.synthetic_cohort), written as feature files + cohort.csv + truth.csv;
3. 5-fold cross-validation of HiLa and the baselines with the same splits, and
   HiLa's final model on all patients;
4. the final model is copied to napari_hila/resources/demo_model (shipped in the
   wheel) with the oracle C-index of the true hazard and every model's
   cross-validated C-index in its card.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--work", default=str(REPO / "build" / "demo"), help="working folder (cohort, runs)"
    )
    p.add_argument("--patients", type=int, default=150)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", default="DEMO", help="prompt set (DEMO names what was planted)")
    p.add_argument("--baselines", default="abmil,hila-patch,vl-cosine")
    p.add_argument(
        "--ship",
        default=str(REPO / "napari_hila" / "resources" / "demo_model"),
        help="where the model goes",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="tiny smoke run; does not ship")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_cohort(work: Path, args) -> tuple[Path, dict]:
    from napari_hila.demo.synthetic_cohort import (
        DemoSettings,
        make_demo_cohort,
        oracle_c_index,
        write_demo_cohort,
    )
    from napari_hila.demo.tile_library import build_tile_library

    folder = work / "cohort"
    summary_path = folder / "summary.json"
    if summary_path.exists():
        log(f"cohort: already in {folder}")
        return folder, json.loads(summary_path.read_text())
    log("cohort: reading and measuring tiles of the sample slide")
    library = build_tile_library(stride_px=256 if args.quick else 128)
    settings = DemoSettings(n_patients=args.patients, seed=args.seed)
    log(f"cohort: library {library.counts()}; drawing {settings.n_patients} virtual patients")
    patients = make_demo_cohort(library, settings)
    write_demo_cohort(patients, folder)
    summary = {
        "oracle_c_index": oracle_c_index(patients),
        "n_patients": len(patients),
        "n_slides": sum(len(p.slides) for p in patients),
        "event_rate": sum(p.event for p in patients) / len(patients),
        "tile_library": library.counts(),
        "settings": {k: v for k, v in vars(settings).items()},
    }
    from napari_hila.io_utils import write_json_atomic

    write_json_atomic(summary_path, summary)
    log(f"cohort: oracle C-index of the true hazard {summary['oracle_c_index']:.4f}")
    return folder, summary


def train(
    model: str, cohort_dir: Path, work: Path, args, prompt_set, final: bool, label: str
) -> dict:
    from napari_hila.survival.cohort_csv import read_cohort
    from napari_hila.training.crossval import RunSettings, load_cohort_features, run_training

    cohort = read_cohort(cohort_dir / "cohort.csv", cohort_dir / "features")
    bags = load_cohort_features(cohort, cohort_dir / "features")
    settings = RunSettings(
        model=model,
        prompts=prompt_set["name"],
        folds=args.folds,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        label=label,
        cancer_type="synthetic (demo)",
        train_final=final,
    )
    run_dir = work / "runs" / model
    # The same splits for every model: the first run's splits.json is reused.
    first = work / "runs" / "hila" / "splits.json"
    splits = first if first.exists() and model != "hila" else None
    started = time.perf_counter()
    metrics = run_training(
        cohort, bags, run_dir, settings, prompt_set, splits, "cpu", show_progress=False, log=log
    )
    log(
        f"{model}: C-index {metrics['c_index_mean']:.4f} +- {metrics['c_index_std']:.4f} ({time.perf_counter() - started:.0f} s)"
    )
    return metrics


def ship(work: Path, target: Path, summary: dict, results: dict) -> None:
    """Copy HiLa's final model to ``target`` with the demo facts added to its card."""
    from napari_hila.demo.synthetic_cohort import SYNTHETIC_NOTE
    from napari_hila.io_utils import write_json_atomic

    source = work / "runs" / "hila" / "final_model"
    card = json.loads((source / "card.json").read_text())
    from napari_hila.demo import DEMO_LABEL

    card["label"] = DEMO_LABEL  # the label may be reworded without retraining
    card["intended_use"] = "demonstration of the software only; " + SYNTHETIC_NOTE
    card["clinical_use"] = False
    card["demo"] = {
        "note": SYNTHETIC_NOTE,
        "oracle_c_index": summary["oracle_c_index"],
        "oracle_note": "Harrell's C of the simulated true log-hazard on the same patients: the ceiling",
        "cross_validated_c_index": {
            name: {
                "mean": m["c_index_mean"],
                "std": m["c_index_std"],
                "per_fold": m["c_index_per_fold"],
            }
            for name, m in results.items()
        },
        "cohort": summary,
        "built_by": "scripts/train_demo_model.py",
    }
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(source / "model.safetensors", staging / "model.safetensors")
    write_json_atomic(staging / "card.json", card)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    log(f"shipped: {target} ({(target / 'model.safetensors').stat().st_size / 1e6:.2f} MB weights)")


def main(argv=None) -> int:
    import torch

    from napari_hila.demo import DEMO_LABEL
    from napari_hila.training.crossval import embed_prompts

    args = parse_args(argv)
    if args.quick:
        args.patients, args.folds, args.epochs = min(args.patients, 24), 2, 2
    torch.manual_seed(args.seed)
    # One thread: these small per-slide steps gain nothing from more, and on a
    # shared machine oversubscribed threads slow torch down many times over.
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    cohort_dir, summary = build_cohort(work, args)
    # The descriptor's own grounded vocabulary: prompt words mean descriptor measurements.
    prompt_set = embed_prompts(args.prompts, "auto", "cpu", vision_encoder="hila-descriptor")
    results = {"hila": train("hila", cohort_dir, work, args, prompt_set, True, DEMO_LABEL)}
    if not args.quick:  # ship at once; the card is updated as each baseline finishes
        ship(work, Path(args.ship), summary, results)
    for name in [b for b in args.baselines.split(",") if b]:
        results[name] = train(
            name, cohort_dir, work, args, prompt_set, False, f"{name} (demo baseline)"
        )
        if not args.quick:
            ship(work, Path(args.ship), summary, results)
    table = {"oracle (true hazard)": summary["oracle_c_index"]} | {
        k: v["c_index_mean"] for k, v in results.items()
    }
    print(
        json.dumps(
            {"c_index": table, "std": {k: v["c_index_std"] for k, v in results.items()}}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
