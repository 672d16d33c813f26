"""A resumed `train` notices a changed cohort or feature file and refuses; --force starts over."""

from __future__ import annotations

import json

import pytest
from _single_thread import one_torch_thread  # noqa: F401
from test_training import write_synthetic_cohort

from napari_hila.cli import main
from napari_hila.features.store import load_features, save_features


def _train(csv, feats, out, *extra) -> int:
    argv = ["train", "--cohort", str(csv), "--features", str(feats), "--out", str(out)]
    argv += ["--model", "abmil", "--folds", "2", "--epochs", "1", "--quiet"]
    return main([*argv, "--device", "cpu", "--threads", "1", "--no-final", *extra])


@pytest.fixture
def finished_run(tmp_path, capsys):
    csv, feats = write_synthetic_cohort(tmp_path, n_patients=8)
    out = tmp_path / "run"
    assert _train(csv, feats, out) == 0
    capsys.readouterr()
    return csv, feats, out


def test_changed_label_is_refused_then_force_retrains(finished_run, capsys):
    csv, feats, out = finished_run
    folds_before = {p.name: p.read_text() for p in out.glob("fold_*.json")}
    lines = csv.read_text().splitlines()
    patient, slide, _, event = lines[3].split(",")
    lines[3] = f"{patient},{slide},99.5,{1 - int(event)}"
    csv.write_text("\n".join(lines) + "\n")

    assert _train(csv, feats, out) == 2
    err = capsys.readouterr().err
    assert f"slide '{slide}'" in err and "time" in err and "99.5" in err
    assert "--force" in err and "new --out" in err and "already done" not in err
    assert {p.name: p.read_text() for p in out.glob("fold_*.json")} == folds_before

    assert _train(csv, feats, out, "--force") == 0
    err = capsys.readouterr().err
    assert "removed the earlier run" in err and "already done" not in err
    recorded = json.loads((out / "inputs.json").read_text())["slides"][slide]
    assert recorded["time"] == 99.5 and recorded["event"] == 1 - int(event)
    # and the forced run is itself resumable
    assert _train(csv, feats, out) == 0
    assert "already done" in capsys.readouterr().err


def test_changed_feature_file_is_refused(finished_run, capsys):
    csv, feats, out = finished_run
    path = feats / "S1-0.h5"
    changed = load_features(path)
    changed.features[0, 0] += 1.0  # one number in one file
    save_features(path, changed)
    assert _train(csv, feats, out) == 2
    err = capsys.readouterr().err
    assert "'S1-0'" in err and "feature file" in err and "--force" in err


def test_dropped_slide_and_other_settings_are_refused(finished_run, capsys):
    csv, feats, out = finished_run
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    assert _train(csv, feats, out) == 2
    assert "no longer in the cohort" in capsys.readouterr().err
    csv.write_text("\n".join(lines) + "\n")
    assert _train(csv, feats, out, "--lr", "1e-3") == 2
    err = capsys.readouterr().err
    assert "lr differ" in err and "--force" in err
