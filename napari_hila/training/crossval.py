"""A training run: k-fold cross-validation, then a final model on all patients.

Writes into RUN_DIR:

- ``settings.json``  what was asked (a resumed run must ask the same),
- ``inputs.json``    per slide, its labels and a digest of its features
                     (a resumed run must have the same: ``training.runinputs``),
- ``splits.json``    the patient folds (reusable with ``--splits``),
- ``fold_<k>.json``  each fold's test patients, their risks, its threshold and C-index,
- ``metrics.json``   per-fold C-index, mean, standard deviation, log-rank p,
- ``final_model/``   the model trained on every patient, for the viewer.

Each file is written atomically when its step completes, so an interrupted run
resumes at the first fold without a ``fold_<k>.json``; ``force=True`` removes
these files first and starts over.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_hila.errors import FeatureFileError, HilaError
from napari_hila.features.pooling import ensure_regions
from napari_hila.features.scaling import FeatureScaling
from napari_hila.features.store import SlideFeatures, load_features
from napari_hila.io_utils import write_json_atomic
from napari_hila.modelfile import save_model
from napari_hila.models.base import ExplainsAgainstBaseline, ReadsOwnInputs, UsesPrompts
from napari_hila.slides.grids import PATCH_PX, REGION_PX, TARGET_MPP
from napari_hila.survival.cohort_csv import Cohort, feature_file_for
from napari_hila.survival.losses import edges_to_json
from napari_hila.survival.metrics import concordance_index, patient_risks
from napari_hila.training.card import build_card, summarise_folds
from napari_hila.training.runinputs import (
    RESTART_HINT,
    check_run_inputs,
    clear_run_folder,
    run_inputs,
)
from napari_hila.training.splits import (
    Splits,
    load_splits,
    make_splits,
    save_splits,
    splits_from_folds,
)
from napari_hila.training.trainer import (
    FitSettings,
    data_config,
    feature_widths,
    fit_model,
    install_prompt_embeddings,
    slide_risks,
)

__all__ = [
    "RunSettings",
    "run_training",
    "load_cohort_features",
]

PATIENT_RISK_NOTE = "one risk per patient: the mean of the risks of the patient's slides"


@dataclass
class RunSettings:
    """Everything that defines a run (saved as settings.json)."""

    model: str = "hila"
    model_config: dict[str, Any] = field(default_factory=dict)
    prompts: str | None = None
    folds: int = 5
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    n_bins: int = 4
    batch_size: int = 1
    max_patches: int | None = None
    seed: int = 0
    time_unit: str = "months"
    label: str | None = None
    cancer_type: str | None = None
    train_final: bool = True
    standardize: bool = True  # z-score features with training-fold statistics

    def fit_settings(self, device: str, seed_offset: int, show_progress: bool) -> FitSettings:
        return FitSettings(
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            max_patches=self.max_patches,
            seed=self.seed + seed_offset,
            device=device,
            show_progress=show_progress,
        )


def embed_prompts(
    name_or_path: str,
    text_encoder: str | None = "auto",
    device: str = "cpu",
    *,
    vision_encoder: str | None = None,
    text_weights: str | None = None,
) -> dict[str, Any]:
    """Load a prompt set and embed its texts once for the whole run.

    A set with its own ``embeddings:`` file uses those rows (unit-normalised) and
    loads no text encoder; an explicit ``text_encoder`` that differs is ignored
    with a note. Otherwise ``"auto"`` (or None) picks the text encoder that shares
    ``vision_encoder``'s space (:func:`~napari_hila.encoders.pairing.choose_text_encoder`),
    and a text encoder outside the space of the features' own pair is warned about.
    ``text_weights`` overrides the encoders config for a text tower's weights.

    Returns ``{"name", "cancer_type", "text_encoder", "text_dim", "levels": {level:
    {"names", "texts", "embeddings", "grounding"}}}`` (plus ``"embedding_encoder"``
    for stored rows), the form :func:`run_training` takes. ``grounding`` is, per
    prompt, the vocabulary terms it matched or None (a label on an arbitrary
    direction), when the text encoder reports it; else None for the level.
    """
    from napari_hila.encoders.pairing import AUTO, choose_text_encoder, pairing_warning
    from napari_hila.encoders.registry import get_text_encoder
    from napari_hila.prompts import LEVELS, embed_prompt_set, load_prompt_set, stored_embeddings

    prompt_set = load_prompt_set(name_or_path)
    stored = stored_embeddings(prompt_set)
    extra: dict[str, Any] = {}
    grounding: dict[str, list[str | None] | None] = dict.fromkeys(LEVELS)
    if stored is not None:
        embedded, label = stored, str(prompt_set.embedding_encoder)
        extra["embedding_encoder"] = label
        if text_encoder not in (None, AUTO) and text_encoder != label:
            print(
                f"note: --text-encoder {text_encoder} ignored: {prompt_set.source} brings its own "
                f"embeddings ({label}), which were used",
                file=sys.stderr,
            )
    else:
        if text_encoder in (None, AUTO):
            text_encoder, reason = choose_text_encoder(vision_encoder)
            print(f"text encoder: {text_encoder} ({reason})")
        encoder = get_text_encoder(text_encoder, weights=text_weights, device=device)
        embedded = embed_prompt_set(prompt_set, encoder)
        label = f"{encoder.name} ({getattr(encoder, 'version', '')})"
        if hasattr(encoder, "grounding"):
            grounding = {lvl: encoder.grounding(prompt_set.texts(lvl)) for lvl in LEVELS}
    warning = pairing_warning(vision_encoder, label)
    if warning:
        print(warning, file=sys.stderr)
    return {
        "name": str(name_or_path),
        "cancer_type": prompt_set.cancer_type,
        "text_encoder": label,
        **extra,
        "text_dim": int(embedded["patch"].shape[1]),
        "levels": {
            level: {
                "names": prompt_set.names(level),
                "texts": prompt_set.texts(level),
                "embeddings": embedded[level].tolist(),
                "grounding": grounding[level],
            }
            for level in LEVELS
        },
    }


def load_cohort_features(
    cohort: Cohort,
    features_dir: str | os.PathLike,
    region_px: int = REGION_PX,
    patch_px: int = PATCH_PX,
    target_mpp: float = TARGET_MPP,
) -> list[SlideFeatures]:
    """Every slide's features, checked to come from one encoder with one width.

    Patch-only files (CLAM/TRIDENT ``.h5``) get region features pooled on the
    grid of ``region_px`` px at ``target_mpp`` (``features.pooling.ensure_regions``),
    so a model's region level sees the slide's regions, not one constant vector.
    """
    bags = []
    first = None
    for row in cohort.rows:
        path = feature_file_for(features_dir, row.slide_id)
        feats = ensure_regions(
            load_features(path), region_px=region_px, patch_px=patch_px, target_mpp=target_mpp
        )
        key = (
            feats.encoder,
            feats.features.shape[1],
            feats.region_encoder,
            feats.region_features.shape[1],
        )
        if first is None:
            first = (path, key)
        elif key != first[1]:
            raise FeatureFileError(
                f"{path}: features from encoder {key[0]!r} (width {key[1]}), region {key[2]!r} "
                f"(width {key[3]}) but {first[0]} has {first[1][0]!r} (width {first[1][1]}), "
                f"region {first[1][2]!r} (width {first[1][3]}); extract all slides with the same encoders"
            )
        if feats.num_patches == 0:
            raise FeatureFileError(
                f"{path}: no patches (no tissue found); remove slide {row.slide_id!r} from the cohort"
            )
        bags.append(feats)
    return bags


def region_level_warning(model: str, model_config: dict[str, Any], bags: list[Any]) -> str | None:
    """Why a model's region level would learn nothing here, or None.

    A model whose config declares ``use_region_level`` (the HiLa family) and has
    it on, while every bag holds at most one region, sees one token per slide
    at that level: it trains, but the level adds nothing.
    """
    import dataclasses

    from napari_hila.models.registry import get_model_spec

    spec = get_model_spec(model)
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    if "use_region_level" not in fields:
        return None
    values = {**dict(spec.overrides), **model_config}
    if not values.get("use_region_level", fields["use_region_level"].default):
        return None
    feature_bags = [b for b in bags if isinstance(b, SlideFeatures)]
    if not feature_bags or max(b.num_regions for b in feature_bags) > 1:
        return None
    return (
        f"{model}: every slide has at most one region (slides smaller than one region, or "
        "feature files without coordinates), so its region level sees one token per slide and "
        "adds nothing; extract with a smaller --region-px, or train with --set "
        "use_region_level=false"
    )


# Settings that change no number of a run: a resumed run may change them.
_COSMETIC = ("label", "cancer_type", "time_unit", "train_final")


def _prepare_run_dir(run_dir: Path, settings: RunSettings) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    wanted = json.loads(json.dumps(asdict(settings)))
    path = run_dir / "settings.json"
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(
            k
            for k in set(saved) | set(wanted)
            if k not in _COSMETIC and saved.get(k) != wanted.get(k)
        )
        if changed:
            raise HilaError(
                f"{run_dir} holds a run with other settings ({', '.join(changed)} differ); "
                f"resume it with the same settings, or {RESTART_HINT}"
            )
    write_json_atomic(path, wanted)


def _choose_splits(cohort: Cohort, run_dir: Path, settings: RunSettings, splits_file) -> Splits:
    ids = cohort.patient_ids
    saved = run_dir / "splits.json"
    if splits_file is not None:
        splits = load_splits(splits_file, ids)
    elif saved.exists():
        splits = load_splits(saved, ids)
    elif any(f is not None for f in cohort.patient_folds):
        splits = splits_from_folds(ids, cohort.patient_folds)
    else:
        splits = make_splits(ids, cohort.patient_events, settings.folds, settings.seed)
    save_splits(saved, splits)
    return splits


class _Data:
    """The cohort's bags with per-slide labels and patient lookups."""

    def __init__(self, cohort: Cohort, bags: list[SlideFeatures]):
        self.cohort = cohort
        self.bags = bags
        self.slide_patient = [r.patient_id for r in cohort.rows]
        self.slide_time = np.array([r.time for r in cohort.rows], float)
        self.slide_event = np.array([r.event for r in cohort.rows], int)
        ids = cohort.patient_ids
        self.patient_time = dict(zip(ids, cohort.patient_times, strict=True))
        self.patient_event = dict(zip(ids, cohort.patient_events, strict=True))

    def slide_indices(self, patients) -> list[int]:
        wanted = set(patients)
        return [i for i, p in enumerate(self.slide_patient) if p in wanted]

    def patient_scores(
        self, model, slides: list[int], device: str, transform=None
    ) -> tuple[list[str], np.ndarray]:
        risks = slide_risks(model, [self.bags[i] for i in slides], device, transform)
        return patient_risks([self.slide_patient[i] for i in slides], risks)


