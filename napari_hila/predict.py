"""One slide in, one :class:`PredictionResult` out: the CLI's and the viewer's path.

Extraction goes through the feature cache (a slide seen before costs nothing),
with the encoders and tiling grid the model was trained with (from its card);
then one ``explain()`` pass gives risk, survival, maps and prompt contributions.
The risk is placed against the model's cohort: group by the card's threshold,
percentile among the final model's cohort risks.

A feature file (ours, CLAM/TRIDENT ``.h5`` or ``.pt``) can stand in for the
slide (:func:`predict_features`): the same path from the features on, without
reading a pixel. Patch-only files get region features pooled on the model's grid
(``features.pooling.ensure_regions``) either way.

Prediction writes no files: ``export.write_prediction_folder`` writes a result's
outputs, ``predict_many`` many slides' folders (both a layer up).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_hila.errors import Cancelled, FeatureFileError, ModelFileError
from napari_hila.io_utils import cache_folder
from napari_hila.modelfile.model_card import ModelCard
from napari_hila.results import Explanation, PredictionResult

__all__ = [
    "cohort_risk_sd",
    "default_cache_dir",
    "explain_slide_tiles",
    "explanation_warnings",
    "express_in_cohort_sd",
    "extraction_settings",
    "feature_files_in",
    "features_for_model",
    "predict_features",
    "predict_slide",
    "regions_for_model",
    "risk_group",
    "risk_percentile",
    "slide_id_for",
]

Progress = Callable[[str, float], None]
_SYNTHETIC_WARNING = "this model was trained on a synthetic demo cohort: not for clinical use"


def risk_group(risk: float, threshold: float | None) -> str | None:
    """ "high" when the risk is above the model's threshold, else "low"."""
    if threshold is None:
        return None
    return "high" if risk > float(threshold) else "low"


def cohort_reference_risks(card: ModelCard | Mapping[str, Any]) -> np.ndarray:
    """The cohort risks a new slide's risk is compared with (percentile, histogram).

    The final model's in-sample risks: the same model, so the same scale as a
    new slide's risk and as the card's threshold. Older cards without them fall
    back to the out-of-fold risks.
    """
    return ModelCard.of(card).cohort.reference_risks


def risk_percentile(risk: float, cohort_risks) -> float | None:
    """Percentage of the cohort with a risk at or below ``risk`` (0-100)."""
    values = np.asarray(cohort_risks if cohort_risks is not None else [], float)
    if values.size == 0:
        return None
    return float(100.0 * np.mean(values <= risk))


def cohort_risk_sd(card: ModelCard | Mapping[str, Any]) -> float | None:
    """The training cohort's risk SD (the card's, else from its final-model risks)."""
    return ModelCard.of(card).cohort_risk_sd


def express_in_cohort_sd(explanation: Explanation, card: ModelCard | Mapping[str, Any]) -> None:
    """Fill each contribution's ``delta_sd``: its risk change in cohort risk-SD units."""
    sd = cohort_risk_sd(card)
    if not sd:
        return
    for contribution in explanation.contributions:
        contribution.delta_sd = contribution.delta_risk / sd


def explanation_warnings(explanation: Explanation) -> list[str]:
    """What a reader must know before trusting the prompt bars and maps of this result.

    The explanation's own notes (collapsed prompts, an older model's
    leave-one-out bars, no stored baseline) plus uninformative maps.
    """
    notes = list(explanation.notes)
    for name, level in explanation.levels.items():
        flat = level.uninformative_maps()
        if flat and len(level.map_names) > 1:
            shown = ", ".join(flat[:4]) + (f" and {len(flat) - 4} more" if len(flat) > 4 else "")
            notes.append(
                f"{len(flat)} of {len(level.map_names)} {name} maps stay within 10% of a uniform "
                f"share everywhere and show nowhere in particular: {shown}"
            )
    return notes


def ungrounded_prompts(card: ModelCard | Mapping[str, Any]) -> list[str]:
    """Prompts whose text side could not ground them (a label on an arbitrary direction)."""
    prompts = ModelCard.of(card).prompts
    names = []
    for level in ("patch", "region"):
        entry = prompts.get(level) or {}
        grounding = entry.get("grounding")
        if grounding is not None:
            names += [n for n, g in zip(entry.get("names", []), grounding, strict=False) if not g]
    return names


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("prediction cancelled by the user")


def default_cache_dir() -> Path:
    """Where features are cached between runs: ``features/`` in napari-hila's cache root.

    ``$NAPARI_HILA_CACHE/features`` when the variable is set (see ``io_utils.cache_folder``).
    """
    return cache_folder("features")


