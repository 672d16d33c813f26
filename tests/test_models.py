"""Model behaviour: masking, invariances, gradients, switches, explanations."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _model_fixtures import (  # noqa: F401
    ALL_MODELS,
    PATCH_DIM,
    PROMPT_MODELS,
    TEXT_DIM,
    make_model,
    make_slide,
    one_torch_thread,
)

import napari_hila
from napari_hila.models import available_models, build_model, collate, get_model_spec
from napari_hila.models.hila import HiLa


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_registry_lists_every_variant():
    assert set(ALL_MODELS) <= set(available_models())
    assert get_model_spec("hila-no-clp").make_config().use_clp is False
    assert get_model_spec("vl-cosine").make_config().alignment == "cosine"
    for name in ALL_MODELS:
        assert get_model_spec(name).inputs == "features"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_batched_equals_one_slide_at_a_time(name, rng):
    slides = [make_slide(rng, 37, 5), make_slide(rng, 9, 2), make_slide(rng, 20, 3)]
    model = make_model(name).eval()
    batch = collate(slides)
    # Junk in the padding must not change anything.
    batch.patch_features[~batch.patch_mask] = 1e3
    batch.region_features[~batch.region_mask] = -1e3
    with torch.no_grad():
        together = model(batch)
        for b, slide in enumerate(slides):
            alone = model(collate([slide]))
            torch.testing.assert_close(together.risk[b], alone.risk[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together.hazards[b], alone.hazards[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["hila", "hila-patch", "vl-cosine", "abmil"])
def test_risk_is_invariant_to_token_order(name, rng):
    slide = make_slide(rng, 60, 6)
    patch_order = rng.permutation(60)
    region_order = rng.permutation(6)
    new_index_of_region = np.argsort(region_order)
    shuffled = make_slide(rng, 1, 1)
    shuffled.features = slide.features[patch_order]
    shuffled.coords = slide.coords[patch_order]
    shuffled.region_features = slide.region_features[region_order]
    shuffled.region_coords = slide.region_coords[region_order]
    shuffled.patch_to_region = new_index_of_region[slide.patch_to_region[patch_order]]
    model = make_model(name).eval()
    with torch.no_grad():
        a = model(collate([slide])).risk
        b = model(collate([shuffled])).risk
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_gradients_reach_every_parameter_and_no_frozen_input(name, rng):
    # Slide 2 has no regions, slide 3 regions no selected patch lies in and
    # slide 4 no patches, so the learned fallback tokens are used too.
    slides = [make_slide(rng, 30, 4), make_slide(rng, 12, 0), make_slide(rng, 8, 3)]
    slides.append(make_slide(rng, 0, 2))
    slides[2].patch_to_region[:] = 0
    model = make_model(name, min_selected=1) if name in PROMPT_MODELS else make_model(name)
    model.train()
    batch = collate(slides)
    batch.patch_features.requires_grad_(True)
    for _ in range(2):  # the second step has MCL negatives in the queue
        model.zero_grad()
        out = model(batch)
        (out.risk.sum() + out.aux_loss).backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []
    for name_, buffer in model.named_buffers():
        assert not buffer.requires_grad, name_
    # The features are an input the model must not alter (no in-place use).
    assert batch.patch_features.grad is not None and torch.isfinite(batch.patch_features.grad).all()


def test_same_seed_same_model_and_output(rng):
    batch = collate([make_slide(rng, 25, 3)])
    a, b = make_model("hila", seed=3), make_model("hila", seed=3)
    a.train(), b.train()
    torch.manual_seed(9)
    out_a = a(batch)
    torch.manual_seed(9)
    out_b = b(batch)
    torch.testing.assert_close(out_a.logits, out_b.logits, rtol=0, atol=0)
    torch.testing.assert_close(out_a.aux_loss, out_b.aux_loss, rtol=0, atol=0)


def test_clp_and_mcl_switch_off_cleanly(rng):
    batch = collate([make_slide(rng, 30, 4), make_slide(rng, 20, 3)])
    full = make_model("hila").train()
    no_clp = make_model("hila-no-clp").train()
    no_penalty = {
        "prompt_anchor_weight": 0.0,
        "patch_prompt_ridge": 0.0,
        "region_prompt_ridge": 0.0,
    }
    no_mcl = make_model("hila-no-mcl", **no_penalty).train()
    patch_only = make_model("hila-patch", **no_penalty).train()
    assert no_clp.clp is None and not any("clp" in n for n, _ in no_clp.named_parameters())
    assert no_mcl.mcl is None and not any("mcl" in n for n, _ in no_mcl.named_parameters())
    assert patch_only.clp is None and patch_only.mcl is None and "region" not in patch_only.text
    assert float(no_mcl(batch).aux_loss) == 0.0 and float(patch_only(batch).aux_loss) == 0.0
    full(batch)  # fills the queue
    assert float(full(batch).aux_loss.detach()) > 0.0
    assert int(full.mcl.queue_filled) == 4
    # Inference neither uses nor updates the queues.
    full.eval()
    queue = full.mcl.queue_patch.clone()
    assert float(full(batch).aux_loss) == 0.0
    assert torch.equal(queue, full.mcl.queue_patch)
    # Without CLP the region tokens are the projection alone: changing the
    # patches leaves the region plan unchanged.
    no_clp.eval()
    changed = collate([make_slide(np.random.default_rng(5), 30, 4), make_slide(rng, 20, 3)])
    changed.region_features = batch.region_features
    changed.region_mask = batch.region_mask
    with torch.no_grad():
        plan_a = no_clp(batch).details["levels"]["region"].plan
        plan_b = no_clp(changed).details["levels"]["region"].plan
    torch.testing.assert_close(plan_a, plan_b)


def test_mcl_queue_wraps_around(rng):
    model = make_model("hila", mcl_queue_size=5).train()
    batch = collate([make_slide(rng, 10, 2) for _ in range(3)])
    for _ in range(3):
        model(batch)
    assert int(model.mcl.queue_filled) == 5 and int(model.mcl.queue_next) == 9 % 5


@pytest.mark.parametrize("name", PROMPT_MODELS)
def test_explanation_maps_are_the_plan_relative_to_a_uniform_share(name, rng):
    slide = make_slide(rng, 47, 5)
    model = make_model(name).train()
    exp = model.explain(collate([slide]), tile_sizes={"patch": 256, "region": 1024})
    assert model.training  # mode restored
    config = model.config
    levels = ("patch", "region") if config.use_region_level else ("patch",)
    assert tuple(exp.levels) == levels
    for level in levels:
        lv = exp.levels[level]
        n = 47 if level == "patch" else 5
        k = len(model.prompt_names(level))
        assert lv.maps.shape == (n, k) and lv.coords.shape == (n, 2) and lv.scores.shape == (n,)
        assert lv.map_names == model.prompt_names(level)
        assert lv.map_texts == model.prompt_texts(level)
        # Maps are M K P*: each token's share relative to a uniform one.
        plan = lv.maps / (n * k)
        if config.alignment == "ot":  # softmax attention has no row marginal
            np.testing.assert_allclose(plan.sum(axis=1), 1.0 / n, rtol=1e-3)
            np.testing.assert_allclose(lv.maps.mean(axis=1), 1.0, rtol=1e-3)
        # Rows exact, columns within the Sinkhorn tolerance (L2), exact for softmax.
        assert np.linalg.norm(plan.sum(axis=0) - 1.0 / k) < config.sinkhorn_tol
        expected = min(n, max(math.ceil(round(config.select_ratio * n, 9)), config.min_selected))
        assert int(lv.selected.sum()) == expected
        # Selected tokens are those with the highest alignment scores.
        assert lv.scores[lv.selected].min() >= lv.scores[~lv.selected].max(initial=-np.inf)
    patch = exp.levels["patch"]
    assert patch.tile_size == 256 and np.array_equal(patch.parent, slide.patch_to_region)
    np.testing.assert_array_equal(patch.coords, slide.coords)
    if "region" in exp.levels:
        assert exp.levels["region"].tile_size == 1024 and exp.levels["region"].parent is None
    n_prompts = sum(len(model.prompt_names(lv)) for lv in levels)
    assert len(exp.contributions) == n_prompts
    with torch.no_grad():
        risk = float(model.eval()(collate([slide])).risk[0])
    assert exp.risk == pytest.approx(risk, abs=1e-6)
    assert np.all(np.diff(exp.survival) <= 0) and exp.hazards.shape == (config.n_bins,)


def test_contributions_add_up_to_risk_minus_baseline(rng):
    """Completeness, against a baseline fitted on a cohort, and a floor from resampling."""
    cohort = [collate([make_slide(rng, 25 + 3 * i, 4)]) for i in range(6)]
    model = make_model("hila").eval()
    baseline = model.fit_explanation_baseline(cohort)
    assert baseline == pytest.approx(model.baseline_risk())
    for batch in cohort[:3]:
        exp = model.explain(batch, resamples=6)
        total = sum(c.delta_risk for c in exp.contributions)
        assert exp.baseline_risk == pytest.approx(baseline)
        assert total == pytest.approx(exp.risk - baseline, abs=1e-5)
        assert all(c.noise_floor is not None and c.noise_floor >= 0 for c in exp.contributions)
        assert all(c.negligible == (abs(c.delta_risk) < c.noise_floor) for c in exp.contributions)
    # The cohort's mean terms give its mean linear predictor: contributions average out.
    mean_total = np.mean(
        [sum(c.delta_risk for c in model.explain(b, resamples=0).contributions) for b in cohort]
    )
    assert abs(mean_total) < np.std([model.explain(b, resamples=0).risk for b in cohort])
    assert "risk - baseline_risk" in exp.contribution_method


def test_a_prompt_term_moves_only_its_own_contribution(rng):
    """Each prompt reaches the risk on its own path: zeroing one prompt's head weights
    zeroes that prompt's contribution and leaves the others' ordering to the rest."""
    batch = collate([make_slide(rng, 30, 4)])
    model = make_model("hila", prompt_feature_term=True).eval()
    model.fit_explanation_baseline([batch, collate([make_slide(rng, 20, 3)])])
    with torch.no_grad():
        head = model.heads["patch"]
        for weights in (head.weight, head.presence_weight, head.similarity_weight, head.bias):
            weights[0] = 0.0
    model.fit_explanation_baseline([batch, collate([make_slide(rng, 20, 3)])])
    exp = model.explain(batch, resamples=0)
    assert exp.contributions[0].name == model.prompt_names("patch")[0]
    assert exp.contributions[0].delta_risk == pytest.approx(0.0, abs=1e-7)
    assert max(abs(c.delta_risk) for c in exp.contributions[1:]) > 1e-4


def test_older_mean_head_keeps_leave_one_out_with_a_note(rng):
    batch = collate([make_slide(rng, 30, 4)])
    model = make_model("hila", head="mean").eval()
    exp = model.explain(batch)
    with torch.no_grad():
        levels = model(batch).details["levels"]
        z_patch, z_region = levels["patch"].features[0], levels["region"].features[0]
        others = torch.cat([z_patch[1:]]).mean(0)
        logits = model.fusion(torch.cat([others, z_region.mean(0)])[None])
        survival = torch.cumprod(1 - torch.sigmoid(logits), dim=-1)
        risk_without_first = float(-survival.sum())
    assert exp.contributions[0].name == model.prompt_names("patch")[0]
    assert exp.contributions[0].delta_risk == pytest.approx(exp.risk - risk_without_first, abs=1e-6)
    assert "leave-one-out" in exp.contribution_method and exp.baseline_risk is None
    assert any("retrain" in note for note in exp.notes)


def test_collapsed_prompts_are_reported(rng):
    model = make_model("hila-patch").eval()
    stats = model.prompt_statistics()["patch"]
    assert stats["mean_pairwise_cosine"] < 0.9 and model.collapsed_levels() == []
    same = np.tile(np.random.default_rng(0).normal(size=(1, 8)), (4, 1))
    model.set_prompt_embeddings("patch", same)
    assert model.prompt_statistics()["patch"]["mean_pairwise_cosine"] > 0.99
    assert model.collapsed_levels() == ["patch"]
    exp = model.explain(collate([make_slide(rng, 20, 2)]), resamples=0)
    assert any("collapsed" in note for note in exp.notes)


def shared_model(**settings):
    torch.manual_seed(0)
    model = build_model("hila", patch_dim=8, region_dim=8, text_dim=8, hidden_dim=16, **settings)
    gen = np.random.default_rng(3)
    for level in model.prompt_levels():
        model.set_prompt_embeddings(level, gen.normal(size=(len(model.prompt_names(level)), 8)))
    return model.eval()


def test_shared_space_starts_from_the_spaces_own_similarity(rng):
    """With features and prompts from one space, S = cos(x, e) before any training."""
    slide = make_slide(rng, 40, 4)
    slide.region_features = rng.normal(size=(4, 8)).astype(np.float32)
    slide.features = slide.features[:, :8]
    model = shared_model(shared_space=True)
    with torch.no_grad():
        align = model(collate([slide])).details["levels"]["patch"]
    x = torch.nn.functional.normalize(torch.as_tensor(slide.features), dim=-1)
    e = torch.nn.functional.normalize(model.prompt_embeddings_patch, dim=-1)
    torch.testing.assert_close(align.similarity[0], x @ e.T, atol=1e-5, rtol=0)
    other = shared_model(shared_space=False)
    with torch.no_grad():
        unrelated = other(collate([slide])).details["levels"]["patch"].similarity[0]
    assert (unrelated - x @ e.T).abs().max() > 0.1  # a random start does not have it


def test_anchor_keeps_prompts_apart_while_training(rng):
    """Training only the text side to one target drives prompts together without the anchor."""
    bags = [collate([make_slide(rng, 30, 3)]) for _ in range(2)]
    target = torch.nn.functional.normalize(torch.ones(16), dim=0)

    def train(weight: float) -> float:
        model = make_model("hila-patch", prompt_anchor_weight=weight).train()
        params = list(model.text.parameters()) + list(model.heads.parameters())
        optimiser = torch.optim.Adam(params, lr=0.05)
        for _ in range(40):
            for batch in bags:
                out = model(batch)
                # a pull every prompt can follow by pointing the same way
                unit = torch.nn.functional.normalize(model.prompt_features("patch"), dim=-1)
                loss = -(unit @ target).mean() + out.aux_loss
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        return model.prompt_statistics()["patch"]["mean_pairwise_cosine"]

    free, anchored = train(0.0), train(10.0)
    text = make_model("hila-patch").prompt_statistics()["patch"]["text_mean_pairwise_cosine"]
    assert free > anchored + 0.2
    assert abs(anchored - text) < 0.15


@pytest.mark.parametrize("name", ["abmil", "transmil"])
def test_baseline_explains_with_attention(name, rng):
    slide = make_slide(rng, 33, 3)
    exp = make_model(name).explain(collate([slide]))
    lv = exp.levels["patch"]
    assert lv.map_names == ["attention"] and lv.maps.shape == (33, 1)
    # attention relative to a uniform share: mean 1 over the slide's tiles
    assert lv.maps.mean() == pytest.approx(1.0, abs=1e-5) and (lv.maps >= 0).all()
    assert lv.scores.sum() == pytest.approx(1.0, abs=1e-5)
    assert lv.tile_size == 256  # from the coordinate spacing
    assert exp.contributions == []


def test_small_and_degenerate_slides(rng):
    model = make_model("hila", min_selected=8).eval()
    tiny = make_slide(rng, 3, 1)  # fewer tokens than the selection minimum
    no_regions = make_slide(rng, 20, 0)
    empty_regions = make_slide(rng, 10, 4)
    empty_regions.patch_to_region[:] = -1  # no patch lies in any region
    for slide in (tiny, no_regions, empty_regions):
        exp = model.explain(collate([slide]))
        assert math.isfinite(exp.risk)
        assert exp.levels["patch"].selected.all() == (slide.num_patches <= 8)
    exp = model.explain(collate([no_regions]))
    assert exp.levels["region"].coords.shape == (0, 2)
    # A slide without regions gets the learned empty region feature.
    with torch.no_grad():
        z = model(collate([no_regions])).details["levels"]["region"].features[0]
    torch.testing.assert_close(z, model.empty_level["region"].expand_as(z))


def test_large_bag_runs(rng):
    slide = make_slide(rng, 100_000, 400)
    model = make_model("hila").eval()
    with torch.no_grad():
        out = model(collate([slide]))
    assert torch.isfinite(out.risk).all()
    assert int(out.details["levels"]["patch"].selected.sum()) == 60_000


def test_saved_state_restores_prompts_and_queues(rng):
    batch = collate([make_slide(rng, 15, 2)])
    model = make_model("hila").train()
    model(batch)
    state = model.state_dict()
    assert {"prompt_embeddings_patch", "prompt_embeddings_region", "mcl.queue_patch"} <= set(state)
    fresh = HiLa(model.config)
    with pytest.raises(RuntimeError, match="prompt embeddings"):
        fresh(batch)
    fresh.load_state_dict(state)
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch).risk, fresh(batch).risk)


def test_bad_prompt_settings_are_refused():
    with pytest.raises(ValueError, match="as many texts"):
        make_model("hila", patch_prompt_names=["a", "b"], patch_prompt_texts=["only one"])
    model = make_model("hila")
    with pytest.raises(ValueError, match="prompt embeddings must be"):
        model.set_prompt_embeddings("patch", np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("head", "add_aligned_prompt", "differentiable", "text_learns"),
    [
        ("mean", True, False, True),
        ("mean", False, False, False),
        ("mean", False, True, True),
        ("additive", False, False, True),
    ],
)
def test_gradient_path_into_the_prompts(head, add_aligned_prompt, differentiable, text_learns, rng):
    # Older mean head: with a constant plan and the bare pooling formula nothing
    # reaches the text projection; the aligned-prompt bias or a differentiable
    # plan opened a path. The additive head's presence and transport-weighted
    # similarity reach it through S itself, with a constant plan.
    model = make_model(
        "hila-patch",
        head=head,
        add_aligned_prompt=add_aligned_prompt,
        sinkhorn_differentiable=differentiable,
        prompt_anchor_weight=0.0,
    ).train()
    out = model(collate([make_slide(rng, 20, 2), make_slide(rng, 11, 1)]))
    out.risk.sum().backward()
    grad = model.text["patch"].linear.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == text_learns


def test_bad_model_settings_are_user_errors_not_tracebacks(capsys):
    """A wrong --set value or model name reaches the user as one clear line."""
    from napari_hila.errors import HilaError
    from napari_hila.models import build_model

    with pytest.raises(HilaError, match="select_ratio"):
        build_model("hila", patch_dim=8, region_dim=8, select_ratio=1.5)
    with pytest.raises(HilaError, match="no setting.*not_a_setting"):
        build_model("abmil", patch_dim=8, not_a_setting=1)
    with pytest.raises(HilaError, match="unknown model 'hilla'.*available: .*hila"):
        build_model("hilla")


def test_shared_space_similarity_stays_near_the_spaces_own(rng):
    """A pull that would invert prompt 0's similarity is held back by the anchor."""
    slide = make_slide(rng, 40, 4)
    slide.region_features = rng.normal(size=(4, 8)).astype(np.float32)
    slide.features = slide.features[:, :8]
    batch = collate([slide])

    def drift_after_training(weight: float) -> float:
        model = shared_model(shared_space=True, similarity_anchor_weight=weight).train()
        optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(30):
            out = model(batch)
            pull = out.details["levels"]["patch"].similarity[..., 0].mean()
            optimiser.zero_grad()
            (pull + out.aux_loss).backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            align = model(batch).details["levels"]["patch"]
            return float(model._similarity_drift("patch", batch, align))

    assert drift_after_training(0.0) > 5 * drift_after_training(20.0)


