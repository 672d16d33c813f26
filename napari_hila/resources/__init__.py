"""Locating files shipped in ``resources/`` (sample slide, demo model)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
# Installed wheels carry resources inside the package; a source checkout keeps
# them at the repository's top level.
_CANDIDATES = (_PACKAGE_DIR / "resources", _PACKAGE_DIR.parent / "resources")


def resource_path(name: str) -> Path:
    """Path of a shipped resource file, or FileNotFoundError naming where we looked."""
    for folder in _CANDIDATES:
        path = folder / name
        if path.exists():
            return path
    looked = ", ".join(str(c) for c in _CANDIDATES)
    raise FileNotFoundError(f"resource {name!r} not found in {looked}; reinstall napari-hila")


def sample_slide_path() -> Path:
    """The bundled H&E sample: CMU-1-Small-Region (Aperio SVS, CC0)."""
    return resource_path("CMU-1-Small-Region.svs")