def extraction_settings(card: ModelCard | Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`~napari_hila.features.extract.extract_slide` settings a model was trained with."""
    card = ModelCard.of(card)
    grid = card.grid
    # a card without a patch encoder name predates the choice: the descriptor was the only one
    patch_encoder = card.patch_encoder.name or "hila-descriptor"
    region_encoder = card.region_encoder.name
    settings = {
        "encoder": patch_encoder,
        "patch_px": grid.patch_px,
        "region_px": grid.region_px,
        "target_mpp": grid.target_mpp,
        "region_mode": grid.region_mode,
    }
    if grid.region_mode == "view" and region_encoder and region_encoder != patch_encoder:
        settings["region_encoder"] = region_encoder
    if grid.magnifications:  # multi-magnification models (CrossFusion)
        settings["magnifications"] = grid.magnifications
    version = card.patch_encoder.version
    if version.startswith("sha256:"):  # the weights' digest: cached features found without them
        settings["encoder_version"] = version
    return settings


def features_for_model(
    slide_path: str | os.PathLike,
    card: ModelCard | Mapping[str, Any],
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    mpp: float | None = None,
    weights: str | os.PathLike | None = None,
):
    """The slide's features with the model's encoders and grid (cached by the features package).

    ``mpp`` overrides or supplies the slide's pixel size, which sizes the grid's tiles.
    ``weights`` are the patch encoder's (default: the encoders config); cached features of
    the weights the model was trained with are used without loading any.
    """
    from napari_hila.features.extract import load_or_extract

    return load_or_extract(
        slide_path,
        cache_dir if cache_dir is not None else default_cache_dir(),
        device=device,
        progress=progress,
        cancel=cancel,
        mpp=mpp,
        weights=weights,
        **extraction_settings(card),
    )


def regions_for_model(feats, card: ModelCard | Mapping[str, Any]):
    """``feats`` with region features, pooled on the model's grid when the file has only patches."""
    from napari_hila.features.pooling import ensure_regions

    grid = ModelCard.of(card).grid
    return ensure_regions(
        feats, region_px=grid.region_px, patch_px=grid.patch_px, target_mpp=grid.target_mpp
    )


def _explain(model, feats, device):
    from napari_hila.models.batch import collate

    batch = collate([feats]).to(device)
    return model.explain(batch, tile_sizes={"patch": feats.patch_size, "region": feats.region_size})


def _warnings(card: ModelCard, mpp_is_assumed: bool, num_patches: int) -> list[str]:
    notes = []
    if card.is_synthetic:
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


@dataclass
class _Inputs:
    """What a result records about the model's input, however it was obtained."""

    encoder: str
    fingerprint: str
    mpp: float | None
    mpp_is_assumed: bool
    mpp_source: str
    n_patches: int
    n_regions: int
    extra: dict[str, Any] = field(default_factory=dict)


def _load_model(model, device: str, report: Progress, cancel: threading.Event | None):
    from napari_hila.modelfile import LoadedModel, load_model

    report("model", 0.0)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device)
    report("model", 1.0)
    _check_cancel(cancel)
    return loaded


def _reads_tiles(loaded) -> bool:
    from napari_hila.models.registry import get_model_spec

    return get_model_spec(loaded.name).inputs == "tiles"


def _explain_features(
    loaded, feats, source: str, report: Progress, cancel: threading.Event | None
) -> tuple[Explanation, _Inputs]:
    """Regions, checks and scaling as in training, then one ``explain()`` pass."""
    from napari_hila.features.pooling import has_regions
    from napari_hila.features.scaling import FeatureScaling
    from napari_hila.modelfile import check_features_match

    card = loaded.card
    pooled = not has_regions(feats)
    feats = regions_for_model(feats, card)
    check_features_match(card, feats, source)
    _check_cancel(cancel)
    report("explain", 0.0)
    scaling = FeatureScaling.from_json(card.feature_scaling)
    explanation = _explain(loaded.model, scaling.apply(feats) if scaling else feats, loaded.device)
    report("explain", 1.0)
    attrs = feats.attrs
    mpp_assumed = bool(attrs.get("mpp_is_assumed"))
    extra = {"region_size": feats.region_size, "regions_pooled_from_patches": pooled}
    if attrs.get("feature_file"):
        extra["feature_file"] = str(attrs["feature_file"])
    return explanation, _Inputs(
        encoder=feats.encoder,
        fingerprint=str(attrs.get("slide_fingerprint", "")),
        mpp=attrs.get("mpp"),
        mpp_is_assumed=mpp_assumed,
        mpp_source=str(attrs.get("mpp_source", "assumed" if mpp_assumed else "file")),
        n_patches=feats.num_patches,
        n_regions=feats.num_regions,
        extra=extra,
    )


