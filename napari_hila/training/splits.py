"""Patient-level k-fold splits, stratified by event, saved with the run.

A patient's slides always land in the same fold, so no patient is ever seen in
training and evaluation at once. The splits are a small JSON file; passing it
back (``--splits FILE``) reproduces the folds exactly, whatever the seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_hila.errors import CohortError, HilaError
from napari_hila.io_utils import write_json_atomic

__all__ = ["Splits", "make_splits", "splits_from_folds", "load_splits", "save_splits"]


@dataclass
class Splits:
    """Fold assignment of every patient: ``fold_of[patient_id] -> int``."""

    fold_of: dict[str, int]
    n_folds: int
    seed: int | None = None
    method: str = "stratified by event"

    def test_patients(self, fold: int) -> list[str]:
        return [p for p, f in self.fold_of.items() if f == fold]

    def train_patients(self, fold: int) -> list[str]:
        return [p for p, f in self.fold_of.items() if f != fold]

    def to_json(self) -> dict:
        return {
            "n_folds": self.n_folds,
            "seed": self.seed,
            "method": self.method,
            "folds": [
                {"fold": k, "test": self.test_patients(k), "train": self.train_patients(k)}
                for k in range(self.n_folds)
            ],
        }


def make_splits(
    patient_ids: Sequence[str], events: Sequence[int], n_folds: int = 5, seed: int = 0
) -> Splits:
    """Assign patients to ``n_folds`` folds, dealing each event class round-robin.

    Shuffling within the deaths and within the censored patients, then dealing
    them out in turn, keeps the event rate of every fold within one patient of
    the cohort's.
    """
    ids = [str(p) for p in patient_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("patient ids must be unique (one entry per patient)")
    if n_folds < 2:
        raise HilaError(f"--folds must be at least 2 (got {n_folds})")
    if len(ids) < n_folds:
        raise CohortError(f"{len(ids)} patients cannot fill {n_folds} folds; use fewer folds")
    rng = np.random.default_rng(seed)
    events = np.asarray(events).astype(int)
    fold_of: dict[str, int] = {}
    offset = 0
    for cls in (1, 0):
        members = np.flatnonzero(events == cls)
        members = members[rng.permutation(len(members))]
        for rank, idx in enumerate(members):
            fold_of[ids[idx]] = (rank + offset) % n_folds
        offset += len(members)
    ordered = {p: fold_of[p] for p in ids}
    return Splits(ordered, n_folds, seed)


def splits_from_folds(patient_ids: Sequence[str], folds: Sequence[int | None]) -> Splits:
    """Splits given by the cohort's ``fold`` column (every patient must have one)."""
    missing = [p for p, f in zip(patient_ids, folds, strict=True) if f is None]
    if missing:
        raise CohortError(
            f"the fold column is empty for {len(missing)} patient(s) (e.g. {missing[0]}); "
            "fill it for every row or remove the column"
        )
    distinct = sorted(set(folds))
    if distinct != list(range(len(distinct))) or len(distinct) < 2:
        raise CohortError(
            f"the fold column must number folds 0..k-1 with k >= 2 (found {distinct})"
        )
    return Splits(
        {str(p): int(f) for p, f in zip(patient_ids, folds, strict=True)},
        len(distinct),
        None,
        "from the cohort's fold column",
    )


def save_splits(path: str | os.PathLike, splits: Splits) -> Path:
    return write_json_atomic(path, splits.to_json())


def load_splits(path: str | os.PathLike, patient_ids: Sequence[str] | None = None) -> Splits:
    """Read a splits JSON; with ``patient_ids``, check it covers exactly that cohort."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        fold_of: dict[str, int] = {}
        for entry in data["folds"]:
            for pid in entry["test"]:
                if pid in fold_of:
                    raise HilaError(f"{path}: patient {pid!r} is in two test folds")
                fold_of[str(pid)] = int(entry["fold"])
        n_folds = int(data["n_folds"])
    except FileNotFoundError:
        raise HilaError(f"{path}: splits file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise HilaError(f"{path}: not a splits file written by napari-hila train ({err})") from err
    if patient_ids is not None:
        wanted = {str(p) for p in patient_ids}
        absent = sorted(wanted - set(fold_of))
        extra = sorted(set(fold_of) - wanted)
        if absent or extra:
            raise CohortError(
                f"{path}: the splits do not match the cohort: {len(absent)} cohort patient(s) missing "
                f"(e.g. {absent[:3]}), {len(extra)} unknown (e.g. {extra[:3]}); "
                "drop --splits to make new ones"
            )
        fold_of = {str(p): fold_of[str(p)] for p in patient_ids}
    return Splits(fold_of, n_folds, data.get("seed"), data.get("method", "from file"))