def _pass_fractions(model, slides) -> np.ndarray:
    """Per level and prompt, the share of all the slides' tokens above the prompt's threshold."""
    shares = []
    with torch.no_grad():
        for lv in model.levels:
            sims = torch.cat(
                [model.eval()(collate([s])).details["levels"][lv].similarity[0] for s in slides]
            )
            theta = model.heads[lv].gain * model.heads[lv].threshold
            shares.append((sims > theta).float().mean(dim=0).numpy())
    return np.concatenate(shares)


def test_presence_thresholds_start_from_the_whole_training_cohort(rng):
    """fit_model starts theta_k at the cohort's (1 - 1/K) quantile, not the first slide's."""
    from napari_hila.training.trainer import FitSettings, fit_model

    slides = [make_slide(rng, 60, 4) for _ in range(6)]
    for i, slide in enumerate(slides):  # compositions that differ from slide to slide
        slide.features = slide.features + (2.0 * i - 5.0) * np.eye(PATCH_DIM, dtype=np.float32)[i]
    settings = FitSettings(epochs=1, lr=1e-12, show_progress=False)
    model = make_model("hila")
    fit_model(model, slides, np.zeros(6, int), np.ones(6), settings)
    k = np.array([len(model.prompt_names(lv)) for lv in model.levels])
    expected = np.repeat(1.0 / k, k)
    assert np.abs(_pass_fractions(model, slides) - expected).max() < 0.05

    first_only = make_model("hila").train()  # the fallback: the first training batch alone
    first_only(collate([slides[0]]))
    assert np.abs(_pass_fractions(first_only, slides) - expected).max() > 0.1