def _build_and_fit(
    data: _Data, slides, settings, prompt_set, device, seed_offset, desc, show_progress, checkpoint
):
    from napari_hila.models.registry import build_model, get_model_spec
    from napari_hila.survival.losses import make_time_bins, time_to_bin

    # Bins from patients, not slides: a patient with three slides must not count three times.
    pids = list(dict.fromkeys(data.slide_patient[i] for i in slides))
    edges = make_time_bins(
        np.array([data.patient_time[p] for p in pids]),
        np.array([data.patient_event[p] for p in pids]),
        settings.n_bins,
    )
    spec = get_model_spec(settings.model)
    bag0 = data.bags[slides[0]]
    values = data_config(
        spec.config_cls,
        *feature_widths(bag0),
        len(edges) - 1,
        prompt_set,
        vision_encoder=bag0.encoder if isinstance(bag0, SlideFeatures) else None,
    )
    values.update(settings.model_config)
    torch.manual_seed(settings.seed + seed_offset)
    model = build_model(settings.model, **values)
    install_prompt_embeddings(model, prompt_set)
    fit = settings.fit_settings(device, seed_offset, show_progress)
    bins = time_to_bin(data.slide_time[slides], edges)
    bags = [data.bags[i] for i in slides]
    # Scaling fitted on these (training) slides only; bags that are slide references
    # (models reading raw tiles) have no features to scale.
    use_scaling = settings.standardize and isinstance(bags[0], SlideFeatures)
    scaling = FeatureScaling.fit(bags) if use_scaling else None
    transform = scaling.apply if scaling else None
    losses = fit_model(
        model,
        bags,
        bins,
        data.slide_event[slides],
        fit,
        desc,
        transform=transform,
        checkpoint=checkpoint,
    )
    return model, spec.make_config(**values), edges, losses, scaling


