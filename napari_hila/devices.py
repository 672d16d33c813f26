"""Choosing the torch device: one setting, "auto" picks the best available."""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING

from napari_hila.errors import HilaError

if TYPE_CHECKING:  # torch is imported where used, so the CLI's --help stays fast
    import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


class DeviceError(HilaError, ValueError):
    """A device setting that names no device kind (``--device gpu``)."""


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (always ends with "cpu")."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(requested: str | torch.device | None = "auto") -> torch.device:
    """Turn a device setting into a usable ``torch.device``.

    "auto" (or None) picks CUDA, then MPS, then CPU. Asking for a device that is
    absent falls back to the CPU with a warning rather than failing a long job.
    """
    import torch

    if isinstance(requested, torch.device):
        requested = str(requested)
    name = (requested or "auto").lower()
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise DeviceError(
            f"unknown device {requested!r}; choose one of {', '.join(DEVICE_CHOICES)}"
        )
    usable = available_devices()
    if kind == "auto":
        return torch.device(usable[0])
    if kind not in usable:
        warnings.warn(
            f"device {requested!r} is not available on this machine; using the CPU instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return torch.device("cpu")
    return torch.device(name)


#: torch CPU threads used by train, predict and the viewer unless ``--threads`` says
#: otherwise: one thread ran per-slide steps fastest on a busy machine (README, "Threads").
DEFAULT_TORCH_THREADS = 1

_threads_chosen: int | None = None


def configure_torch_threads(n: int | None = None) -> int:
    """Set torch's CPU thread count for this process; return the count in force.

    ``None`` takes :data:`DEFAULT_TORCH_THREADS`; ``0`` keeps torch's own default.
    The inter-op pool can be sized only once, before any parallel work: later
    calls leave it as it is (it matters little for these models). The choice is
    remembered, so a worker thread can re-apply it with :func:`apply_torch_threads`.
    """
    import torch

    global _threads_chosen
    if n is not None and n < 0:
        raise HilaError(f"--threads {n}: give a positive count, or 0 for torch's default")
    count = DEFAULT_TORCH_THREADS if n is None else int(n)
    _threads_chosen = count
    if count == 0:
        return torch.get_num_threads()
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work has started
        torch.set_num_interop_threads(count)
    return torch.get_num_threads()


def apply_torch_threads() -> int:
    """In the calling thread, the count :func:`configure_torch_threads` chose (default if none)."""
    return configure_torch_threads(
        DEFAULT_TORCH_THREADS if _threads_chosen is None else _threads_chosen
    )
