"""Fold summaries (metrics.json) and the final model's card."""

from __future__ import annotations

import json
import platform
from typing import Any

import numpy as np
import torch

from napari_hila import __version__
from napari_hila.modelfile import config_to_dict
from napari_hila.models.registry import get_model_spec
from napari_hila.slides.grids import TARGET_MPP
from napari_hila.survival.km import logrank_p
from napari_hila.survival.losses import edges_to_json
from napari_hila.survival.metrics import concordance_index

__all__ = ["summarise_folds", "build_card", "out_of_fold", "KM_NOTE", "THRESHOLD_NOTE"]

THRESHOLD_NOTE = "median of the final model's per-patient risk over the training cohort"
KM_NOTE = (
    "cohort 'risk' is out-of-fold (cross-validated): each patient scored by the fold model that "
    "did not train on them; 'risk_group' splits it at that fold's training-set median risk"
)

# recorded under encoders (how the region features were made), not as a grid setting
_NOT_GRID = (
    "region_encoder",
    "region_encoder_version",
    "region_encoder_dtype",
    "region_size",
    "region_px",
)


def out_of_fold(folds: list[dict]) -> dict[str, dict]:
    """Per patient: the out-of-fold risk, its fold, and high/low at that fold's training median."""
    oof = {}
    for fold in folds:
        for pid, risk in zip(fold["test_patients"], fold["test_risk"], strict=True):
            oof[pid] = {
                "risk": float(risk),
                "fold": int(fold["fold"]),
                "high": bool(risk > fold["train_median_risk"]),
            }
    return oof


def summarise_folds(folds: list[dict], patient_time: dict, patient_event: dict) -> dict[str, Any]:
    """Per-fold C-index, mean, sample std, and the log-rank p of the pooled high/low split."""
    c = np.array([f["c_index"] for f in folds], float)
    oof = out_of_fold(folds)
    ids = list(oof)
    times = np.array([patient_time[p] for p in ids], float)
    events = np.array([patient_event[p] for p in ids], int)
    high = np.array([oof[p]["high"] for p in ids], bool)
    risks = np.array([oof[p]["risk"] for p in ids], float)
    return {
        "c_index_per_fold": c.tolist(),
        "c_index_mean": float(np.nanmean(c)),
        "c_index_std": float(np.nanstd(c, ddof=1)) if len(c) > 1 else 0.0,
        "std_note": "sample standard deviation (ddof=1) over folds",
        "logrank_p": logrank_p(times, events, high),
        "logrank_note": (
            "out-of-fold patients split high/low at their fold's training-set median risk, pooled over folds"
        ),
        "n_high": int(high.sum()),
        "n_low": int((~high).sum()),
        "c_index_pooled_out_of_fold": concordance_index(times, events, risks),
        "n_patients": len(ids),
        "n_events": int(events.sum()),
        "n_folds": len(folds),
    }


def _ran_with(attrs, dtype_key: str, preprocessing: bool = True) -> dict[str, Any]:
    """How the encoder ran, as the feature file records it: dtype, device, preprocessing.

    Left out where the file does not say (CLAM/TRIDENT files, files from before these
    attributes; the typed card reads them as None); ``preprocessing`` is the owners' transform the tiles went through
    (``encoders.preprocess.ImagePreprocess.to_dict``), parsed from the file's JSON.
    """
    recorded = attrs.get("encoder_preprocessing") if preprocessing else None
    steps = None
    if isinstance(recorded, str) and recorded:
        try:
            steps = json.loads(recorded)
        except ValueError:  # written by another tool: kept as it is rather than fail training
            steps = recorded
        if not isinstance(steps, dict):
            steps = {"recorded": recorded}
    ran = {
        "dtype": attrs.get(dtype_key),
        "device": attrs.get("encoder_device"),
        "preprocessing": steps,
    }
    return {k: v if k == "preprocessing" else str(v) for k, v in ran.items() if v is not None}


def _encoders(feats) -> dict[str, Any]:
    attrs = feats.attrs
    # a region encoder of its own records its dtype apart; its preprocessing is not recorded.
    # Mean-pooled regions (region_mode "mean") and a shared encoder ran as the patches did.
    own_region = "region_encoder_dtype" in attrs
    return {
        "patch": {
            "name": feats.encoder,
            "version": str(attrs.get("encoder_version", "")),
            "dim": int(feats.features.shape[1]),
            **_ran_with(attrs, "encoder_dtype"),
        },
        "region": {
            "name": feats.region_encoder,
            "version": str(attrs.get("region_encoder_version", attrs.get("encoder_version", ""))),
            "dim": int(feats.region_features.shape[1]),
            **_ran_with(
                attrs,
                "region_encoder_dtype" if own_region else "encoder_dtype",
                preprocessing=not own_region,
            ),
        },
    }


