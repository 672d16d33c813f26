"""One device setting: "auto" picks the best, an absent device falls back with a warning."""

from __future__ import annotations

import pytest
import torch

from napari_hila.devices import available_devices, resolve_device
from napari_hila.errors import HilaError


def test_auto_picks_the_first_available_and_cpu_is_always_there():
    assert available_devices()[-1] == "cpu"
    assert resolve_device("auto").type == available_devices()[0]
    assert resolve_device(None).type == available_devices()[0]


def test_absent_device_falls_back_to_cpu_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="'cuda:1' is not available"):
        assert resolve_device("cuda:1") == torch.device("cpu")


def test_present_device_is_used_as_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert available_devices()[0] == "cuda"
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("CPU") == torch.device("cpu")


def test_unknown_device_name_is_a_user_error():
    with pytest.raises(HilaError, match="unknown device 'gpu'; choose one of auto, cuda, mps, cpu"):
        resolve_device("gpu")
