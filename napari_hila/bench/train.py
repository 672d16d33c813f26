"""Training speed and memory: seconds per epoch and peak memory, hila beside abmil.

Synthetic cached features held in memory (default: 200 slides of 5,000
patches, 1,024-wide like UNI, regions of 16 x 16 patches), one slide per
optimiser step, Adam. Every run is one model in its own fresh process, so its
peak resident memory is its own (the features' own size is reported beside
it); the models alternate over ``--rounds`` rounds (A, B, A, B), so load
drift hits both alike, and the first two are compared per round (their
quotient's median, min and max, the second model named as the peer).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from typing import Any

import numpy as np

from napari_hila.bench.timing import head_to_head, spread

# Imported where used, not here: torch, features.store, models and training (torch,
# 2.7 s). Every napari-hila command imports this module to build its parser
# (tests/test_startup_imports.py).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slides", type=int, default=200, help="synthetic slides per epoch")
    parser.add_argument("--patches", type=int, default=5000, help="patches per slide")
    parser.add_argument("--dim", type=int, default=1024, help="feature width")
    parser.add_argument("--models", default="hila,abmil", help="comma-separated registry names")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per model")
    parser.add_argument("--batch-size", type=int, default=1, help="slides per step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic features")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating runs of each model, one process each (2)"
    )


def _synthetic_bags(n_slides: int, n_patches: int, dim: int, seed: int):
    from napari_hila.features.store import SlideFeatures

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_patches)))
    cols, rows = np.meshgrid(np.arange(side), np.arange(side))
    coords = (np.stack([cols.ravel(), rows.ravel()], 1)[:n_patches] * 256).astype(np.int64)
    cells = coords // 4096
    keys, p2r = np.unique(cells[:, 1] * 1000 + cells[:, 0], return_inverse=True)
    region_coords = np.stack([keys % 1000, keys // 1000], 1).astype(np.int64) * 4096
    bags = []
    for _ in range(n_slides):
        bags.append(
            SlideFeatures(
                rng.standard_normal((n_patches, dim), dtype=np.float32),
                coords,
                rng.standard_normal((len(keys), dim), dtype=np.float32),
                region_coords,
                p2r.astype(np.int64),
                attrs={"encoder": "synthetic"},
            )
        )
    return bags


def _measure(model_name: str, args: dict[str, Any]) -> dict[str, Any]:
    """In a child process: build the features, train, report time and peak memory."""
    import torch

    from napari_hila.models.registry import build_model, get_model_spec
    from napari_hila.training.trainer import (
        FitSettings,
        data_config,
        fit_model,
        install_prompt_embeddings,
        wants_prompts,
    )

    if args["threads"] > 0:
        torch.set_num_threads(args["threads"])
    bags = _synthetic_bags(args["slides"], args["patches"], args["dim"], args["seed"])
    features_gb = sum(b.features.nbytes + b.region_features.nbytes for b in bags) / 2**30
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rng = np.random.default_rng(args["seed"])
    spec = get_model_spec(model_name)
    prompt_set = None
    if wants_prompts(spec.config_cls):
        names = [f"prompt {k}" for k in range(8)]
        prompt_set = {
            "text_dim": 384,
            "levels": {
                lv: {
                    "names": names,
                    "texts": names,
                    "embeddings": rng.standard_normal((8, 384)).tolist(),
                }
                for lv in ("patch", "region")
            },
        }
    torch.manual_seed(args["seed"])
    model = build_model(
        model_name, **data_config(spec.config_cls, args["dim"], args["dim"], 4, prompt_set)
    )
    install_prompt_embeddings(model, prompt_set)
    bins = rng.integers(0, 4, len(bags))
    events = rng.integers(0, 2, len(bags))
    stamps = [time.perf_counter()]
    settings = FitSettings(
        epochs=args["epochs"], batch_size=args["batch_size"], seed=args["seed"], show_progress=False
    )
    fit_model(
        model,
        bags,
        bins,
        events,
        settings,
        on_epoch=lambda e, loss: stamps.append(time.perf_counter()),
    )
    per_epoch = np.diff(stamps)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "seconds_per_epoch": float(per_epoch.mean()),
        "seconds_per_epoch_each": per_epoch.round(2).tolist(),
        "slides_per_second": float(len(bags) / per_epoch.mean()),
        "peak_rss_gb": round(peak_gb, 3),
        "rss_before_training_gb": round(baseline_rss, 3),
        "features_in_memory_gb": round(features_gb, 3),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "torch_threads": torch.get_num_threads(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = {
        "slides": args.slides,
        "patches": args.patches,
        "dim": args.dim,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "threads": args.threads,
    }
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    context = multiprocessing.get_context("spawn")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:  # A, B, A, B: each run in a fresh process
            pool = context.Pool(1)
            try:
                runs[name].append(pool.apply(_measure, (name, settings)))
            finally:
                pool.close()
                pool.join()
    times = {name: [r["seconds_per_epoch"] for r in rows] for name, rows in runs.items()}
    results = {
        name: {
            **rows[0],
            "seconds_per_epoch": round(statistics.median(times[name]), 3),
            "seconds_per_epoch_spread": spread(times[name], 3),
            "seconds_per_epoch_rounds": [round(t, 3) for t in times[name]],
            "peak_rss_gb_rounds": [r["peak_rss_gb"] for r in rows],
        }
        for name, rows in runs.items()
    }
    out: dict[str, Any] = {
        "settings": {**settings, "rounds": args.rounds},
        "note": "synthetic features in memory; one fresh process per run, models alternating; "
        "peak RSS includes the features",
        "results": results,
    }
    if len(names) >= 2:
        out[f"{names[0]}_vs_{names[1]}"] = head_to_head(names[0], names[1], times)
    return out