def _grid(feats) -> dict[str, Any]:
    attrs = feats.attrs
    grid = {
        "patch_px": int(attrs.get("patch_px", feats.patch_size)),
        "region_px": int(attrs.get("region_px", feats.region_size)),
        "target_mpp": float(attrs.get("target_mpp", TARGET_MPP)),
    }
    if getattr(feats, "scales", None):  # extra magnifications (CrossFusion): extract them again
        grid["magnifications"] = ",".join(sorted(feats.scales))
    # Any other extraction setting recorded with the features (e.g. how region
    # features were made) travels with the model so prediction can repeat it.
    for key, value in attrs.items():
        if key.startswith("region_") and key not in _NOT_GRID:
            grid.setdefault(
                key, value if isinstance(value, (int, float, str, bool)) else str(value)
            )
    return grid


def build_card(
    config: Any,
    settings,
    cohort,
    example_feats,
    edges: np.ndarray,
    patient_ids: list[str],
    final_risk: np.ndarray,
    metrics: dict,
    folds: list[dict],
    prompt_set: dict | None,
    losses: list[float],
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the viewer and prediction need besides the weights.

    ``inputs`` (``{"encoders", "grid"}``) comes from a model that reads its own
    inputs (raw tiles) instead of feature files, and replaces what the features say.
    """
    inputs = inputs or {}
    spec = get_model_spec(settings.model)
    config = config_to_dict(config)
    final = dict(zip(patient_ids, np.asarray(final_risk, float).tolist(), strict=True))
    return {
        "model": settings.model,
        "config": config,
        "label": settings.label or f"{spec.name} trained on {cohort.path.name}",
        "cancer_type": settings.cancer_type,
        "description": spec.description,
        "encoders": inputs.get("encoders") or _encoders(example_feats),
        "prompts": _prompts(prompt_set, config),
        "time_bin_edges": edges_to_json(edges),
        "time_unit": settings.time_unit,
        "risk_threshold": float(np.median(list(final.values()))),
        "risk_threshold_method": THRESHOLD_NOTE,
        "cohort": _cohort_record(cohort, folds, final),
        "metrics": metrics,
        "grid": inputs.get("grid") or _grid(example_feats),
        "training": _training_record(settings, cohort, edges, losses),
        "version": __version__,
    }


def _prompts(prompt_set: dict | None, config: dict) -> dict[str, Any]:
    """The prompt set's name and encoders, and the levels the model's config uses."""
    prompt_set = prompt_set or {}
    used_levels = {
        level: {
            "names": list(v["names"]),
            "texts": list(v["texts"]),
            # per prompt: the vocabulary terms that ground it, or None (not grounded)
            **({"grounding": list(v["grounding"])} if v.get("grounding") is not None else {}),
        }
        for level, v in prompt_set.get("levels", {}).items()
        if f"{level}_prompt_texts" in config
    }
    return {
        "set": prompt_set.get("name"),
        "text_encoder": prompt_set.get("text_encoder"),
        "embedding_encoder": prompt_set.get("embedding_encoder"),
        **used_levels,
    }


def _cohort_record(cohort, folds: list[dict], final: dict[str, float]) -> dict[str, Any]:
    """Per cross-validated patient: outcome, out-of-fold risk and group, fold, final-model risk."""
    oof = out_of_fold(folds)
    times = dict(zip(cohort.patient_ids, cohort.patient_times.tolist(), strict=True))
    events = dict(zip(cohort.patient_ids, cohort.patient_events.tolist(), strict=True))
    ids = [p for p in cohort.patient_ids if p in oof]
    return {
        "patient_id": ids,
        "time": [float(times[p]) for p in ids],
        "event": [int(events[p]) for p in ids],
        "risk": [oof[p]["risk"] for p in ids],
        "risk_group": ["high" if oof[p]["high"] else "low" for p in ids],
        "fold": [oof[p]["fold"] for p in ids],
        "final_model_risk": [final[p] for p in ids],
        "note": KM_NOTE + "; 'final_model_risk' is the final model's in-sample risk, "
        "the scale new slides' risk percentiles are read on",
    }


def _training_record(settings, cohort, edges: np.ndarray, losses: list[float]) -> dict[str, Any]:
    """How the final model was trained: settings, cohort size, losses, library versions."""
    return {
        "epochs": settings.epochs,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "optimiser": "Adam",
        "seed": settings.seed,
        "n_bins": len(edges) - 1,
        "n_patients": len(cohort.patient_ids),
        "n_slides": len(cohort.rows),
        "cohort_file": cohort.path.name,
        "final_model": "trained on all patients after cross-validation; the metrics are the "
        "cross-validated fold models', not this model's",
        "final_epoch_losses": losses,
        "max_patches": settings.max_patches,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
