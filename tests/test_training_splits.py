"""Cross-validation splits: patient-level, stratified by event, saved and reused."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hila.errors import CohortError, HilaError
from napari_hila.training.splits import load_splits, make_splits, save_splits, splits_from_folds


def _patients(n=53, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    events = (rng.random(n) < 0.3).astype(int)
    return ids, events


def test_each_patient_in_exactly_one_test_fold_and_stratified():
    ids, events = _patients()
    splits = make_splits(ids, events, n_folds=5, seed=3)
    tests = [set(splits.test_patients(k)) for k in range(5)]
    assert set().union(*tests) == set(ids)
    assert sum(len(t) for t in tests) == len(ids)
    for k in range(5):
        assert not tests[k] & set(splits.train_patients(k))
    event_of = dict(zip(ids, events, strict=True))
    deaths = [sum(event_of[p] for p in t) for t in tests]
    sizes = [len(t) for t in tests]
    assert max(deaths) - min(deaths) <= 1
    assert max(sizes) - min(sizes) <= 1


def test_seed_changes_and_fixes_the_assignment():
    ids, events = _patients()
    a = make_splits(ids, events, 5, seed=1).fold_of
    b = make_splits(ids, events, 5, seed=1).fold_of
    c = make_splits(ids, events, 5, seed=2).fold_of
    assert a == b and a != c


def test_saved_splits_reload_identically(tmp_path):
    ids, events = _patients()
    splits = make_splits(ids, events, 4, seed=9)
    path = save_splits(tmp_path / "splits.json", splits)
    again = load_splits(path, ids)
    assert again.fold_of == splits.fold_of and again.n_folds == 4
    with pytest.raises(CohortError, match="do not match the cohort"):
        load_splits(path, ids[:-1])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(HilaError, match="not a splits file"):
        load_splits(tmp_path / "bad.json")


def test_fold_column_and_too_few_patients():
    s = splits_from_folds(["a", "b", "c"], [0, 1, 1])
    assert s.n_folds == 2 and s.test_patients(1) == ["b", "c"]
    with pytest.raises(CohortError, match="fold column is empty"):
        splits_from_folds(["a", "b"], [0, None])
    with pytest.raises(CohortError, match="cannot fill"):
        make_splits(["a", "b"], [1, 0], n_folds=3)
