"""Files shipped inside the package: the H&E sample slide and the demo model.

They live in this package (``napari_hila/resources/``) so that a wheel carries
them; they are found through :mod:`importlib.resources`, the same way in a
source checkout, an editable install and an installed wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SAMPLE_SLIDE_NAME = "CMU-1-Small-Region.svs"
DEMO_MODEL_NAME = "demo_model"


def resources_dir() -> Path:
    """The folder holding the shipped files (``scripts/train_demo_model.py`` writes here)."""
    folder = files(__name__)
    if not isinstance(folder, Path):
        # a zipped install: the sample slide must be a real file for OpenSlide
        raise FileNotFoundError(
            f"napari-hila's resources are inside an archive ({folder}); "
            "install napari-hila as a normal (unzipped) package"
        )
    return folder


def resource_path(name: str) -> Path:
    """Path of a shipped resource, or FileNotFoundError naming where it was looked for."""
    path = resources_dir() / name
    if not path.exists():
        raise FileNotFoundError(
            f"resource {name!r} not found in {path.parent}; reinstall napari-hila"
        )
    return path


def sample_slide_path() -> Path:
    """The bundled H&E sample: CMU-1-Small-Region (Aperio SVS, CC0; see ATTRIBUTION.md)."""
    return resource_path(SAMPLE_SLIDE_NAME)


def demo_model_path() -> Path:
    """The shipped demo model folder (``card.json`` + ``model.safetensors``)."""
    return resource_path(DEMO_MODEL_NAME)
