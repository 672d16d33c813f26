"""The model file: a directory with ``model.safetensors`` and ``card.json``.

The card says everything needed to use the weights honestly: which registry
model and settings, which encoders made the features (and their widths), the
prompt texts, time-bin edges, the risk threshold and how it was chosen, the
cohort's cross-validated risks for Kaplan-Meier plots, the metrics, the tiling
grid and a label shown wherever the model appears. Loading reads JSON and
safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_hila import __version__
from napari_hila.devices import resolve_device
from napari_hila.errors import HilaError, ModelFileError
from napari_hila.io_utils import atomic_path, write_json_atomic
from napari_hila.modelfile.model_card import ModelCard

if TYPE_CHECKING:  # torch is imported where weights are, so reading a card stays fast
    import torch

__all__ = [
    "LoadedModel",
    "save_model",
    "load_model",
    "read_card",
    "check_features_match",
    "prompt_statistics",
    "CARD_KEYS",
    "WEIGHTS_NAME",
    "CARD_NAME",
]

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"
FORMAT = "napari-hila-model/1"
CARD_KEYS = (
    "model",
    "config",
    "label",
    "cancer_type",
    "encoders",
    "prompts",
    "time_bin_edges",
    "time_unit",
    "risk_threshold",
    "cohort",
    "metrics",
    "grid",
    "version",
)


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode, on ``device``) and its card."""

    model: torch.nn.Module
    card: ModelCard
    path: Path
    device: torch.device

    @property
    def name(self) -> str:
        return self.card.model

    @property
    def label(self) -> str:
        return self.card.display_label


