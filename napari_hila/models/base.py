"""What every survival model returns, and the discrete-time survival maths."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class SurvivalOutput:
    """One forward pass over a batch.

    ``aux_loss`` carries model-specific training losses (MCL for HiLa), already
    weighted, to be added to the NLL; it is zero at inference.
    ``details`` holds per-slide tensors the explanation is built from.
    """

    logits: torch.Tensor  # (B, T)
    hazards: torch.Tensor  # (B, T)
    survival: torch.Tensor  # (B, T)
    risk: torch.Tensor  # (B,)
    aux_loss: torch.Tensor
    details: dict = field(default_factory=dict)


def survival_from_logits(
    logits: torch.Tensor, aux_loss: torch.Tensor | None = None, **details
) -> SurvivalOutput:
    """Hazards h = sigmoid(logits), S_j = prod_{l<=j} (1 - h_l), risk = -sum_j S_j."""
    hazards = torch.sigmoid(logits)
    survival = torch.cumprod(1.0 - hazards, dim=-1)
    risk = -survival.sum(dim=-1)
    if aux_loss is None:
        aux_loss = logits.new_zeros(())
    return SurvivalOutput(logits, hazards, survival, risk, aux_loss, details)


@runtime_checkable
class InitialisedFromData(Protocol):
    """A model with settings that start from the training data (e.g. HiLa's thresholds).

    The trainer calls :meth:`initialise_from_data` once, before the first epoch,
    with the training cohort's batches (eval mode, no gradient); a resumed run
    finds them in its checkpoint instead.
    """

    def initialise_from_data(self, batches: Iterable[Any]) -> None: ...


# Optional capabilities. A model declares one by having its methods; the trainer,
# the card, prediction and the benchmarks test them with isinstance, never by name.


@runtime_checkable
class UsesPrompts(Protocol):
    """A model that takes text prompts per level (HiLa).

    The trainer embeds the prompt set once and calls :meth:`set_prompt_embeddings`
    for each of :meth:`prompt_levels`; the embeddings are buffers saved with the
    weights. :meth:`prompt_statistics` gives the card's per-level prompt cosines.
    """

    def prompt_levels(self) -> tuple[str, ...]: ...

    def set_prompt_embeddings(self, level: str, embeddings: Any) -> None: ...

    def prompt_statistics(self) -> dict[str, dict[str, float]]: ...


@runtime_checkable
class ReadsOwnInputs(Protocol):
    """A model that reads its own inputs (raw tiles: VPTSurv) instead of feature files.

    Its bags are slide references; :meth:`batch_from_bags` builds the batch, and
    :meth:`card_inputs` says what the card records in place of the features'
    encoders and grid (``{"encoders", "grid"}``).
    """

    def batch_from_bags(self, bags: Sequence[Any], epoch: int = 0, train: bool = True) -> Any: ...

    def card_inputs(self) -> dict[str, Any]: ...


@runtime_checkable
class ExplainsAgainstBaseline(Protocol):
    """A model whose explanation compares a slide with its training cohort's mean terms.

    The trainer calls :meth:`fit_explanation_baseline` on the final model with the
    cohort's batches; it returns the baseline risk (stored in the card).
    """

    def fit_explanation_baseline(self, batches: Iterable[Any]) -> float | None: ...


@runtime_checkable
class MakesBenchBatch(Protocol):
    """A model class (checked on the class) with its own synthetic input for ``bench model``.

    Needed by models whose inputs are not plain feature files (CrossFusion's
    magnifications, VPTSurv's tiles); a classmethod.
    """

    def bench_batch(self, n_patches: int, n_regions: int, seed: int = 0) -> Any: ...


@runtime_checkable
class NeedsBenchConfig(Protocol):
    """A model class whose bench build needs settings the bench's sizes cannot give (a ViT shape)."""

    def bench_config(self) -> dict[str, Any]: ...
