"""`predict` over many slides: cohort CSV with the C-index, list files, tables, resume."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import test_predict_features as shared
from _single_thread import one_torch_thread  # noqa: F401

from napari_hila.cli import main
from napari_hila.errors import HilaError
from napari_hila.predict_many import items_in_list
from napari_hila.survival.cohort_csv import read_cohort
from napari_hila.training.crossval import RunSettings, load_cohort_features, run_training

# the tiny CLAM-layout cohort of the feature-file tests
clam_cohort = shared.clam_cohort


@pytest.fixture(scope="module")
def model(clam_cohort):
    """A tiny ABMIL on that cohort (fast to train and to explain)."""
    cohort = read_cohort(clam_cohort / "cohort.csv", clam_cohort / "feats")
    bags = load_cohort_features(cohort, clam_cohort / "feats")
    settings = RunSettings(model="abmil", folds=2, epochs=1, seed=0)
    run_dir = clam_cohort / "abmil-run"
    run_training(cohort, bags, run_dir, settings, show_progress=False, log=lambda m: None)
    return run_dir / "final_model"


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _predict(*argv) -> int:
    return main(["predict", *map(str, argv), "--device", "cpu", "--threads", "1"])


def test_cohort_csv_gives_patient_c_index_and_resumes(model, clam_cohort, tmp_path, capsys):
    from lifelines.utils import concordance_index as lifelines_cindex

    out = tmp_path / "ext"
    csv_path, feats = clam_cohort / "cohort.csv", clam_cohort / "feats"
    assert _predict(csv_path, "--slides", feats, "--model", model, "--out", out) == 0
    printed = capsys.readouterr().out
    table = _rows(out / "predictions.csv")
    assert [r["slide"] for r in table] == [f"S{i}" for i in range(8)]
    assert list(table[0]) == ["slide", "risk", "group", "percentile", "patient_id", "time", "event"]
    for row in table:
        saved = json.loads((out / row["slide"] / "result.json").read_text())
        assert float(row["risk"]) == pytest.approx(saved["risk"], rel=1e-9)
    metrics = json.loads((out / "metrics.json").read_text())
    risk = np.array([float(r["risk"]) for r in table])
    time = np.array([float(r["time"]) for r in table])
    event = np.array([int(r["event"]) for r in table])
    assert metrics["n_patients"] == 8 and metrics["n_events"] == int(event.sum())
    # the peer: lifelines ranks by predicted survival, so higher risk = lower score
    assert metrics["c_index"] == pytest.approx(lifelines_cindex(time, -risk, event), abs=1e-12)
    assert f"C-index {metrics['c_index']:.4f} over 8 patients" in printed
    summary = _rows(out / "summary.csv")
    assert list(summary[0]) == ["slide", "status", "patches", "seconds", "error"]
    assert {r["status"] for r in summary} == {"done"} and int(summary[0]["patches"]) > 0

    # a re-run resumes; a changed input file is predicted again, and only that one
    (feats / "S3.h5").touch()
    os.utime(feats / "S3.h5", ns=(1, 1))
    assert _predict(csv_path, "--slides", feats, "--model", model, "--out", out) == 0
    statuses = {r["slide"]: r["status"] for r in _rows(out / "summary.csv")}
    assert statuses.pop("S3") == "done" and set(statuses.values()) == {"cached"}
    assert "already done" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["c_index"] == metrics["c_index"]


def test_one_bad_slide_is_a_row_and_the_rest_go_on(model, clam_cohort, tmp_path, capsys):
    folder = tmp_path / "feats"
    folder.mkdir()
    for i in (0, 1):
        (folder / f"S{i}.h5").write_bytes((clam_cohort / "feats" / f"S{i}.h5").read_bytes())
    (folder / "S9.h5").write_bytes(b"not hdf5")
    listing = tmp_path / "slides.txt"
    listing.write_text("# external set\nfeats/S0.h5\nfeats/S9.h5  # broken\nfeats/S1.h5\n")
    out = tmp_path / "out"
    assert _predict(listing, "--model", model, "--out", out) == 1
    summary = {r["slide"]: r for r in _rows(out / "summary.csv")}
    assert summary["S9"]["status"] == "failed" and "S9.h5" in summary["S9"]["error"]
    assert summary["S0"]["status"] == summary["S1"]["status"] == "done"
    assert [r["slide"] for r in _rows(out / "predictions.csv")] == ["S0", "S1"]
    assert not (out / "metrics.json").exists()  # no outcomes, no C-index
    assert "2 of 3 slides predicted" in capsys.readouterr().out


def test_list_file_names_the_line_of_a_missing_path(tmp_path):
    listing = tmp_path / "slides.txt"
    listing.write_text("a.svs\n\nmissing.svs\n")
    (tmp_path / "a.svs").write_bytes(b"")
    with pytest.raises(HilaError, match="line 3: .*missing.svs does not exist"):
        items_in_list(listing)


def test_cohort_csv_lists_every_slide_it_cannot_find(clam_cohort, tmp_path, capsys):
    code = _predict(clam_cohort / "cohort.csv", "--slides", tmp_path, "--out", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2 and "8 slides have no slide or feature file" in err and "line 2" in err


@pytest.mark.slow  # ~7 s: a Dask cluster in the process
def test_cluster_gives_the_same_predictions_as_a_local_run(model, clam_cohort, tmp_path):
    distributed = pytest.importorskip("distributed")
    from napari_hila.predict_many import items_in_cohort, predict_many

    items = items_in_cohort(clam_cohort / "cohort.csv", clam_cohort / "feats")[:4]
    local = predict_many(items, model, tmp_path / "local", device="cpu", log=lambda m: None)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = predict_many(
            items, model, tmp_path / "dask", device="cpu", client=client, log=lambda m: None
        )
    assert (tmp_path / "dask" / "predictions.csv").read_text() == (
        tmp_path / "local" / "predictions.csv"
    ).read_text()
    assert remote.metrics == local.metrics and {r["status"] for r in remote.rows} == {"done"}
    for item in items:
        a = np.load(tmp_path / "local" / item.slide_id / "result.npz")
        b = np.load(tmp_path / "dask" / item.slide_id / "result.npz")
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
