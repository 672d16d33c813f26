"""Fitting one survival model on bags of slide features, and scoring slides.

Generic over the model registry: a model is built from its registry name and
config values; the loop only relies on ``model(batch) -> SurvivalOutput``.
One bag per slide; a patient's slides all carry the patient's time and event.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from napari_hila.encoders.pairing import shares_space
from napari_hila.features.store import SlideFeatures
from napari_hila.models.base import InitialisedFromData, ReadsOwnInputs, UsesPrompts
from napari_hila.models.batch import collate
from napari_hila.survival.losses import nll_loss
from napari_hila.training.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "FitSettings",
    "data_config",
    "fit_model",
    "feature_widths",
    "install_prompt_embeddings",
    "make_batch",
    "slide_risks",
    "subsample_patches",
    "wants_prompts",
]

EpochCallback = Callable[[int, float], None]


@dataclass
class FitSettings:
    """How to fit: fixed epochs (no model selection on the evaluated fold)."""

    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    batch_size: int = 1  # slides per optimiser step (padded into one batch)
    max_patches: int | None = None  # random patch subset per bag per step (None = all)
    seed: int = 0
    device: str = "cpu"
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def data_config(
    config_cls: type,
    patch_dim: int,
    region_dim: int,
    n_bins: int,
    prompt_set: dict[str, Any] | None = None,
    vision_encoder: str | None = None,
) -> dict[str, Any]:
    """Config values the data decides, for the fields ``config_cls`` declares.

    The contract (docs/ARCHITECTURE.md, "Trainer <-> models"): ``patch_dim``,
    ``region_dim``, ``n_bins``, ``text_dim``, ``shared_space`` and
    ``<level>_prompt_names`` / ``<level>_prompt_texts`` are filled only when
    the model's config has a field of that name, so the trainer needs no
    knowledge of any model.
    """
    names = {f.name for f in dataclasses.fields(config_cls)}
    offered: dict[str, Any] = {"patch_dim": patch_dim, "region_dim": region_dim, "n_bins": n_bins}
    if prompt_set:
        offered["text_dim"] = int(prompt_set["text_dim"])
        text_encoder = prompt_set.get("embedding_encoder") or prompt_set.get("text_encoder")
        offered["shared_space"] = shares_space(vision_encoder, text_encoder) and (
            int(prompt_set["text_dim"]) == int(patch_dim)
        )
        for level, entry in prompt_set["levels"].items():
            offered[f"{level}_prompt_names"] = list(entry["names"])
            offered[f"{level}_prompt_texts"] = list(entry["texts"])
    return {k: v for k, v in offered.items() if k in names}


def wants_prompts(config_cls: type) -> bool:
    """True when a model's config takes prompt texts (``<level>_prompt_texts``)."""
    return any(f.name.endswith("_prompt_texts") for f in dataclasses.fields(config_cls))


def install_prompt_embeddings(model: torch.nn.Module, prompt_set: dict[str, Any] | None) -> None:
    """Give a prompt-using model its frozen text embeddings, level by level.

    A model that uses prompts (:class:`~napari_hila.models.base.UsesPrompts`)
    gets ``set_prompt_embeddings(level, E)`` for each of its ``prompt_levels()``;
    the embeddings then live in its buffers and are saved with the weights.
    """
    if not isinstance(model, UsesPrompts):
        return
    levels = (prompt_set or {}).get("levels", {})
    for level in model.prompt_levels():
        if level not in levels:
            raise ValueError(f"the prompt set has no {level!r} level, which this model needs")
        model.set_prompt_embeddings(level, np.asarray(levels[level]["embeddings"], np.float32))


def subsample_patches(feats: SlideFeatures, n: int, rng: np.random.Generator) -> SlideFeatures:
    """A random subset of ``n`` patches (all regions kept), for cheaper training steps."""
    if n is None or feats.num_patches <= n:
        return feats
    keep = np.sort(rng.choice(feats.num_patches, size=n, replace=False))
    return dataclasses.replace(
        feats,
        features=feats.features[keep],
        coords=feats.coords[keep],
        patch_to_region=feats.patch_to_region[keep],
        scales=feats.scales,  # other magnifications (CrossFusion) keep all their tiles
        extras={},  # cross-scale indices point into the full patch list
    )


def make_batch(
    model: torch.nn.Module,
    bags: Sequence[Any],
    max_patches: int | None,
    rng: np.random.Generator | None,
    epoch: int = 0,
    train: bool = True,
    transform: Callable[[SlideFeatures], SlideFeatures] | None = None,
) -> Any:
    """The model's input for some bags: padded features, unless the model reads its own.

    A model whose registry inputs are not cached features (``inputs="tiles"``)
    takes slide references as bags and builds its batch with
    ``batch_from_bags(bags, epoch=, train=)`` (:class:`~napari_hila.models.base.ReadsOwnInputs`);
    the trainer never looks inside. ``transform`` (feature scaling) applies to
    feature bags after subsampling.
    """
    if isinstance(model, ReadsOwnInputs):
        return model.batch_from_bags(bags, epoch=epoch, train=train)
    chosen = [subsample_patches(b, max_patches, rng) for b in bags]
    return collate([transform(b) for b in chosen] if transform else chosen)