@dataclass
class SlideFacts:
    """What a prediction records about a slide read tile by tile (no feature file)."""

    fingerprint: str
    mpp: float
    mpp_is_assumed: bool
    num_tiles: int
    mpp_source: str = "file"


def explain_slide_tiles(
    model, slide_path: str | os.PathLike, progress=None, cancel=None, mpp: float | None = None
):
    """One slide through a model that reads its own tiles: ``(Explanation, SlideFacts)``.

    Tiles are sampled with the model's inference settings and read chunk by
    chunk; ``progress("tiles", fraction)`` and ``cancel`` reach the model.
    ``mpp`` overrides or supplies the slide's pixel size (it sizes the tiles).
    """
    # only tile-reading models open the slide here
    from napari_hila.features.tile_bags import SlideRef
    from napari_hila.slides import open_slide

    with open_slide(slide_path, mpp=mpp) as slide:
        fingerprint, mpp, assumed, source = (
            slide.fingerprint(),
            float(slide.mpp),
            bool(slide.mpp_is_assumed),
            slide.mpp_source,
        )
    ref = SlideRef(Path(slide_path), mpp=mpp if source == "user" else None)
    batch = model.batch_from_bags([ref], train=False)
    try:
        explanation = model.explain(batch, progress=progress, cancel=cancel)
    finally:
        for tiles in batch.slides:
            getattr(tiles, "close", lambda: None)()
    return explanation, SlideFacts(fingerprint, mpp, assumed, len(batch.slides[0]), source)


def _explain_tiles(loaded, slide_path: Path, progress, cancel, mpp) -> tuple[Explanation, _Inputs]:
    """The model reads its own tiles from the slide (VPTSurv): no feature file."""
    # progress: "tiles" while the model encodes them, then "explain" when done
    explanation, facts = explain_slide_tiles(loaded.model, slide_path, progress, cancel, mpp=mpp)
    encoder = loaded.card.patch_encoder.name or ""
    return explanation, _Inputs(
        encoder=encoder,
        fingerprint=facts.fingerprint,
        mpp=facts.mpp,
        mpp_is_assumed=facts.mpp_is_assumed,
        mpp_source=facts.mpp_source,
        n_patches=facts.num_tiles,
        n_regions=0,
    )


def _finish(
    loaded,
    slide_path: str,
    explanation: Explanation,
    inputs: _Inputs,
) -> PredictionResult:
    """The result placed against the model's cohort."""
    card = loaded.card
    threshold = card.risk_threshold
    express_in_cohort_sd(explanation, card)
    result = PredictionResult(
        slide_path=slide_path,
        slide_fingerprint=inputs.fingerprint,
        mpp=float(inputs.mpp) if inputs.mpp is not None else float("nan"),
        model_name=loaded.name,
        model_label=loaded.label,
        model_path=str(loaded.path),
        explanation=explanation,
        time_bin_edges=card.time_bin_edges.copy(),
        time_unit=card.time_unit,
        risk_threshold=threshold,
        risk_group=risk_group(explanation.risk, threshold),
        risk_percentile=risk_percentile(explanation.risk, cohort_reference_risks(card)),
        warnings=_warnings(card, inputs.mpp_is_assumed, inputs.n_patches)
        + explanation_warnings(explanation),
        extra={
            "risk_percentile_of": "the final model's risks over its training cohort",
            "risk_threshold_method": card.risk_threshold_method,
            "encoder": inputs.encoder,
            "mpp_source": inputs.mpp_source,
            "patches": inputs.n_patches,
            "regions": inputs.n_regions,
            "grid": card.grid.to_json(),
            "ungrounded_prompts": ungrounded_prompts(card),
            **inputs.extra,
        },
    )
    return result


