"""Shared fixtures. Slow tests run with --runslow or HILA_SLOW=1."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# feature caches and computed slide overviews go to throwaway folders, never
# the user's cache (and a stale user cache cannot make a test pass)
for _variable, _prefix in (
    ("NAPARI_HILA_CACHE", "hila-test-cache-"),
    ("NAPARI_HILA_OVERVIEW_CACHE", "hila-test-overviews-"),
):
    _folder = tempfile.mkdtemp(prefix=_prefix)
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)
    os.environ[_variable] = _folder


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("HILA_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or HILA_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    """The bundled Aperio sample (read-only: copy it before modifying)."""
    from napari_hila.resources import sample_slide_path

    return sample_slide_path()


@pytest.fixture
def sample_copy(sample_slide, tmp_path) -> Path:
    """A private copy of the sample slide."""
    target = tmp_path / sample_slide.name
    shutil.copy(sample_slide, target)
    return target
