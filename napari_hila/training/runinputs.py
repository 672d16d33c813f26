"""What a training run was computed from, so a resumed run notices a change.

A run folder's ``inputs.json`` records, per slide, the cohort row's labels
(patient, time, event, fold) and a digest of the slide's input: the content of
its features (every array a model reads), or for tile models the slide file's
content fingerprint. Resuming into the folder with another cohort or other
feature files is one error naming the first slide that differs, offering
``--force`` (start over in that folder) or a new ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from napari_hila.errors import HilaError
from napari_hila.io_utils import write_json_atomic
from napari_hila.survival.cohort_csv import Cohort

__all__ = ["INPUTS_FILE", "run_inputs", "check_run_inputs", "clear_run_folder"]

INPUTS_FILE = "inputs.json"
# Every file a run writes into its folder: what --force removes, and nothing else.
RUN_FILE_PATTERNS = (
    "settings.json",
    INPUTS_FILE,
    "splits.json",
    "metrics.json",
    "fold_*.json",
    "fold_*.checkpoint.pt",
    "final_model.checkpoint.pt",
)
RUN_SUBFOLDERS = ("final_model",)
RESTART_HINT = "re-run with --force to start over in this folder, or choose a new --out"


def bag_digest(bag: Any) -> str:
    """Digest of what a model reads from one slide's bag (features or slide file)."""
    digest = hashlib.sha256()
    if hasattr(bag, "features"):
        arrays = [bag.features, bag.coords, bag.region_features, bag.region_coords]
        arrays += [bag.patch_to_region]
        for name in sorted(bag.scales):
            arrays.extend(bag.scales[name])
        for name in sorted(bag.extras):
            arrays.append(bag.extras[name])
        for array in arrays:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}|".encode())
            digest.update(array.tobytes())
        return "features:" + digest.hexdigest()[:32]
    from napari_hila.slides import open_slide

    with open_slide(bag.path, mpp=getattr(bag, "mpp", None)) as slide:
        return "slide:" + slide.fingerprint()


def run_inputs(cohort: Cohort, bags: list[Any]) -> dict[str, dict[str, Any]]:
    """Per slide_id: its labels and its input digest (JSON-ready, in cohort order)."""
    return {
        row.slide_id: {
            "patient_id": row.patient_id,
            "time": float(row.time),
            "event": int(row.event),
            "fold": row.fold,
            "input": bag_digest(bag),
        }
        for row, bag in zip(cohort.rows, bags, strict=True)
    }


def _first_difference(saved: dict[str, dict], current: dict[str, dict]) -> str | None:
    for slide_id, now in current.items():
        before = saved.get(slide_id)
        if before is None:
            return f"slide {slide_id!r} is new"
        for key in ("patient_id", "time", "event", "fold"):
            if before.get(key) != now[key]:
                return f"slide {slide_id!r}: {key} was {before.get(key)!r}, now {now[key]!r}"
        if before.get("input") != now["input"]:
            return f"slide {slide_id!r}: its feature file (or slide) changed"
    dropped = [s for s in saved if s not in current]
    if dropped:
        return f"slide {dropped[0]!r} is no longer in the cohort"
    return None


def check_run_inputs(run_dir: Path, current: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume a run computed from other inputs; record them on a new run.

    A folder from before inputs were recorded has no ``inputs.json``: what it
    was computed from is unknown, so the current inputs are recorded as is.
    """
    path = run_dir / INPUTS_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        difference = _first_difference(saved.get("slides", {}), current)
        if difference:
            raise HilaError(
                f"{run_dir} holds a run computed from other inputs ({difference}; "
                f"{len(current)} slides now, {len(saved.get('slides', {}))} then); {RESTART_HINT}"
            )
        return
    write_json_atomic(path, {"slides": current})


def clear_run_folder(run_dir: Path) -> list[Path]:
    """Remove the files a run wrote into ``run_dir`` (``--force``); others stay. Returns them."""
    removed = []
    for pattern in RUN_FILE_PATTERNS:
        for path in sorted(run_dir.glob(pattern)):
            path.unlink()
            removed.append(path)
    for name in RUN_SUBFOLDERS:
        folder = run_dir / name
        if folder.is_dir():
            shutil.rmtree(folder)
            removed.append(folder)
    return removed
