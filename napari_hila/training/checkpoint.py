"""Per-epoch training checkpoints, so an interrupted fold resumes at its last epoch.

A checkpoint holds the model and optimiser states, the random generators'
states and the losses so far; resuming gives exactly the run an uninterrupted
one would have given. It is written atomically into the run's own folder and
read with ``torch.load(weights_only=True)``, which loads tensors and plain
containers only and never runs code. Shipped models never use this format.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from napari_hila.io_utils import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    epochs_done: int,
    losses: list[float],
    rng: np.random.Generator,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "epochs_done": int(epochs_done),
        "losses": [float(x) for x in losses],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
    }
    # serialised in memory, written with plain file I/O: torch's own writer turns a full
    # disk into a RuntimeError with no file name; this way it is one OSError for the CLI
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> tuple[int, list[float]] | None:
    """Restore a checkpoint into ``model``, ``optimiser`` and ``rng``; None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    torch.set_rng_state(state["torch_rng"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    return int(state["epochs_done"]), list(state["losses"])