def feature_widths(bag: Any) -> tuple[int, int]:
    """(patch, region) feature widths of a bag; (0, 0) for a bag without features (slide reference)."""
    if not isinstance(bag, SlideFeatures):
        return 0, 0
    return int(bag.features.shape[1]), int(bag.region_features.shape[1])


def _nll_alpha(model: torch.nn.Module) -> float:
    config = getattr(model, "config", None)
    return float(getattr(config, "nll_alpha", 0.0) or 0.0)


def fit_model(
    model: torch.nn.Module,
    bags: Sequence[SlideFeatures],
    bins: np.ndarray,
    events: np.ndarray,
    settings: FitSettings,
    desc: str = "",
    on_epoch: EpochCallback | None = None,
    transform: Callable[[SlideFeatures], SlideFeatures] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> list[float]:
    """Train ``model`` in place for ``settings.epochs`` epochs; return the mean loss per epoch.

    ``bins`` and ``events`` give each bag's time-bin index and event (1 = death);
    ``transform`` (e.g. feature scaling) is applied to each bag as it is used.
    With ``checkpoint`` (a file path) the state is saved after every epoch and
    a run that finds one resumes after its last epoch, with identical results.
    """
    device = torch.device(settings.device)
    model.to(device)
    optimiser = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings.lr,
        weight_decay=settings.weight_decay,
    )
    rng = np.random.default_rng(settings.seed)
    first_epoch, losses = _resume(checkpoint, model, optimiser, rng)
    if first_epoch == 0 and isinstance(model, InitialisedFromData):
        _initialise_from_data(model, bags, device, transform)
    targets = _Targets(bins, events, _nll_alpha(model), device)
    for epoch in range(first_epoch, settings.epochs):
        started = time.perf_counter()
        mean_loss = _train_epoch(
            model, bags, targets, optimiser, rng, epoch, settings, desc, transform
        )
        if not np.isfinite(mean_loss):
            raise FloatingPointError(
                f"training diverged at epoch {epoch + 1} (loss {mean_loss}); lower --lr"
            )
        losses.append(mean_loss)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimiser, epoch + 1, losses, rng)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
        if settings.show_progress:
            elapsed = time.perf_counter() - started
            print(
                f"{desc} epoch {epoch + 1}/{settings.epochs}  loss {mean_loss:.4f}  ({elapsed:.1f} s)".strip(),
                file=sys.stderr,
            )
    model.eval()
    return losses


def _resume(checkpoint, model, optimiser, rng) -> tuple[int, list[float]]:
    """(first epoch to run, losses so far): from ``checkpoint`` when there is one, else (0, [])."""
    if checkpoint is not None:
        resumed = load_checkpoint(checkpoint, model, optimiser, rng)
        if resumed is not None:
            return resumed
    return 0, []


def _initialise_from_data(model, bags, device, transform) -> None:
    """Let an :class:`InitialisedFromData` model see every bag once before training."""
    model.eval()
    with torch.no_grad():
        model.initialise_from_data(
            make_batch(model, [bag], None, None, train=False, transform=transform).to(device)
            for bag in bags
        )


class _Targets:
    """Each bag's time bin and event as tensors, and the loss's uncensored weight."""

    def __init__(self, bins, events, alpha: float, device: torch.device) -> None:
        self.bins = torch.as_tensor(np.asarray(bins), dtype=torch.long)
        self.events = torch.as_tensor(np.asarray(events), dtype=torch.float32)
        self.alpha, self.device = alpha, device

    def loss(self, out, idx) -> torch.Tensor:
        """The discrete-time NLL of bags ``idx`` plus the model's own training loss (MCL)."""
        bins, events = self.bins[idx].to(self.device), self.events[idx].to(self.device)
        return nll_loss(out.logits, bins, events, self.alpha) + out.aux_loss


def _train_epoch(
    model, bags, targets: _Targets, optimiser, rng, epoch: int, settings, desc, transform
) -> float:
    """One pass over the bags in a random order, ``settings.batch_size`` at a time; the mean loss."""
    model.train()
    order = rng.permutation(len(bags))
    total, count = 0.0, 0
    step = max(1, settings.batch_size)
    batches = [order[i : i + step] for i in range(0, len(order), step)]
    bar = tqdm(
        batches,
        desc=f"{desc} epoch {epoch + 1}/{settings.epochs}".strip(),
        unit="step",
        leave=False,
        file=sys.stderr,
        disable=not settings.show_progress,
    )
    for idx in bar:
        batch = make_batch(
            model, [bags[i] for i in idx], settings.max_patches, rng, epoch, transform=transform
        )
        loss = targets.loss(model(batch.to(targets.device)), idx)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
        bar.set_postfix(loss=f"{total / count:.4f}")
    bar.close()
    return total / max(count, 1)


@torch.no_grad()
def slide_risks(
    model: torch.nn.Module,
    bags: Sequence[SlideFeatures],
    device: str = "cpu",
    transform: Callable[[SlideFeatures], SlideFeatures] | None = None,
) -> np.ndarray:
    """Risk (= -sum_j S_j, higher = shorter survival) of each bag, one slide at a time."""
    model.eval()
    model.to(device)
    risks = np.empty(len(bags), dtype=float)
    for i, bag in enumerate(bags):
        risks[i] = float(
            model(
                make_batch(model, [bag], None, None, train=False, transform=transform).to(device)
            ).risk[0]
        )
    return risks
