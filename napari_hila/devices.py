"""Choosing the torch device: one setting, "auto" picks the best available."""

from __future__ import annotations

import warnings

import torch

from napari_hila.errors import HilaError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


class DeviceError(HilaError, ValueError):
    """A device setting that names no device kind (``--device gpu``)."""


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (always ends with "cpu")."""
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
