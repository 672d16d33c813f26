"""One slide in, one :class:`PredictionResult` out: the CLI's and the viewer's path.

Extraction goes through the feature cache (a slide seen before costs nothing),
with the encoders and tiling grid the model was trained with (from its card);
then one ``explain()`` pass gives risk, survival, maps and prompt contributions.
The risk is placed against the model's cohort: group by the card's threshold,
percentile among the final model's cohort risks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_hila.errors import Cancelled
from napari_hila.results import PredictionResult

__all__ = [
    "default_cache_dir",
    "extraction_settings",
    "features_for_model",
    "predict_slide",
    "risk_group",
    "risk_percentile",
]

Progress = Callable[[str, float], None]
_SYNTHETIC_WARNING = "this model was trained on a synthetic demo cohort: not for clinical use"


def risk_group(risk: float, threshold: float | None) -> str | None:
    """ "high" when the risk is above the model's threshold, else "low"."""
    if threshold is None:
        return None
    return "high" if risk > float(threshold) else "low"


def cohort_reference_risks(card: dict) -> np.ndarray:
    """The cohort risks a new slide's risk is compared with (percentile, histogram).

    The final model's in-sample risks: the same model, so the same scale as a
    new slide's risk and as the card's threshold. Older cards without them fall
    back to the out-of-fold risks.
    """
    cohort = card.get("cohort") or {}
    values = cohort.get("final_model_risk", cohort.get("risk"))
    return np.asarray(values if values is not None else [], float)


def risk_percentile(risk: float, cohort_risks) -> float | None:
    """Percentage of the cohort with a risk at or below ``risk`` (0-100)."""
    values = np.asarray(cohort_risks if cohort_risks is not None else [], float)
    if values.size == 0:
        return None
    return float(100.0 * np.mean(values <= risk))


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("prediction cancelled by the user")


