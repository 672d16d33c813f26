"""The model card as one typed value: its fields, their defaults, checked once on load.

``card.json`` stays the plain JSON :func:`~napari_hila.training.card.build_card`
writes; :meth:`ModelCard.from_dict` reads it into typed fields, filling what an
older card lacks with the defaults below (the values those cards were always
read with), and keeps keys it does not know in :attr:`ModelCard.extra`. Read
access by key (``card["grid"]``, ``card.get("label")``) still answers from the
JSON as read, for callers not yet moved to the fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from napari_hila.errors import ModelFileError
from napari_hila.slides.grids import PATCH_PX, REGION_PX, TARGET_MPP

__all__ = ["CohortRecord", "EncoderInfo", "GridSettings", "ModelCard"]

#: Keys a card must have: without them the weights cannot be used.
REQUIRED_KEYS = ("model", "config", "encoders", "time_bin_edges")


@dataclass(frozen=True, kw_only=True)
class EncoderInfo:
    """The encoder that made one level's features: name, version (or weights digest), width,
    and how it ran on them: ``dtype`` (float32, bfloat16, float16), ``device`` and the
    ``preprocessing`` its tiles went through (size, mean, std, interpolation, source).

    The last three are None in cards from before they were recorded, and where the
    features did not say (CLAM/TRIDENT files; a separate region encoder's preprocessing).
    """

    name: str | None = None
    version: str = ""
    dim: int | None = None
    dtype: str | None = None
    device: str | None = None
    preprocessing: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> EncoderInfo:
        value = value or {}
        dim = value.get("dim")
        steps = value.get("preprocessing")
        if steps is not None and not isinstance(steps, Mapping):
            raise TypeError(f"encoder preprocessing must be an object, not {steps!r}")
        return cls(
            name=None if value.get("name") is None else str(value["name"]),
            version=str(value.get("version") or ""),
            dim=None if dim is None else int(dim),
            dtype=None if value.get("dtype") is None else str(value["dtype"]),
            device=None if value.get("device") is None else str(value["device"]),
            preprocessing=None if steps is None else dict(steps),
        )


@dataclass(frozen=True, kw_only=True)
class GridSettings:
    """The tiling a model was trained on (features are extracted again with it).

    ``extra`` holds the other extraction settings training recorded (e.g.
    ``region_pooling``), ``inputs`` is "tiles" for models that read raw tiles.
    """

    patch_px: int = PATCH_PX
    region_px: int = REGION_PX
    target_mpp: float = TARGET_MPP
    region_mode: str = "view"
    magnifications: tuple[str, ...] = ()
    inputs: str = "features"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> GridSettings:
        value = dict(value or {})
        known = {"patch_px", "region_px", "target_mpp", "region_mode", "magnifications", "inputs"}
        mags = value.get("magnifications") or ()
        return cls(
            patch_px=int(value.get("patch_px", PATCH_PX)),
            region_px=int(value.get("region_px", REGION_PX)),
            target_mpp=float(value.get("target_mpp", TARGET_MPP)),
            region_mode=str(value.get("region_mode", "view")),
            magnifications=tuple(str(mags).split(",")) if isinstance(mags, str) else tuple(mags),
            inputs=str(value.get("inputs", "features")),
            extra={k: v for k, v in value.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """The settings as a card writes them (magnifications comma-joined), defaults filled."""
        out: dict[str, Any] = {
            "patch_px": self.patch_px,
            "region_px": self.region_px,
            "target_mpp": self.target_mpp,
            "region_mode": self.region_mode,
            "inputs": self.inputs,
        }
        if self.magnifications:
            out["magnifications"] = ",".join(self.magnifications)
        return {**out, **self.extra}


@dataclass(frozen=True, kw_only=True)
class CohortRecord:
    """The training cohort per patient, for Kaplan-Meier plots and risk percentiles.

    ``risk`` is out-of-fold; ``final_model_risk`` the final model's in-sample risk
    (the scale of a new slide's risk), absent in older cards.
    """

    patient_id: tuple[str, ...] = ()
    time: np.ndarray = field(default_factory=lambda: np.zeros(0))
    event: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    risk: np.ndarray = field(default_factory=lambda: np.zeros(0))
    risk_group: tuple[str, ...] = ()
    fold: tuple[int, ...] = ()
    final_model_risk: np.ndarray | None = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> CohortRecord:
        value = value or {}
        final = value.get("final_model_risk")
        return cls(
            patient_id=tuple(str(p) for p in value.get("patient_id", ())),
            time=np.asarray(value.get("time", ()), float),
            event=np.asarray(value.get("event", ()), int),
            risk=np.asarray(value.get("risk", ()), float),
            risk_group=tuple(str(g) for g in value.get("risk_group", ())),
            fold=tuple(int(f) for f in value.get("fold", ())),
            final_model_risk=None if final is None else np.asarray(final, float),
        )

    @property
    def reference_risks(self) -> np.ndarray:
        """The risks a new slide's risk is compared with: the final model's, else out-of-fold."""
        return self.final_model_risk if self.final_model_risk is not None else self.risk


@dataclass(frozen=True, kw_only=True)
class ModelCard(Mapping):
    """Everything besides the weights: which model, its inputs, time bins, cohort, metrics.

    Built by :meth:`from_dict` (``read_card`` and ``load_model`` return one).
    Free-form blocks (``config``, ``prompts``, ``metrics``, ``explanation``,
    ``training``, ``feature_scaling``) stay JSON; unknown keys go to ``extra``.
    """

    model: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    time_bin_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T + 1,), last inf
    patch_encoder: EncoderInfo = field(default_factory=EncoderInfo)
    region_encoder: EncoderInfo = field(default_factory=EncoderInfo)
    label: str = ""
    cancer_type: str | None = None
    description: str = ""
    prompts: dict[str, Any] = field(default_factory=dict)
    time_unit: str = "months"
    risk_threshold: float | None = None
    risk_threshold_method: str = ""
    cohort: CohortRecord = field(default_factory=CohortRecord)
    metrics: dict[str, Any] = field(default_factory=dict)
    grid: GridSettings = field(default_factory=GridSettings)
    feature_scaling: dict[str, Any] | None = None
    explanation: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    weights_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "card"  # the file it came from, for messages
    json: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(
        cls,
        card: Mapping[str, Any],
        source: str = "card",
        required: tuple[str, ...] = REQUIRED_KEYS,
    ) -> ModelCard:
        """The typed card of ``card`` (parsed JSON); a ModelFileError names ``source`` if unusable.

        ``required``: the keys that must be there (all of :data:`REQUIRED_KEYS` for a
        model file; ``()`` for the part of a card a plot needs).
        """
        if not isinstance(card, Mapping):
            raise ModelFileError(f"{source}: a model card is a JSON object; retrain the model")
        missing = [k for k in required if k not in card]
        if missing:
            raise ModelFileError(
                f"{source}: missing key(s) {', '.join(missing)}; retrain the model"
            )
        known = {f.name for f in fields(cls)} | {"encoders", "format"}
        try:
            encoders = card.get("encoders") or {}
            threshold = card.get("risk_threshold")
            edges = [math.inf if v is None else float(v) for v in card.get("time_bin_edges") or ()]
            typed = cls(
                model=str(card.get("model") or ""),
                config=dict(card.get("config") or {}),
                time_bin_edges=np.asarray(edges, float),
                patch_encoder=EncoderInfo.from_json(encoders.get("patch")),
                region_encoder=EncoderInfo.from_json(encoders.get("region")),
                label=str(card.get("label") or ""),
                cancer_type=card.get("cancer_type"),
                description=str(card.get("description") or ""),
                prompts=dict(card.get("prompts") or {}),
                time_unit=str(card.get("time_unit") or "months"),
                risk_threshold=None if threshold is None else float(threshold),
                risk_threshold_method=str(card.get("risk_threshold_method") or ""),
                cohort=CohortRecord.from_json(card.get("cohort")),
                metrics=dict(card.get("metrics") or {}),
                grid=GridSettings.from_json(card.get("grid")),
                feature_scaling=card.get("feature_scaling"),
                explanation=dict(card.get("explanation") or {}),
                training=dict(card.get("training") or {}),
                version=str(card.get("version") or ""),
                weights_sha256=card.get("weights_sha256"),
                extra={k: v for k, v in card.items() if k not in known},
                source=source,
                json=card,
            )
        except (TypeError, ValueError, AttributeError) as err:
            raise ModelFileError(
                f"{source}: a card entry has the wrong type ({err}); retrain the model or "
                "restore card.json"
            ) from err
        # null: a card saved without training (tests, tools) loads, as it always did
        if card.get("time_bin_edges") is not None and len(typed.time_bin_edges) < 2:
            raise ModelFileError(f"{source}: time_bin_edges needs 2 or more values; retrain")
        return typed

    @classmethod
    def of(cls, card: ModelCard | Mapping[str, Any]) -> ModelCard:
        """``card`` itself, or the typed card of a card dict (possibly partial: defaults fill it)."""
        return card if isinstance(card, ModelCard) else cls.from_dict(card, required=())

    @property
    def display_label(self) -> str:
        """The label shown wherever the model appears (the model's name when it has none)."""
        return self.label or self.model

    @property
    def is_synthetic(self) -> bool:
        """Trained on a synthetic cohort, by its label: results carry a warning."""
        label = self.label.lower()
        return "synthetic" in label or "not for clinical use" in label

    @property
    def cohort_risk_sd(self) -> float | None:
        """The training cohort's risk SD: the card's, else from the reference risks (ddof 1)."""
        stored = self.explanation.get("cohort_risk_sd")
        if stored:
            return float(stored)
        risks = self.cohort.reference_risks
        return float(np.std(risks, ddof=1)) if len(risks) > 1 else None

    # Read access by key, from the JSON as read (for callers not yet on the fields).
    def __getitem__(self, key: str) -> Any:
        return self.json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.json)

    def __len__(self) -> int:
        return len(self.json)
