"""A tiny end-to-end training run on synthetic feature files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _single_thread import one_torch_thread  # noqa: F401

from napari_hila.errors import FeatureFileError, HilaError
from napari_hila.features.store import SlideFeatures, save_features
from napari_hila.modelfile import load_model
from napari_hila.survival.cohort_csv import read_cohort
from napari_hila.training.crossval import RunSettings, load_cohort_features, run_training


def write_synthetic_cohort(folder, n_patients=14, dim=6, seed=0, encoder="fake-encoder"):
    """Feature files whose first feature carries the hazard; some patients have two slides."""
    rng = np.random.default_rng(seed)
    rows = ["patient_id,slide_id,time,event"]
    for i in range(n_patients):
        hazard = rng.normal()
        time = rng.exponential(20 * np.exp(-hazard))
        event = int(rng.random() < 0.75)
        for s in range(2 if i % 4 == 0 else 1):
            m = int(rng.integers(12, 24))
            feats = rng.normal(size=(m, dim)).astype(np.float32)
            feats[:, 0] += 2 * hazard
            coords = np.stack([np.arange(m) % 4 * 256, np.arange(m) // 4 * 256], 1)
            save_features(
                folder / "feats" / f"S{i}-{s}.h5",
                SlideFeatures(
                    feats,
                    coords,
                    rng.normal(size=(2, dim)).astype(np.float32),
                    np.array([[0, 0], [0, 1024]]),
                    (coords[:, 1] >= 1024).astype(np.int64),
                    attrs={"encoder": encoder, "region_encoder": encoder, "patch_px": 256},
                ),
            )
            rows.append(f"P{i},S{i}-{s},{time:.3f},{event}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv", folder / "feats"


@pytest.fixture
def tiny_cohort(tmp_path):
    csv, feats = write_synthetic_cohort(tmp_path)
    cohort = read_cohort(csv, feats)
    return cohort, load_cohort_features(cohort, feats)


def test_tiny_run_writes_metrics_splits_and_final_model(tiny_cohort, tmp_path):
    cohort, bags = tiny_cohort
    run_dir = tmp_path / "run"
    settings = RunSettings(model="abmil", folds=2, epochs=2, seed=1)
    metrics = run_training(cohort, bags, run_dir, settings, show_progress=False, log=lambda m: None)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["c_index_per_fold"] == metrics["c_index_per_fold"]
    assert len(saved["c_index_per_fold"]) == 2
    assert saved["c_index_mean"] == pytest.approx(np.mean(saved["c_index_per_fold"]))
    assert saved["c_index_std"] == pytest.approx(np.std(saved["c_index_per_fold"], ddof=1))
    assert 0.0 <= saved["logrank_p"] <= 1.0
    assert "mean of the risks" in saved["patient_risk"]
    splits = json.loads((run_dir / "splits.json").read_text())
    tested = [p for f in splits["folds"] for p in f["test"]]
    assert sorted(tested) == sorted(cohort.patient_ids)
    loaded = load_model(run_dir / "final_model", "cpu")
    card = loaded.card
    assert card["model"] == "abmil" and card["config"]["patch_dim"] == 6
    assert card["encoders"]["patch"] == {"name": "fake-encoder", "version": "", "dim": 6}
    assert len(card["cohort"]["risk"]) == len(cohort.patient_ids)
    assert card["risk_threshold"] == pytest.approx(np.median(card["cohort"]["final_model_risk"]))
    assert card["time_bin_edges"][0] == 0.0 and card["time_bin_edges"][-1] is None
    # The per-fold C-index in the metrics is recomputable from the fold files.
    from napari_hila.survival.metrics import concordance_index

    fold0 = json.loads((run_dir / "fold_0.json").read_text())
    t = {p: tt for p, tt in zip(cohort.patient_ids, cohort.patient_times, strict=True)}
    e = {p: ee for p, ee in zip(cohort.patient_ids, cohort.patient_events, strict=True)}
    ids = fold0["test_patients"]
    assert fold0["c_index"] == pytest.approx(
        concordance_index([t[p] for p in ids], [e[p] for p in ids], fold0["test_risk"])
    )


def test_interrupted_run_resumes_completed_folds(tiny_cohort, tmp_path, monkeypatch):
    cohort, bags = tiny_cohort
    run_dir = tmp_path / "run"
    settings = RunSettings(model="abmil", folds=2, epochs=1, seed=0, train_final=False)
    from napari_hila.training import crossval

    calls = []
    real = crossval.fit_model

    def failing_second_fold(*args, **kwargs):
        calls.append(kwargs.get("desc", args[-1] if args else ""))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(crossval, "fit_model", failing_second_fold)
    with pytest.raises(KeyboardInterrupt):
        run_training(cohort, bags, run_dir, settings, show_progress=False, log=lambda m: None)
    assert (run_dir / "fold_0.json").exists() and not (run_dir / "fold_1.json").exists()
    first = json.loads((run_dir / "fold_0.json").read_text())
    calls.clear()
    monkeypatch.setattr(crossval, "fit_model", real)
    messages = []
    run_training(cohort, bags, run_dir, settings, show_progress=False, log=messages.append)
    assert any("fold 1/2: already done" in m for m in messages)
    assert json.loads((run_dir / "fold_0.json").read_text()) == first
    assert (run_dir / "metrics.json").exists()
    # Resuming with other settings is refused rather than mixing two runs.
    with pytest.raises(HilaError, match="epochs"):
        run_training(
            cohort,
            bags,
            run_dir,
            RunSettings(model="abmil", folds=2, epochs=3),
            show_progress=False,
        )


def test_same_seed_same_results(tiny_cohort, tmp_path):
    cohort, bags = tiny_cohort
    settings = RunSettings(model="abmil", folds=2, epochs=1, seed=4, train_final=False)
    a = run_training(
        cohort, bags, tmp_path / "a", settings, show_progress=False, log=lambda m: None
    )
    b = run_training(
        cohort, bags, tmp_path / "b", settings, show_progress=False, log=lambda m: None
    )
    assert a["c_index_per_fold"] == b["c_index_per_fold"]


def test_mixed_encoders_refused(tmp_path):
    csv, feats = write_synthetic_cohort(tmp_path, n_patients=4)
    other = write_synthetic_cohort(tmp_path / "other", n_patients=1, encoder="other-encoder")[1]
    (other / "S0-0.h5").replace(feats / "S1-0.h5")
    cohort = read_cohort(csv, feats)
    with pytest.raises(FeatureFileError, match="other-encoder.*fake-encoder"):
        load_cohort_features(cohort, feats)


def test_prompt_model_gets_embeddings_and_card_keeps_prompts(tiny_cohort, tmp_path):
    """A model that uses prompts (hila) trains through the generic hook."""
    cohort, bags = tiny_cohort
    rng = np.random.default_rng(0)
    levels = {
        level: {
            "names": [f"{level} a", f"{level} b"],
            "texts": [f"text of {level} a", f"text of {level} b"],
            "embeddings": rng.normal(size=(2, 16)).tolist(),
        }
        for level in ("patch", "region")
    }
    prompt_set = {"name": "test", "text_encoder": "random", "text_dim": 16, "levels": levels}
    settings = RunSettings(model="hila", folds=2, epochs=1, batch_size=4)
    run_training(
        cohort, bags, tmp_path / "h", settings, prompt_set, show_progress=False, log=lambda m: None
    )
    loaded = load_model(tmp_path / "h" / "final_model", "cpu")
    card = loaded.card
    assert card["config"]["text_dim"] == 16 and card["config"]["region_dim"] == 6
    assert card["prompts"]["patch"]["names"] == ["patch a", "patch b"]
    np.testing.assert_allclose(
        loaded.model.prompt_embeddings_patch.numpy(), levels["patch"]["embeddings"], rtol=1e-6
    )
    assert len(card["feature_scaling"]["patch"]["mean"]) == 6


@pytest.mark.parametrize("model_name", ["abmil", "hila"])
def test_fold_interrupted_mid_training_resumes_to_the_same_model(tiny_cohort, tmp_path, model_name):
    """Epoch checkpoints: stopping after epoch 2 of 3 and resuming equals not stopping."""
    import torch

    from napari_hila.models.registry import build_model
    from napari_hila.training.trainer import FitSettings, fit_model, install_prompt_embeddings

    _, bags = tiny_cohort
    rng = np.random.default_rng(0)
    bins, events = rng.integers(0, 2, len(bags)), rng.integers(0, 2, len(bags))
    levels = {
        lv: {
            "names": ["a", "b"],
            "texts": ["a", "b"],
            "embeddings": rng.normal(size=(2, 8)).tolist(),
        }
        for lv in ("patch", "region")
    }
    prompts = {"text_dim": 8, "levels": levels}

    def fresh():
        torch.manual_seed(0)
        values = dict(patch_dim=6, n_bins=2)
        if model_name == "hila":
            values.update(
                region_dim=6,
                text_dim=8,
                patch_prompt_names=["a", "b"],
                patch_prompt_texts=["a", "b"],
            )
            values.update(region_prompt_names=["a", "b"], region_prompt_texts=["a", "b"])
        model = build_model(model_name, **values)
        install_prompt_embeddings(model, prompts)
        return model

    settings = FitSettings(epochs=3, seed=5, show_progress=False)
    whole = fresh()
    expected = fit_model(whole, bags, bins, events, settings)

    def stop_after_two(epoch, loss):
        if epoch == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "fold.checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        fit_model(fresh(), bags, bins, events, settings, on_epoch=stop_after_two, checkpoint=ckpt)
    assert ckpt.exists()
    resumed = fresh()
    ran = []
    losses = fit_model(
        resumed,
        bags,
        bins,
        events,
        settings,
        checkpoint=ckpt,
        on_epoch=lambda e, _loss: ran.append(e),
    )
    assert ran == [2]  # only the third epoch ran again
    assert losses == pytest.approx(expected, rel=1e-6)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
