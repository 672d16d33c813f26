"""What every survival model returns, and the discrete-time survival maths."""

from __future__ import annotations

from collections.abc import Iterable
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