def config_to_dict(config: Any) -> dict[str, Any]:
    """A model config dataclass as JSON-ready values (tuples become lists)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(values))


def _state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; cloning gives each its own.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(path: str | os.PathLike, model: torch.nn.Module, card: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights and ``card`` into the directory ``path``.

    Each file is written atomically; the card goes last and records the weights'
    SHA-256, so a half-replaced directory is detected on load, not used.
    """
    from safetensors.torch import save

    card = dict(card.json if isinstance(card, ModelCard) else card)
    missing = [k for k in ("model", "config") if k not in card]
    if missing:
        raise ValueError(f"card lacks {', '.join(missing)}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    # serialised in memory and written with plain file I/O, so a full disk is an OSError
    # naming the file (safetensors' own writer reports it as its own error type)
    data = save(_state_for_saving(model), metadata={"format": FORMAT})
    with atomic_path(folder / WEIGHTS_NAME) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    digest = hashlib.sha256(data).hexdigest()
    full = {k: card.get(k) for k in CARD_KEYS}
    full.update({k: v for k, v in card.items() if k not in full})
    full["version"] = card.get("version") or __version__
    full["format"] = FORMAT
    full["weights_sha256"] = digest
    write_json_atomic(folder / CARD_NAME, full)
    return folder


def read_card(path: str | os.PathLike) -> ModelCard:
    """The typed card of a model directory, checked for the keys and types this version needs."""
    folder = Path(path)
    if folder.is_file():
        if folder.suffix in (".pt", ".pth", ".ckpt", ".pkl", ".bin"):
            raise ModelFileError(
                f"{folder}: pickled checkpoints are never loaded (they can run code); "
                f"give a model directory with {WEIGHTS_NAME} and {CARD_NAME} as written by napari-hila train"
            )
        folder = folder.parent
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelFileError(
            f"{folder}: no {CARD_NAME}; a model is a directory written by `napari-hila train` "
            "(RUN_DIR/final_model)"
        )
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(
            f"{card_path}: not valid JSON ({err}); retrain or restore the file"
        ) from err
    return ModelCard.from_dict(card, source=str(card_path))


def config_for_loading(card: ModelCard | Mapping[str, Any]) -> dict[str, Any]:
    """The card's config, completed for models saved before some settings existed.

    A config class may name in ``LEGACY_DEFAULTS`` the values that settings
    added later had in the models saved without them (HiLa's older mean head),
    so an older card builds the model its weights were trained as.
    """
    from napari_hila.models.registry import get_model_spec

    card = ModelCard.of(card)
    values = dict(card.config)
    try:
        legacy = getattr(get_model_spec(card.model).config_cls, "LEGACY_DEFAULTS", {})
    except HilaError:
        return values
    for key, value in legacy.items():
        values.setdefault(key, value)
    return values


def load_model(path: str | os.PathLike, device: str | torch.device = "auto") -> LoadedModel:
    """Build the registry model named in the card and load its safetensors weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from napari_hila.models.registry import build_model

    card = read_card(path)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelFileError(f"{folder}: {WEIGHTS_NAME} is missing; copy the whole model directory")
    blob = weights.read_bytes()
    # safetensors: an 8-byte header length, then the JSON header; a torch pickle
    # starts with a zip signature or a pickle protocol byte instead.
    looks_safetensors = blob[8:9] == b"{"
    if not looks_safetensors and (blob[:2] == b"PK" or blob[:1] == b"\x80"):
        raise ModelFileError(
            f"{weights}: this is a pickled torch file, not safetensors; napari-hila never unpickles "
            "(it could run code). Re-save the weights with safetensors or retrain"
        )
    expected = card.weights_sha256
    if expected and hashlib.sha256(blob).hexdigest() != expected:
        raise ModelFileError(
            f"{weights}: the weights do not match {CARD_NAME} (checksum differs); "
            "the directory was partly overwritten: copy the model directory again"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{weights}: not a readable safetensors file ({err})") from err
    try:
        model = build_model(card.model, **config_for_loading(card))
    except (KeyError, ValueError, TypeError) as err:
        raise ModelFileError(
            f"{folder}: cannot build model {card.model!r} from its card ({err}); "
            "it may need a newer napari-hila"
        ) from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"{weights}: weights do not fit model {card.model!r} ({err})") from err
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedModel(model=model, card=card, path=folder, device=dev)


def check_features_match(
    card: ModelCard | Mapping[str, Any], feats: Any, source: str = "features"
) -> None:
    """Raise ModelFileError when ``feats`` (SlideFeatures) came from other encoders or widths."""
    card = ModelCard.of(card)
    patch, region = card.patch_encoder, card.region_encoder
    problems = []
    if patch.name and patch.name != feats.encoder:
        problems.append(
            f"patch encoder {feats.encoder!r} but the model was trained on {patch.name!r}"
        )
    if patch.dim and patch.dim != int(feats.features.shape[1]):
        problems.append(f"patch width {feats.features.shape[1]} but the model expects {patch.dim}")
    if region.name and feats.num_regions and region.name != feats.region_encoder:
        problems.append(
            f"region encoder {feats.region_encoder!r} but the model was trained on {region.name!r}"
        )
    if region.dim and feats.num_regions and region.dim != int(feats.region_features.shape[1]):
        problems.append(
            f"region width {feats.region_features.shape[1]} but the model expects {region.dim}"
        )
    # Same encoder, other version: the numbers differ although the names match.
    found_version = str(feats.attrs.get("encoder_version", "") or "")
    if patch.version and found_version and patch.version != found_version:
        if found_version.startswith("sha256:") or patch.version.startswith("sha256:"):
            problems.append(
                f"patch features made with {feats.encoder} weights {found_version}, but the model "
                f"was trained on features of weights {patch.version} (extract with those "
                "weights, or retrain on these features)"
            )
        else:
            problems.append(
                f"patch encoder {feats.encoder!r} is version {found_version} here but the model "
                f"was trained on version {patch.version} (retrain on features of this version)"
            )
    if problems:
        raise ModelFileError(
            f"{source}: " + "; ".join(problems) + f". Extract features with the model's encoders "
            f"(patch {patch.name!r}, region {region.name!r}) or use a model trained on these"
        )


def prompt_statistics(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Per level, the mean pairwise cosine of a model's projected prompts (METHODS 5).

    From the card when training recorded it; for older cards from the weights
    (the model is loaded on the CPU). ``{}`` for models without prompts.
    """
    card = read_card(path)
    stored = card.explanation.get("prompt_statistics")
    if stored:
        return stored
    model = load_model(path, "cpu").model
    from napari_hila.models.base import UsesPrompts

    return model.prompt_statistics() if isinstance(model, UsesPrompts) else {}
