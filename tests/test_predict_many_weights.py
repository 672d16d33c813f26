"""`predict FOLDER --weights`: many slides use the given encoder weights, as one slide does."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
from _single_thread import one_torch_thread  # noqa: F401
from test_encoders_weights import TINY

from napari_hila.cli import main
from napari_hila.encoders.vit import VisionTransformer
from napari_hila.features.extract import extract_slide
from napari_hila.survival.cohort_csv import read_cohort
from napari_hila.training.crossval import RunSettings, load_cohort_features, run_training

GRID = {"patch_px": 64, "region_px": 128, "region_mode": "mean", "device": "cpu"}


def _uni_weights(path, seed: int) -> None:
    """A tiny timm-layout ViT ("uni") with random weights, as safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = VisionTransformer(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (path.parent / "config.json").write_text(json.dumps({"heads": 2}))


@pytest.fixture(scope="module")
def uni_run(tmp_path_factory):
    """Four slides, their uni features, and a tiny ABMIL trained on them."""
    root = tmp_path_factory.mktemp("uni-many")
    (root / "w").mkdir()
    weights = root / "w" / "uni.safetensors"
    _uni_weights(weights, seed=0)
    (root / "slides").mkdir()
    rng = np.random.default_rng(0)
    rows = ["patient_id,slide_id,time,event"]
    for i in range(4):
        tissue = rng.integers(90, 200, (256, 256, 3), dtype=np.uint8)
        tissue[..., 0] = 200 + 10 * i  # pinkish, not background
        path = root / "slides" / f"S{i}.tif"
        tifffile.imwrite(
            path, tissue, tile=(64, 64), resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
        )
        extract_slide(path, root / "feats", encoder="uni", weights=weights, **GRID)
        rows.append(f"P{i},S{i},{5.0 + 3 * i},{int(i != 1)}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    cohort = read_cohort(root / "cohort.csv", root / "feats")
    bags = load_cohort_features(cohort, root / "feats")
    settings = RunSettings(model="abmil", folds=2, epochs=1, seed=0)
    run_training(cohort, bags, root / "run", settings, show_progress=False, log=lambda m: None)
    return {"root": root, "weights": weights, "model": root / "run" / "final_model"}


def _predict(*argv) -> int:
    return main(["predict", *map(str, argv), "--device", "cpu", "--threads", "1"])


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_folder_prediction_uses_the_weights_flag(uni_run, tmp_path, monkeypatch, capsys):
    root, weights, model = uni_run["root"], uni_run["weights"], uni_run["model"]
    (tmp_path / "empty.yaml").write_text("{}\n")
    monkeypatch.setenv("NAPARI_HILA_ENCODERS", str(tmp_path / "empty.yaml"))  # no config entry
    card = json.loads((model / "card.json").read_text())
    digest = card["encoders"]["patch"]["version"]
    assert card["encoders"]["patch"]["name"] == "uni" and digest.startswith("sha256:")
    slides = root / "slides"

    # a fresh cache and no weights anywhere: every slide fails, naming the flag
    out = tmp_path / "none"
    assert _predict(slides, "--model", model, "--out", out, "--cache", tmp_path / "c0") == 1
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["failed"] * 4
    assert all("--weights" in r["error"] for r in rows)
    capsys.readouterr()

    # --weights: every slide is extracted with them; the risks equal one-slide predictions
    out = tmp_path / "many"
    argv = ["--model", model, "--weights", weights]
    assert _predict(slides, *argv, "--out", out, "--cache", tmp_path / "c1") == 0
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["done"] * 4
    assert len(list((tmp_path / "c1").glob("S*-*.h5"))) == 4  # extracted, not found elsewhere
    many = {r["slide"]: float(r["risk"]) for r in _rows(out / "predictions.csv")}
    one = tmp_path / "one"
    assert _predict(slides / "S2.tif", *argv, "--out", one, "--cache", tmp_path / "c2") == 0
    single = json.loads((one / "result.json").read_text())["risk"]
    assert many["S2"] == pytest.approx(single, rel=1e-6)
    assert len(set(np.round(list(many.values()), 6))) > 1  # the slides differ
    capsys.readouterr()

    # other weights of the same encoder: each slide refused, both digests named
    (tmp_path / "w2").mkdir()
    other = tmp_path / "w2" / "uni.safetensors"
    _uni_weights(other, seed=1)
    out = tmp_path / "other"
    code = _predict(
        slides, "--model", model, "--weights", other, "--out", out, "--cache", tmp_path / "c3"
    )
    rows = _rows(out / "summary.csv")
    assert code == 1 and [r["status"] for r in rows] == ["failed"] * 4
    assert all(digest in r["error"] and str(other) in r["error"] for r in rows)