def default_cache_dir() -> Path:
    """Where features are cached between runs (``NAPARI_HILA_CACHE`` overrides)."""
    if os.environ.get("NAPARI_HILA_CACHE"):
        return Path(os.environ["NAPARI_HILA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-hila" / "features"


def extraction_settings(card: dict[str, Any]) -> dict[str, Any]:
    """The :func:`~napari_hila.features.extract.extract_slide` settings a model was trained with."""
    grid = card.get("grid") or {}
    encoders = card.get("encoders") or {}
    patch_encoder = (encoders.get("patch") or {}).get("name", "hila-descriptor")
    region_encoder = (encoders.get("region") or {}).get("name")
    region_mode = str(grid.get("region_mode", "view"))
    settings = {
        "encoder": patch_encoder,
        "patch_px": int(grid.get("patch_px", 256)),
        "region_px": int(grid.get("region_px", 4096)),
        "target_mpp": float(grid.get("target_mpp", 0.5)),
        "region_mode": region_mode,
    }
    if region_mode == "view" and region_encoder and region_encoder != patch_encoder:
        settings["region_encoder"] = region_encoder
    if grid.get("magnifications"):  # multi-magnification models (CrossFusion)
        settings["magnifications"] = tuple(str(grid["magnifications"]).split(","))
    return settings


def features_for_model(
    slide_path: str | os.PathLike,
    card: dict[str, Any],
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    mpp: float | None = None,
):
    """The slide's features with the model's encoders and grid (cached by the features package).

    ``mpp`` overrides or supplies the slide's pixel size, which sizes the grid's tiles.
    """
    from napari_hila.features.extract import load_or_extract

    return load_or_extract(
        slide_path,
        cache_dir if cache_dir is not None else default_cache_dir(),
        device=device,
        progress=progress,
        cancel=cancel,
        mpp=mpp,
        **extraction_settings(card),
    )


def _explain(model, feats, device):
    from napari_hila.models.batch import collate

    batch = collate([feats]).to(device)
    return model.explain(batch, tile_sizes={"patch": feats.patch_size, "region": feats.region_size})


def _warnings(card: dict[str, Any], mpp_is_assumed: bool, num_patches: int) -> list[str]:
    notes = []
    label = str(card.get("label", "")).lower()
    if "synthetic" in label or "not for clinical use" in label:
        notes.append(_SYNTHETIC_WARNING)
    if mpp_is_assumed:
        notes.append(
            "the slide does not record its pixel size; 0.5 um/px was assumed, so tile sizes may be "
            "wrong: set the scanner's value (--mpp, or the dock's um/px field)"
        )
    if num_patches < 16:
        notes.append(
            f"only {num_patches} tissue patches: the prediction rests on very little tissue"
        )
    return notes


def predict_slide(
    slide_path: str | os.PathLike,
    model,
    out_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    mpp: float | None = None,
) -> PredictionResult:
    """Run ``model`` (a model directory or a loaded model) on one slide.

    ``progress(stage, fraction)`` is called with stages "model", "features",
    "explain" and "export"; ``cancel`` (a ``threading.Event``) stops the job
    between steps with :class:`~napari_hila.errors.Cancelled`. With ``out_dir``
    every output file is written there too (see :mod:`napari_hila.export`).
    ``mpp`` (um/px at level 0) overrides or supplies the slide's pixel size:
    the grid's tile sizes and the result's ``mpp`` follow it.
    """
    from napari_hila.models.registry import get_model_spec
    from napari_hila.training.crossval import edges_from_json
    from napari_hila.training.modelfile import LoadedModel, check_features_match, load_model
    from napari_hila.training.scaling import FeatureScaling

    report = progress or (lambda stage, fraction: None)
    slide_path = Path(slide_path)
    report("model", 0.0)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device)
    card = loaded.card
    report("model", 1.0)
    _check_cancel(cancel)
    if get_model_spec(loaded.name).inputs == "tiles":
        # The model reads its own tiles from the slide (VPTSurv): no feature file.
        from napari_hila.training.tiles import explain_slide_tiles

        # progress: "tiles" while the model encodes them, then "explain" when done
        explanation, facts = explain_slide_tiles(
            loaded.model, slide_path, progress, cancel, mpp=mpp
        )
        report("explain", 1.0)
        encoder = str(((card.get("encoders") or {}).get("patch") or {}).get("name", ""))
        fingerprint, mpp, mpp_assumed = facts.fingerprint, facts.mpp, facts.mpp_is_assumed
        mpp_source = facts.mpp_source
        n_patches, n_regions = facts.num_tiles, 0
    else:
        feats = features_for_model(slide_path, card, cache_dir, device, progress, cancel, mpp)
        check_features_match(card, feats, str(slide_path))
        _check_cancel(cancel)
        report("explain", 0.0)
        scaling = FeatureScaling.from_json(card.get("feature_scaling"))
        explanation = _explain(
            loaded.model, scaling.apply(feats) if scaling else feats, loaded.device
        )
        report("explain", 1.0)
        encoder, fingerprint = feats.encoder, str(feats.attrs.get("slide_fingerprint", ""))
        mpp, mpp_assumed = feats.attrs.get("mpp"), bool(feats.attrs.get("mpp_is_assumed"))
        mpp_source = str(feats.attrs.get("mpp_source", "assumed" if mpp_assumed else "file"))
        n_patches, n_regions = feats.num_patches, feats.num_regions
    threshold = card.get("risk_threshold")
    result = PredictionResult(
        slide_path=str(slide_path),
        slide_fingerprint=fingerprint,
        mpp=float(mpp) if mpp is not None else float("nan"),
        model_name=loaded.name,
        model_label=loaded.label,
        model_path=str(loaded.path),
        explanation=explanation,
        time_bin_edges=edges_from_json(card["time_bin_edges"]),
        time_unit=str(card.get("time_unit", "months")),
        risk_threshold=None if threshold is None else float(threshold),
        risk_group=risk_group(explanation.risk, threshold),
        risk_percentile=risk_percentile(explanation.risk, cohort_reference_risks(card)),
        warnings=_warnings(card, mpp_assumed, n_patches),
        extra={
            "risk_percentile_of": "the final model's risks over its training cohort",
            "risk_threshold_method": card.get("risk_threshold_method", ""),
            "encoder": encoder,
            "mpp_source": mpp_source,
            "patches": n_patches,
            "regions": n_regions,
            "grid": card.get("grid", {}),
        },
    )
    if out_dir is not None:
        _check_cancel(cancel)
        report("export", 0.0)
        from napari_hila.export import write_prediction_outputs

        write_prediction_outputs(result, out_dir, card=card)
        report("export", 1.0)
    return result