def fit_explanation_baseline(model, bags, device: str, transform=None) -> float | None:
    """Give a model that explains against a cohort baseline its training cohort's mean terms.

    Models that are not :class:`~napari_hila.models.base.ExplainsAgainstBaseline`
    (no prompts) are left alone.
    """
    if not isinstance(model, ExplainsAgainstBaseline):
        return None
    from napari_hila.training.trainer import make_batch

    model.to(device)
    batches = (
        make_batch(model, [bag], None, None, train=False, transform=transform) for bag in bags
    )
    return model.fit_explanation_baseline(batches)


def explanation_card(model, baseline: float | None, risks) -> dict[str, Any]:
    """What the card says about explanations: baseline, cohort risk SD, prompt statistics."""
    stats = model.prompt_statistics() if isinstance(model, UsesPrompts) else {}
    risks = np.asarray(risks, float)
    return {
        "baseline_risk": baseline,
        "cohort_risk_sd": float(np.std(risks, ddof=1)) if len(risks) > 1 else None,
        "cohort_risk_sd_of": "the final model's per-patient risks over its training cohort",
        "prompt_statistics": stats,
    }


def run_training(
    cohort: Cohort,
    bags: list[SlideFeatures],
    run_dir: str | os.PathLike,
    settings: RunSettings,
    prompt_set: dict[str, Any] | None = None,
    splits_file: str | os.PathLike | None = None,
    device: str = "cpu",
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Cross-validate, train the final model, write everything; return the metrics.

    Resumes a run found in ``run_dir`` when its settings and inputs are the same
    (else a HilaError); ``force`` deletes that run's files first.

    ``prompt_set`` is ``{"name", "text_encoder", "levels": {level: {"names", "texts",
    "embeddings"}}}``; only the levels the model's config asks for are used.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    run_dir = Path(run_dir)
    inputs = _start_run(run_dir, settings, cohort, bags, force, say)
    splits = _choose_splits(cohort, run_dir, settings, splits_file)
    data = _Data(cohort, bags)
    region_note = region_level_warning(settings.model, settings.model_config, bags)
    if region_note:
        say(f"warning: {region_note}")
    say(
        f"{settings.model}: {len(cohort.patient_ids)} patients, {len(bags)} slides, "
        f"{splits.n_folds}-fold cross-validation ({splits.method}), {settings.epochs} epochs each "
        f"(fixed, no model selection on the test fold); {PATIENT_RISK_NOTE}"
    )
    run = _Run(run_dir, data, settings, prompt_set, device, show_progress, say)
    folds = [run.fold(k, splits) for k in range(splits.n_folds)]
    metrics = summarise_folds(folds, data.patient_time, data.patient_event)
    metrics["patient_risk"] = PATIENT_RISK_NOTE
    metrics["model"] = settings.model
    if region_note:
        metrics["warnings"] = [region_note]  # travels into the model card with the metrics
    write_json_atomic(run_dir / "metrics.json", metrics)
    if settings.train_final:
        run.final_model(cohort, metrics, folds, inputs)
    return metrics


def _start_run(run_dir: Path, settings: RunSettings, cohort: Cohort, bags, force: bool, say):
    """The run's inputs, with ``run_dir`` ready for them: cleared with ``force``, else checked.

    A run found there resumes only when its settings and inputs are the same (else a HilaError).
    """
    if force and run_dir.is_dir():
        removed = clear_run_folder(run_dir)
        if removed:
            say(f"--force: removed the earlier run in {run_dir} ({len(removed)} files and folders)")
    inputs = run_inputs(cohort, bags)
    _prepare_run_dir(run_dir, settings)
    check_run_inputs(run_dir, inputs)
    return inputs


@dataclass
class _Run:
    """One training run's fixed parts: where it writes, its data and how models are fitted."""

    run_dir: Path
    data: _Data
    settings: RunSettings
    prompt_set: dict[str, Any] | None
    device: str
    show_progress: bool
    say: Callable[[str], None]

    def fit(self, slides: list[int], seed_offset: int, desc: str, checkpoint: Path):
        return _build_and_fit(
            self.data,
            slides,
            self.settings,
            self.prompt_set,
            self.device,
            seed_offset,
            desc,
            self.show_progress,
            checkpoint,
        )

    def fold(self, k: int, splits) -> dict[str, Any]:
        """Fold ``k``'s record: read back when done before, else trained, scored and written."""
        path = self.run_dir / f"fold_{k}.json"
        if path.exists():
            record = json.loads(path.read_text())
            self.say(
                f"fold {k + 1}/{splits.n_folds}: already done (C-index {record['c_index']:.4f}), skipped"
            )
            return record
        data = self.data
        train_slides = data.slide_indices(splits.train_patients(k))
        test_slides = data.slide_indices(splits.test_patients(k))
        checkpoint = self.run_dir / f"fold_{k}.checkpoint.pt"
        model, _, edges, losses, scaling = self.fit(
            train_slides, k, f"fold {k + 1}/{splits.n_folds}", checkpoint
        )
        transform = scaling.apply if scaling else None
        _, train_risk = data.patient_scores(model, train_slides, self.device, transform)
        test_ids, test_risk = data.patient_scores(model, test_slides, self.device, transform)
        times = np.array([data.patient_time[p] for p in test_ids])
        events = np.array([data.patient_event[p] for p in test_ids])
        record = {
            "fold": k,
            "c_index": concordance_index(times, events, test_risk),
            "n_test_patients": len(test_ids),
            "n_test_events": int(events.sum()),
            "train_median_risk": float(np.median(train_risk)),
            "time_bin_edges": edges_to_json(edges),
            "epoch_losses": losses,
            "test_patients": test_ids,
            "test_risk": test_risk.tolist(),
        }
        write_json_atomic(path, record)
        checkpoint.unlink(missing_ok=True)
        self.say(
            f"fold {k + 1}/{splits.n_folds}: C-index {record['c_index']:.4f} on {len(test_ids)} patients"
        )
        return record

    def final_model(self, cohort: Cohort, metrics, folds, inputs) -> None:
        """The model on all patients, with its card, in RUN/final_model (kept when already there)."""
        final_dir = self.run_dir / "final_model"
        if (final_dir / "card.json").exists():
            self.say(f"final model: already in {final_dir}, skipped")
            return
        self.say(
            "final model: training on all patients (for the viewer; its C-index is not reported)"
        )
        bags = self.data.bags
        all_slides = list(range(len(bags)))
        checkpoint = self.run_dir / "final_model.checkpoint.pt"
        model, config, edges, losses, scaling = self.fit(
            all_slides, 1000, "final model", checkpoint
        )
        transform = scaling.apply if scaling else None
        ids, risk = self.data.patient_scores(model, all_slides, self.device, transform)
        baseline = fit_explanation_baseline(model, bags, self.device, transform)
        card = build_card(
            getattr(model, "config", config),  # a model may complete its config (VPTSurv's ViT)
            self.settings,
            cohort,
            bags[0],
            edges,
            ids,
            risk,
            metrics,
            folds,
            self.prompt_set,
            losses,
            inputs=model.card_inputs() if isinstance(model, ReadsOwnInputs) else None,
        )
        card["feature_scaling"] = scaling.to_json() if scaling else None
        card["explanation"] = explanation_card(model, baseline, risk)
        save_model(final_dir, model, card)
        checkpoint.unlink(missing_ok=True)
        self.say(f"final model: written to {final_dir}")