def test_ridge_penalises_the_weights_the_terms_use_per_level(rng):
    """patch/region_prompt_ridge add ridge * sum (gain * w)^2 of each level's scalars to the loss."""
    from napari_hila.models.hila_layers import HEAD_GAIN

    model = make_model("hila-no-mcl", patch_prompt_ridge=0.5, region_prompt_ridge=4.0).train()
    batch = collate([make_slide(rng, 30, 3)])
    expected = 0.0
    for lv, ridge in (("patch", 0.5), ("region", 4.0)):
        head = model.heads[lv]
        weights = torch.cat([head.presence_weight, head.similarity_weight]) * head.gain
        expected += ridge * float(weights.pow(2).sum())
    # the region peaks (what only regions show) are penalised at the patch rate
    expected += 0.5 * float((model.heads["region"].peak_weight * HEAD_GAIN).pow(2).sum())
    torch.manual_seed(1)
    with_ridge = float(model(batch).aux_loss)
    model.config.patch_prompt_ridge = model.config.region_prompt_ridge = 0.0
    torch.manual_seed(1)
    without = float(model(batch).aux_loss)
    assert expected > 0.01
    assert with_ridge - without == pytest.approx(expected, rel=1e-4)


def test_region_peak_is_the_clearest_regions_detector_output(rng):
    """peak_k = max over a slide's regions of sigmoid((S - theta_k) / tau); absent on patches."""
    model = make_model("hila").eval()
    assert model.heads["patch"].peak_weight is None
    head = model.heads["region"]
    with torch.no_grad():
        head.peak_weight.fill_(1.0 / head.gain)
        batch = collate([make_slide(rng, 30, 5), make_slide(rng, 20, 2)])
        out = model(batch)
        align = out.details["levels"]["region"]
        shows = head.shows(align.similarity, align.mask)
        with_peak = out.details["terms"]["region"]
        head.peak_weight.zero_()
        without = model(batch).details["terms"]["region"]
    expected = torch.stack([shows[0, :5].amax(0), shows[1, :2].amax(0)])
    torch.testing.assert_close(with_peak - without, expected, atol=1e-5, rtol=0)
    legacy = make_model("hila", region_peak_term=False)
    assert legacy.heads["region"].peak_weight is None


