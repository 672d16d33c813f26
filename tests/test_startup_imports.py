"""What stays out of start-up: the reasons for the imports kept inside functions.

Measured here (2-core machine): torch 2.7 s, lifelines 2.1 s, matplotlib 0.4 s,
against 0.2 s for building the whole CLI parser. Every ``napari-hila`` command
builds that parser (each command and benchmark module is imported for its
arguments), so those modules import their heavy libraries inside ``run``; the
feature cache's names and the cohort CSV load without torch, and the survival
statistics without lifelines until a curve or a test is asked for.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "lifelines", "pandas", "matplotlib", "napari", "qtpy", "numba", "h5py")


def heavy_modules_after(code: str) -> list[str]:
    """The :data:`HEAVY` libraries loaded after running ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_cli_parser_loads_no_heavy_library():
    assert heavy_modules_after("from napari_hila.cli import build_parser; build_parser()") == []


@pytest.mark.parametrize(
    "module",
    [
        "napari_hila.features.cache",
        "napari_hila.survival.cohort_csv",
        "napari_hila.survival.km",
        "napari_hila.survival.metrics",
        "napari_hila.results",
        "napari_hila.overlays",
    ],
)
def test_light_modules_stay_light(module):
    assert heavy_modules_after(f"import {module}") == []


def test_the_probe_sees_a_heavy_import():
    assert "h5py" in heavy_modules_after("import napari_hila.features.store")
