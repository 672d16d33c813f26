"""CrossFusion: masking, explanations, training on a planted signal, model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _model_fixtures import one_torch_thread  # noqa: F401  (one torch thread: tiny models)
from lifelines.utils import concordance_index

from napari_hila.errors import FeatureFileError
from napari_hila.features.store import SlideFeatures
from napari_hila.models import build_model, collate, get_model_spec
from napari_hila.models.crossfusion import CrossFusion
from napari_hila.models.crossfusion_layers import SquareGrid

DIM = 8
SMALL = dict(patch_dim=DIM, width=32, heads=4, dropout=0.0)


def make_slide(
    rng: np.random.Generator, side: int, signal: float = 0.0, main_20x: bool = True
) -> SlideFeatures:
    """A ``side`` x ``side`` grid of 10x tiles (512 px), their 20x children and 5x parents.

    ``signal`` is the share of 20x tiles whose feature 0 is raised: only the
    fine scale carries it, so the model must use the fine cross-attention.
    """
    c10 = np.array([(x * 512, y * 512) for y in range(side) for x in range(side)], np.int64)
    c20 = np.concatenate([c10 + np.array(o) for o in [(0, 0), (256, 0), (0, 256), (256, 256)]])
    c5 = np.unique(c10 // 1024 * 1024, axis=0)

    def noise(n: int) -> np.ndarray:
        return rng.normal(size=(n, DIM)).astype(np.float32)

    f20 = noise(len(c20))
    marked = rng.random(len(c20)) < signal
    f20[marked, 0] += 3.0
    scales = {"5x": (noise(len(c5)), c5), "10x": (noise(len(c10)), c10)}
    if not main_20x:
        scales["20x"] = (f20, c20)
        f20, c20 = noise(3), np.zeros((3, 2), np.int64)
    empty = np.zeros((0, DIM), np.float32)
    return SlideFeatures(
        f20, c20, empty, np.zeros((0, 2), np.int64), np.full(len(c20), -1), scales=scales
    )


def test_registered_as_multiscale():
    spec = get_model_spec("crossfusion")
    assert spec.inputs == "multiscale"
    assert spec.make_config().nll_alpha == pytest.approx(0.2)
    assert spec.make_config().width == 512


def test_padding_does_not_change_the_output():
    rng = np.random.default_rng(0)
    small, large = make_slide(rng, 3), make_slide(rng, 7)  # squares of side 3 and 7
    torch.manual_seed(0)
    model = build_model("crossfusion", **SMALL).eval()
    with torch.no_grad():
        alone = model(collate([small]))
        padded = model(collate([large, small]))
        large_alone = model(collate([large]))
    torch.testing.assert_close(padded.logits[1], alone.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.logits[0], large_alone.logits[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone.logits, large_alone.logits)


def test_square_grid_places_each_slide_on_its_own_square():
    mask = torch.tensor([[True] * 5 + [False] * 5, [True] * 10])
    grid = SquareGrid(mask)
    assert grid.side == 4  # ceil(sqrt(10))
    # slide 0 (5 tokens, side 3): rows of 3 inside the 4 x 4 grid
    assert grid.index[0, :5].tolist() == [0, 1, 2, 4, 5]
    assert grid.index[1].tolist() == list(range(10))
    assert grid.mask.sum(1).tolist() == [5, 10]
    values = torch.arange(16.0).expand(2, 16)
    assert grid.gather(values)[0].tolist() == [0, 1, 2, 4, 5, 0, 0, 0, 0, 0]


def test_20x_scale_may_come_from_scales_or_patch_features():
    rng = np.random.default_rng(1)
    a = make_slide(rng, 4)
    b = SlideFeatures(
        np.zeros((3, DIM), np.float32),
        np.zeros((3, 2), np.int64),
        a.region_features,
        a.region_coords,
        np.full(3, -1),
        scales={**a.scales, "20x": (a.features, a.coords)},
    )
    model = build_model("crossfusion", **SMALL).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(collate([a])).logits, model(collate([b])).logits)


def test_missing_scale_is_a_clear_error():
    rng = np.random.default_rng(2)
    slide = make_slide(rng, 3)
    del slide.scales["5x"]
    model = build_model("crossfusion", **SMALL)
    with pytest.raises(FeatureFileError, match="5x.*multi-magnification"):
        model(collate([slide]))
    wrong = make_slide(rng, 3)
    with pytest.raises(FeatureFileError, match="width 8 .* expects 16"):
        build_model("crossfusion", **{**SMALL, "patch_dim": 16})(collate([wrong]))


def test_explanation_levels_and_normalisation():
    rng = np.random.default_rng(3)
    slide = make_slide(rng, 5)
    model = build_model("crossfusion", **SMALL).eval()
    batch = collate([slide])
    exp = model.explain(batch)
    with torch.no_grad():
        out = model(batch)
    assert exp.risk == pytest.approx(float(out.risk[0]), abs=1e-6)
    np.testing.assert_allclose(exp.survival, out.survival[0].numpy(), atol=1e-6)
    expected = {
        "5x": (slide.scales["5x"][1], 1024),
        "10x": (slide.scales["10x"][1], 512),
        "20x": (slide.coords, 256),
    }
    assert set(exp.levels) == set(expected)
    for name, (coords, size) in expected.items():
        level = exp.levels[name]
        np.testing.assert_array_equal(level.coords, coords)
        assert level.tile_size == size
        assert (
            level.maps.shape
            == (len(coords), len(level.map_names))
            == (len(coords), len(level.map_texts))
        )
        # each map relative to a uniform share: a distribution times the tile count
        np.testing.assert_allclose(level.maps.mean(axis=0), 1.0, atol=1e-5)
        assert (level.maps >= 0).all()
        np.testing.assert_allclose(level.scores * len(coords), level.maps[:, 0], rtol=1e-5)
        assert level.scores.sum() == pytest.approx(1.0, abs=1e-5)
        assert level.selected.sum() == int(np.ceil(0.1 * len(coords)))
        assert level.scores[level.selected].min() >= level.scores[~level.selected].max()
    # the rolled-out 20x map is the class attention pushed through the fine cross-attention
    with torch.no_grad():
        q, _ = model._embed(batch, "10x")
        f, fm = model._embed(batch, "20x")
        attn = model.fine_cross.attn.weights(q, f, fm)[0].numpy()
    rollout = exp.levels["10x"].scores @ attn
    np.testing.assert_allclose(exp.levels["20x"].scores, rollout / rollout.sum(), atol=1e-5)
    given = model.explain(batch, tile_sizes={"patch": 512, "5x": 2048})
    assert given.levels["20x"].tile_size == 512 and given.levels["5x"].tile_size == 2048


def planted_cohort(n: int, seed: int):
    """Patients whose 20x signal share sets the hazard; 75 % events."""
    rng = np.random.default_rng(seed)
    share = rng.uniform(0.0, 0.8, n)
    time = rng.exponential(1.0 / np.exp(4.0 * share)) * 30 + 1
    event = (rng.random(n) < 0.75).astype(int)
    slides = [make_slide(rng, int(rng.integers(3, 6)), s) for s in share]
    return slides, time, event


def test_trains_on_a_planted_signal_with_the_generic_trainer():
    from napari_hila.survival.losses import make_time_bins, time_to_bin
    from napari_hila.training.trainer import FitSettings, fit_model, slide_risks

    slides, time, event = planted_cohort(40, seed=4)
    edges = make_time_bins(time[:30], event[:30])
    torch.manual_seed(0)
    model = build_model("crossfusion", **SMALL)
    settings = FitSettings(epochs=12, lr=1e-3, batch_size=4, show_progress=False)
    losses = fit_model(model, slides[:30], time_to_bin(time[:30], edges), event[:30], settings)
    assert losses[-1] < 0.8 * losses[0]
    risk = slide_risks(model, slides)
    # lifelines wants higher score = longer survival: pass -risk
    train_c = concordance_index(time[:30], -risk[:30], event[:30])
    test_c = concordance_index(time[30:], -risk[30:], event[30:])
    assert train_c > 0.75
    assert test_c > 0.6


def test_model_file_round_trip(tmp_path):
    from napari_hila.modelfile import config_to_dict, load_model, save_model

    rng = np.random.default_rng(5)
    batch = collate([make_slide(rng, 4)])
    model = build_model("crossfusion", **SMALL).eval()
    save_model(
        tmp_path / "m", model, {"model": "crossfusion", "config": config_to_dict(model.config)}
    )
    loaded = load_model(tmp_path / "m", device="cpu").model
    assert isinstance(loaded, CrossFusion)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, model(batch).logits)


def test_explanation_survives_the_result_file(tmp_path):
    from napari_hila.results import PredictionResult

    rng = np.random.default_rng(6)
    model = build_model("crossfusion", **SMALL).eval()
    exp = model.explain(collate([make_slide(rng, 4)]))
    result = PredictionResult(
        "slide.svs",
        "fp",
        0.5,
        "crossfusion",
        "CrossFusion test",
        "m",
        exp,
        np.array([0, 1, 2, 3, np.inf]),
    )
    result.save(tmp_path)
    back = PredictionResult.load(tmp_path).explanation
    assert set(back.levels) == {"5x", "10x", "20x"}
    for name, level in exp.levels.items():
        np.testing.assert_array_equal(back.levels[name].maps, level.maps)
        np.testing.assert_array_equal(back.levels[name].coords, level.coords)
        assert back.levels[name].map_texts == level.map_texts


def test_train_command_names_the_feature_file_without_magnifications(tmp_path):
    import argparse

    from napari_hila.commands import train
    from napari_hila.features.store import save_features

    rng = np.random.default_rng(7)
    (tmp_path / "feats").mkdir()
    for i in range(2):
        slide = make_slide(rng, 3)
        if i == 1:
            slide.scales = {}
        save_features(tmp_path / "feats" / f"s{i}.h5", slide)
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("patient_id,slide_id,time,event\np0,s0,3,1\np1,s1,5,0\n")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(
        ["--model", "crossfusion", "--cohort", str(cohort), "--features", str(tmp_path / "feats")]
        + ["--out", str(tmp_path / "run")]
    )
    with pytest.raises(FeatureFileError, match=r"s1\.h5: no extra magnifications \(1 of 2"):
        train.run(args)
