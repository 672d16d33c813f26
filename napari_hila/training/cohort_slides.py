"""The slide files of a cohort, for models that read their own tiles (``train --slides DIR``)."""

from __future__ import annotations

import os
from pathlib import Path

from napari_hila.errors import CohortError
from napari_hila.features.tile_bags import SlideRef
from napari_hila.slides import SLIDE_SUFFIXES

__all__ = ["cohort_slide_refs", "find_slide_file"]


def find_slide_file(slides_dir: str | os.PathLike, slide_id: str) -> Path | None:
    """``<slides_dir>/<slide_id><suffix>`` for a slide suffix napari-hila reads, or None."""
    folder = Path(slides_dir)
    for suffix in sorted(SLIDE_SUFFIXES):
        candidate = folder / f"{slide_id}{suffix}"
        if candidate.is_file():
            return candidate
    direct = folder / slide_id
    return direct if direct.is_file() and direct.suffix.lower() in SLIDE_SUFFIXES else None


def cohort_slide_refs(cohort, slides_dir: str | os.PathLike) -> list[SlideRef]:
    """One :class:`SlideRef` per cohort row; every missing slide is listed in one error."""
    folder = Path(slides_dir)
    if not folder.is_dir():
        raise CohortError(
            f"{folder}: slide folder not found; give --slides the folder of the slide files"
        )
    refs, missing = [], []
    for row in cohort.rows:
        path = find_slide_file(folder, row.slide_id)
        if path is None:
            missing.append(row.slide_id)
        else:
            refs.append(SlideRef(path, row.slide_id))
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise CohortError(
            f"{folder}: no slide file for {shown}; name each file <slide_id>.svs (or .tif, .ndpi, ...) "
            "or remove those rows from the cohort CSV"
        )
    return refs