def test_shared_space_head_reads_presence_not_transport_similarity(rng):
    """In a shared space the head has no s_k term (prompt_similarity_term None -> off);
    outside one, or when asked, it reads s_k. The ridge then covers the presence weights."""
    shared = make_model("hila", shared_space=True, patch_dim=TEXT_DIM, region_dim=TEXT_DIM)
    assert shared.heads["patch"].similarity_weight is None
    assert shared.heads["region"].similarity_weight is None
    slide = make_slide(rng, 30, 3)
    slide = dataclasses.replace(
        slide,
        features=rng.normal(size=(30, TEXT_DIM)).astype(np.float32),
        region_features=rng.normal(size=(3, TEXT_DIM)).astype(np.float32),
    )
    batch = collate([slide])
    with torch.no_grad():
        out = shared.eval()(batch)
        head, align = shared.heads["patch"], out.details["levels"]["patch"]
        expected = head.gain * (head.presence_weight * align.presence + head.bias)
    torch.testing.assert_close(out.details["terms"]["patch"], expected, atol=1e-5, rtol=0)
    ridge = float(head.penalty(0.0, 0.0, ridge=2.0))
    assert ridge == pytest.approx(2.0 * float((head.gain * head.presence_weight).pow(2).sum()))
    asked = make_model(
        "hila",
        shared_space=True,
        prompt_similarity_term=True,
        patch_dim=TEXT_DIM,
        region_dim=TEXT_DIM,
    )
    assert asked.heads["patch"].similarity_weight is not None
    assert make_model("hila").heads["patch"].similarity_weight is not None


def test_cards_saved_before_the_similarity_switch_keep_their_similarity_term():
    """The shipped demo model (shared space, saved with s_k in its head) still loads."""
    from napari_hila.modelfile import load_model
    from napari_hila.modelfile.files import config_for_loading, read_card

    folder = Path(napari_hila.__file__).parent / "resources" / "demo_model"
    assert "prompt_similarity_term" not in read_card(folder).config
    assert config_for_loading(read_card(folder))["prompt_similarity_term"] is True
    loaded = load_model(folder, device="cpu")
    assert loaded.model.heads["patch"].similarity_weight is not None
