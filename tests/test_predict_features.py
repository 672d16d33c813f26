"""Patch-only feature files: pooled regions in training and prediction, `predict FILE|FOLDER`."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch
from _single_thread import one_torch_thread  # noqa: F401

from napari_hila.cli import main
from napari_hila.errors import HilaError
from napari_hila.features.store import load_features
from napari_hila.survival.cohort_csv import read_cohort
from napari_hila.training.crossval import (
    RunSettings,
    load_cohort_features,
    region_level_warning,
    run_training,
)

DIM, TEXT_DIM, GRID = 6, 8, 20  # features, text width, patches per side (2 x 2 regions)
NOWHERE = "/nonexistent/slides/never-opened.svs"


def write_clam_h5(path, rng, hazard=0.0, patch_level=0, downsample=1.0):
    """A CLAM-layout file: `features` and `coords` (with CLAM's attributes) only."""
    cells = np.array([(x, y) for y in range(GRID) for x in range(GRID)], np.int64)
    keep = np.sort(rng.choice(len(cells), size=int(0.8 * len(cells)), replace=False))
    coords = cells[keep] * 256
    feats = rng.normal(size=(len(coords), DIM)).astype(np.float32)
    feats[:, 0] += 2 * hazard
    with h5py.File(path, "w") as h5:
        h5.create_dataset("features", data=feats)
        ds = h5.create_dataset("coords", data=coords)
        ds.attrs["patch_size"], ds.attrs["patch_level"] = 256, patch_level
        ds.attrs["downsample"] = np.array([downsample, downsample])
    return feats, coords


def fake_prompt_set(seed=0):
    gen = np.random.default_rng(seed)
    levels = {}
    for level, k in (("patch", 3), ("region", 2)):
        names = [f"{level} prompt {i}" for i in range(k)]
        levels[level] = {
            "names": names,
            "texts": [f"text of {n}" for n in names],
            "embeddings": gen.normal(size=(k, TEXT_DIM)).tolist(),
        }
    return {"name": "test", "text_encoder": "fake", "text_dim": TEXT_DIM, "levels": levels}


@pytest.fixture(scope="module")
def clam_cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clam")
    rng = np.random.default_rng(0)
    (folder / "feats").mkdir()
    rows = ["patient_id,slide_id,time,event"]
    for i in range(8):
        hazard = rng.normal()
        write_clam_h5(folder / "feats" / f"S{i}.h5", rng, hazard)
        rows.append(f"P{i},S{i},{rng.exponential(20 * np.exp(-hazard)):.3f},{int(i % 4 != 0)}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def hila_model(clam_cohort):
    """A tiny HiLa trained on the CLAM files (regions pooled by load_cohort_features)."""
    cohort = read_cohort(clam_cohort / "cohort.csv", clam_cohort / "feats")
    bags = load_cohort_features(cohort, clam_cohort / "feats")
    settings = RunSettings(
        model="hila",
        model_config={"hidden_dim": 16, "mcl_dim": 8, "mcl_queue_size": 8},
        folds=2,
        epochs=1,
        seed=0,
    )
    torch.manual_seed(0)
    run_training(
        cohort,
        bags,
        clam_cohort / "run",
        settings,
        prompt_set=fake_prompt_set(),
        show_progress=False,
        log=lambda m: None,
    )
    return clam_cohort / "run" / "final_model"


def test_clam_h5_trains_with_regions_pooled_in_16_patch_blocks(clam_cohort):
    cohort = read_cohort(clam_cohort / "cohort.csv", clam_cohort / "feats")
    bags = load_cohort_features(cohort, clam_cohort / "feats")
    bag = bags[0]
    raw = load_features(clam_cohort / "feats" / "S0.h5")
    assert raw.num_regions == 0  # the file has patches only
    assert bag.region_size == 4096 and bag.num_regions == 4
    block = bag.coords // 4096  # each patch's 16 x 16-patch block
    np.testing.assert_array_equal(bag.region_coords[bag.patch_to_region] // 4096, block)
    for r, corner in enumerate(bag.region_coords):
        inside = (block == corner // 4096).all(axis=1)
        np.testing.assert_array_equal(bag.patch_to_region == r, inside)
        np.testing.assert_allclose(
            bag.region_features[r], raw.features[inside].mean(axis=0), rtol=1e-5, atol=1e-6
        )
    assert bag.region_encoder == "mean(unknown)"
    assert region_level_warning("hila", {}, bags) is None


def test_clam_patch_level_and_mpp_size_the_regions(tmp_path):
    from napari_hila.features.pooling import ensure_regions, pooled_region_size

    rng = np.random.default_rng(1)
    write_clam_h5(tmp_path / "l1.h5", rng, patch_level=1, downsample=4.0)  # 256 px at level 1
    assert load_features(tmp_path / "l1.h5").patch_size == 1024
    write_clam_h5(tmp_path / "l0.h5", rng)
    with h5py.File(tmp_path / "trident.h5", "w") as h5:  # TRIDENT: the level-0 side itself
        h5.create_dataset("features", data=np.zeros((2, DIM), np.float32))
        ds = h5.create_dataset("coords", data=np.array([[0, 0], [448, 0]]))
        ds.attrs["patch_size"], ds.attrs["patch_size_level0"] = 224, 448
    assert load_features(tmp_path / "trident.h5").patch_size == 448
    # 512 level-0 px patches on a 0.25 um/px slide: a region (2048 um) is 16 of them
    assert pooled_region_size({"patch_size": 512, "mpp": 0.25}) == 8192
    # 256 px patches at level 0 of a 0.25 um/px slide: 32 patches make 2048 um
    assert pooled_region_size({"patch_size": 256, "mpp": 0.25}) == 8192
    assert pooled_region_size({"patch_size": 256}) == 4096  # patches taken at 0.5 um/px
    assert pooled_region_size({"mpp": 1.0}) == 2048
    assert pooled_region_size({"patch_size": 256}, region_px=1024, patch_px=256) == 1024
    feats = ensure_regions(load_features(tmp_path / "l0.h5"), region_px=1024)
    assert feats.region_size == 1024 and feats.num_regions == 25
    assert feats.attrs["region_px"] == 1024 and feats.attrs["patch_px"] == 256


def test_one_region_per_slide_is_reported_for_a_region_model(tmp_path):
    from napari_hila.features.pooling import ensure_regions

    lone = tmp_path / "lone.pt"
    torch.save(torch.zeros(20, DIM), lone)  # no coordinates: one whole-slide region
    bags = [ensure_regions(load_features(lone))]
    note = region_level_warning("hila", {}, bags)
    assert note and "one region" in note and "use_region_level=false" in note
    assert region_level_warning("hila", {"use_region_level": False}, bags) is None
    assert region_level_warning("hila-patch", {}, bags) is None
    assert region_level_warning("abmil", {}, bags) is None


def _no_slide_reads(monkeypatch):
    import napari_hila.export as export
    import napari_hila.slides as slides
    import napari_hila.slides.opener as opener

    def refuse(*args, **kwargs):
        raise AssertionError("a slide was opened")

    monkeypatch.setattr(slides, "open_slide", refuse)
    monkeypatch.setattr(opener, "open_slide", refuse)
    monkeypatch.setattr(export, "open_slide", refuse)  # the thumbnail's reader


def _point_nowhere(path):
    with h5py.File(path, "a") as h5:
        h5.attrs["slide_path"] = NOWHERE


def test_predict_file_matches_predict_slide_and_reads_no_pixels(
    hila_model, clam_cohort, tmp_path, monkeypatch, capsys
):
    import napari_hila.predict as predict

    file = tmp_path / "S1.h5"
    file.write_bytes((clam_cohort / "feats" / "S1.h5").read_bytes())
    _point_nowhere(file)
    _no_slide_reads(monkeypatch)
    out = tmp_path / "out"
    argv = ["predict", str(file), "--model", str(hila_model), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    saved = json.loads((out / "result.json").read_text())
    assert not (out / "thumbnail.png").exists() and not list(out.glob("heatmap_*.png"))
    for name in ("patches.geojson", "patch_scores.csv", "km.png", "contributions.png"):
        assert (out / name).stat().st_size > 0, name
    assert any("thumbnail.png" in w for w in saved["warnings"]) and "thumbnail.png" in err
    assert saved["slide"] == NOWHERE and saved["extra"]["regions"] == 4
    assert saved["extra"]["regions_pooled_from_patches"] is True
    assert {"risk", "contribution_method", "contributions"} <= set(saved)
    # predict_slide on the same features (its extraction stood in by the file) gives the same risk
    monkeypatch.setattr(predict, "features_for_model", lambda *a, **k: load_features(file))
    via_slide = predict.predict_slide(NOWHERE, hila_model, device="cpu")
    assert saved["risk"] == pytest.approx(via_slide.risk, rel=1e-6, abs=1e-9)
    assert via_slide.extra["regions"] == 4


def test_predict_folder_writes_one_folder_per_slide_and_a_table(
    hila_model, clam_cohort, tmp_path, monkeypatch, capsys
):
    from napari_hila.predict import predict_features

    folder = tmp_path / "feats"
    folder.mkdir()
    for i in (2, 3):
        target = folder / f"S{i}.h5"
        target.write_bytes((clam_cohort / "feats" / f"S{i}.h5").read_bytes())
        _point_nowhere(target)
    # CLAM's pt_files layout: the tensor, with its coordinates in a sibling .h5
    src = load_features(clam_cohort / "feats" / "S4.h5")
    torch.save(torch.from_numpy(src.features), folder / "S4.pt")
    with h5py.File(folder / "S4.h5", "w") as h5:
        h5.create_dataset("coords", data=src.coords).attrs["patch_size"] = 256
    (folder / "broken.h5").write_bytes(b"not hdf5 at all")
    _no_slide_reads(monkeypatch)
    out = tmp_path / "out"
    argv = ["predict", str(folder), "--model", str(hila_model), "--out", str(out)]
    assert main([*argv, "--device", "cpu"]) == 1  # one file failed; the others were predicted
    err = capsys.readouterr().err
    assert "broken.h5" in err and "failed" in err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["S2", "S3", "S4"]
    with open(out / "predictions.csv") as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == ["S2", "S3", "S4"]
    assert list(next(iter(rows.values()))) == ["slide", "risk", "group", "percentile"]
    for slide_id, row in rows.items():
        saved = json.loads((out / slide_id / "result.json").read_text())
        assert float(row["risk"]) == pytest.approx(saved["risk"], rel=1e-9)
        assert row["group"] == saved["risk_group"]
        assert float(row["percentile"]) == pytest.approx(saved["risk_percentile"])
        source = folder / ("S4.pt" if slide_id == "S4" else f"{slide_id}.h5")
        alone = predict_features(source, hila_model, device="cpu")
        assert float(row["risk"]) == pytest.approx(alone.risk, rel=1e-6, abs=1e-9)


def test_predict_argument_that_is_nothing_usable_is_one_clear_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.svs"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing.svs" in err and "\n" not in err
    (tmp_path / "notes.docx").write_text("hello")
    assert main(["predict", str(tmp_path / "notes.docx"), "--out", str(tmp_path / "o")]) == 2
    assert "feature file" in capsys.readouterr().err


def test_thread_setting_is_shared_by_train_predict_and_view():
    from napari_hila.cli import build_parser
    from napari_hila.devices import DEFAULT_TORCH_THREADS, configure_torch_threads

    parser = build_parser()
    for argv in (
        ["train", "--cohort", "c.csv", "--out", "o"],
        ["predict", "x.h5", "--out", "o"],
        ["view"],
    ):
        assert parser.parse_args(argv).threads == DEFAULT_TORCH_THREADS
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads(2) == 2
        assert configure_torch_threads(0) == 2  # 0: leave torch's setting alone
        assert configure_torch_threads(None) == DEFAULT_TORCH_THREADS
        with pytest.raises(HilaError, match="--threads"):
            configure_torch_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_a_worker_thread_reapplies_the_chosen_count():
    import threading

    from napari_hila.devices import apply_torch_threads, configure_torch_threads

    before = torch.get_num_threads()
    try:
        configure_torch_threads(1)
        torch.set_num_threads(2)  # changed behind the setting's back
        seen = []
        job = threading.Thread(target=lambda: seen.append(apply_torch_threads()))
        job.start()
        job.join()
        assert seen == [1]
    finally:
        torch.set_num_threads(before)