def predict_slide(
    slide_path: str | os.PathLike,
    model,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    mpp: float | None = None,
    weights: str | os.PathLike | None = None,
) -> PredictionResult:
    """Run ``model`` (a model directory or a loaded model) on one slide.

    ``progress(stage, fraction)`` is called with stages "model", "features",
    "explain"; ``cancel`` (a ``threading.Event``) stops the job between steps
    with :class:`~napari_hila.errors.Cancelled`. The output files are written by
    :func:`napari_hila.export.write_prediction_folder`.
    ``mpp`` (um/px at level 0) overrides or supplies the slide's pixel size:
    the grid's tile sizes and the result's ``mpp`` follow it. ``weights``: the patch
    encoder's local weights when the model's encoder needs some (default: the encoders config).
    """
    report = progress or (lambda stage, fraction: None)
    slide_path = Path(slide_path)
    loaded = _load_model(model, device, report, cancel)
    if _reads_tiles(loaded):
        explanation, inputs = _explain_tiles(loaded, slide_path, progress, cancel, mpp)
        report("explain", 1.0)
    else:
        feats = features_for_model(
            slide_path, loaded.card, cache_dir, device, progress, cancel, mpp, weights
        )
        explanation, inputs = _explain_features(loaded, feats, str(slide_path), report, cancel)
    return _finish(loaded, str(slide_path), explanation, inputs)


def predict_features(
    feats_or_path,
    model,
    device: str = "auto",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> PredictionResult:
    """Run ``model`` on a slide's features (``SlideFeatures`` or a feature file), reading no pixels.

    The same checks, feature scaling and ``explain()`` as :func:`predict_slide`.
    Its outputs are written with ``write_prediction_folder(..., read_slide=False)``
    (no thumbnail or PNG heatmaps: the result's warnings say so). The result's
    ``slide_path`` is the one the file records (possibly absent or elsewhere).
    """
    from napari_hila.features.store import load_features

    report = progress or (lambda stage, fraction: None)
    loaded = _load_model(model, device, report, cancel)
    if isinstance(feats_or_path, (str, os.PathLike)):
        source = str(feats_or_path)
        if _reads_tiles(loaded):
            raise ModelFileError(
                f"{source}: model {loaded.name!r} reads raw tiles, not feature files; "
                "give the slide instead"
            )
        report("features", 0.0)
        feats = load_features(feats_or_path)
        feats.attrs.setdefault("feature_file", source)
        report("features", 1.0)
    else:
        feats = feats_or_path
        source = str(feats.attrs.get("feature_file") or feats.attrs.get("source") or "features")
        if _reads_tiles(loaded):
            raise ModelFileError(
                f"{source}: model {loaded.name!r} reads raw tiles, not features; give the slide"
            )
    if feats.num_patches == 0:
        raise FeatureFileError(f"{source}: no patches (no tissue found); nothing to predict on")
    explanation, inputs = _explain_features(loaded, feats, source, report, cancel)
    slide_path = str(feats.attrs.get("slide_path", "") or "")
    return _finish(loaded, slide_path, explanation, inputs)


#: File names a folder of feature files is searched for (CLAM ``pt_files`` included).
FEATURE_SUFFIXES = (".h5", ".hdf5", ".pt", ".pth")


def _holds_patch_features(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return "features" in h5
    except OSError:
        return True  # unreadable: let loading report it


def feature_files_in(folder: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """The feature files of ``folder`` (one per slide) and notes on the files passed over.

    Hidden files (unfinished extractions) are ignored; a ``<stem>.h5`` holding only
    the coordinates of ``<stem>.pt`` (CLAM) is the ``.pt``'s; when both hold
    features the ``.h5`` is used.
    """
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FEATURE_SUFFIXES
    )
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    chosen, notes = [], []
    for paths in by_stem.values():
        h5 = [p for p in paths if p.suffix.lower() in (".h5", ".hdf5")]
        pt = [p for p in paths if p not in h5]
        if h5 and pt:
            h5_features = [p for p in h5 if _holds_patch_features(p)]
            skipped = pt if h5_features else h5
            kept = h5_features or pt
            notes.extend(
                f"{p}: skipped, {kept[0].name} holds this slide's features"
                if h5_features
                else f"{p}: taken as the coordinates of {kept[0].name}"
                for p in skipped
            )
            chosen.extend(kept)
        else:
            chosen.extend(paths)
    return sorted(chosen), notes


def slide_id_for(path: str | os.PathLike, feats=None) -> str:
    """A feature file's slide id: its stem, as ``survival.cohort_csv.feature_file_for`` finds files.

    ``napari-hila extract`` names files ``<stem>-<fingerprint[:12]>-<encoder>.h5``;
    that suffix is dropped when the file's recorded fingerprint confirms it.
    """
    from napari_hila.features.cache import slide_stem_of

    fingerprint = str((feats.attrs if feats is not None else {}).get("slide_fingerprint", ""))
    return slide_stem_of(Path(path).stem, fingerprint)
