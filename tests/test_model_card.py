"""The typed model card: fields from card.json, older cards' defaults, bad entries refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_hila.errors import ModelFileError
from napari_hila.modelfile import ModelCard, read_card
from napari_hila.predict import extraction_settings, regions_for_model


def _write(folder, card):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _new_card():
    return {
        "model": "abmil",
        "config": {"patch_dim": 6},
        "label": "abmil on test",
        "encoders": {
            "patch": {"name": "conch", "version": "sha256:0123456789abcdef", "dim": 512},
            "region": {"name": "conch", "version": "", "dim": 512},
        },
        "time_bin_edges": [0.0, 10.5, 30.0, None],
        "time_unit": "days",
        "risk_threshold": -0.25,
        "cohort": {
            "patient_id": ["a", "b", "c"],
            "time": [3.0, 20.0, 40.0],
            "event": [1, 0, 1],
            "risk": [0.5, -0.1, -0.9],
            "risk_group": ["high", "high", "low"],
            "fold": [0, 1, 1],
            "final_model_risk": [0.2, 0.0, -0.6],
        },
        "grid": {
            "patch_px": 224,
            "region_px": 3584,
            "target_mpp": 0.25,
            "magnifications": "10x,20x",
        },
        "explanation": {"cohort_risk_sd": 0.37},
        "intended_use": "tests only",  # a key this version does not know
    }


def test_fields_are_typed_and_unknown_keys_kept(tmp_path):
    written = _new_card()
    card = read_card(_write(tmp_path / "m", written))
    assert card.model == "abmil" and card.display_label == "abmil on test"
    assert card.patch_encoder.name == "conch" and card.patch_encoder.dim == 512
    assert card.patch_encoder.version == "sha256:0123456789abcdef"
    assert card.time_bin_edges.tolist() == [0.0, 10.5, 30.0, math.inf]
    assert card.time_unit == "days" and card.risk_threshold == -0.25
    assert card.grid.patch_px == 224 and card.grid.region_px == 3584
    assert card.grid.target_mpp == 0.25 and card.grid.magnifications == ("10x", "20x")
    np.testing.assert_array_equal(card.cohort.reference_risks, [0.2, 0.0, -0.6])
    assert card.cohort.risk_group == ("high", "high", "low")
    assert card.cohort_risk_sd == 0.37
    assert card.extra == {"intended_use": "tests only"}
    assert "card.json" in card.source
    # read access by key answers from the JSON exactly as written
    assert dict(card) == written and card["time_bin_edges"][-1] is None
    settings = extraction_settings(card)
    assert settings["encoder"] == "conch" and settings["encoder_version"].startswith("sha256:")
    assert settings["magnifications"] == ("10x", "20x") and settings["patch_px"] == 224


def test_an_older_card_gets_the_defaults_it_always_had(tmp_path):
    """No grid, time unit, threshold, final-model risks or stored SD: the pre-card defaults."""
    old = {
        "model": "hila",
        "config": {},
        "encoders": {"patch": {"dim": 48}},
        "time_bin_edges": [0, 12, None],
        "cohort": {"time": [1.0, 2.0, 3.0], "event": [1, 1, 0], "risk": [0.1, 0.4, -0.3]},
    }
    card = read_card(_write(tmp_path / "old", old))
    # how the encoder ran was not recorded then: unknown, not a guess
    assert card.patch_encoder.dim == 48 and card.patch_encoder.dtype is None
    assert card.patch_encoder.device is None and card.patch_encoder.preprocessing is None
    assert card.region_encoder.dtype is None
    assert (card.grid.patch_px, card.grid.region_px, card.grid.target_mpp) == (256, 4096, 0.5)
    assert card.grid.region_mode == "view" and card.grid.magnifications == ()
    assert card.time_unit == "months" and card.risk_threshold is None
    assert card.display_label == "hila" and not card.is_synthetic
    np.testing.assert_array_equal(card.cohort.reference_risks, [0.1, 0.4, -0.3])
    risks = np.array([0.1, 0.4, -0.3])
    sd = math.sqrt(((risks - risks.mean()) ** 2).sum() / 2)
    assert card.cohort_risk_sd == pytest.approx(sd)
    assert extraction_settings(card) == {
        "encoder": "hila-descriptor",
        "patch_px": 256,
        "region_px": 4096,
        "target_mpp": 0.5,
        "region_mode": "view",
    }


def test_a_partial_dict_is_read_with_the_same_defaults():
    """Plots and the viewer may hold only part of a card (its cohort): defaults fill the rest."""
    card = ModelCard.of({"cohort": {"risk": [1.0]}, "risk_threshold": 0.5})
    assert card.model == "" and card.grid.patch_px == 256 and card.cohort.risk.tolist() == [1.0]
    assert ModelCard.of(card) is card


def test_pooling_uses_the_cards_grid(tmp_path):
    from napari_hila.features.store import SlideFeatures

    n = 64
    coords = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2) * 448
    feats = SlideFeatures(
        features=np.ones((n, 3), np.float32),
        coords=coords.astype(np.int64),
        region_features=np.zeros((0, 3), np.float32),
        region_coords=np.zeros((0, 2), np.int64),
        patch_to_region=np.full(n, -1, np.int64),
        attrs={"patch_size": 448, "mpp": 0.25},
    )
    card = ModelCard.of({"grid": {"patch_px": 224, "region_px": 896, "target_mpp": 0.5}})
    pooled = regions_for_model(feats, card)
    # regions of 896 px at 0.5 um/px are 1792 level-0 px at 0.25 um/px: 4 x 4 patches each
    assert pooled.region_size == 1792 and pooled.num_regions == 4


@pytest.mark.parametrize(
    "change, words",
    [
        ({"grid": {"patch_px": "big"}}, "wrong type"),
        ({"time_bin_edges": ["soon"]}, "wrong type"),
        ({"time_bin_edges": [0.0]}, "time_bin_edges needs 2"),
        ({"risk_threshold": [1, 2]}, "wrong type"),
        ({"encoders": {"patch": {"name": "vit", "preprocessing": "bicubic"}}}, "wrong type"),
    ],
)
def test_a_bad_entry_is_one_message_naming_the_card(tmp_path, change, words):
    folder = _write(tmp_path / "bad", {**_new_card(), **change})
    with pytest.raises(ModelFileError) as err:
        read_card(folder)
    assert str(folder / "card.json") in str(err.value) and words in str(err.value)


def test_a_missing_key_is_named(tmp_path):
    card = _new_card()
    del card["encoders"]
    with pytest.raises(ModelFileError, match="missing key.*encoders"):
        read_card(_write(tmp_path / "m", card))


# -- how the training features' encoder ran, recorded by training ----------------------------

TINY_VIT = dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64)


@pytest.fixture(scope="module")
def bf16_vit_features(sample_slide, tmp_path_factory):
    """A feature file extract_slide wrote with a tiny timm-layout ViT under bfloat16."""
    import torch
    from safetensors.torch import save_file

    from napari_hila.encoders.vit import VisionTransformer, ViTConfig
    from napari_hila.features.extract import extract_slide

    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig(**TINY_VIT))
    weights = folder / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    return extract_slide(
        sample_slide,
        folder / "feats",
        encoder="vit",
        weights=weights,
        device="cpu",
        region_mode="mean",
        precision="bfloat16",
    )


def test_a_trained_card_records_the_dtype_device_and_preprocessing(bf16_vit_features, tmp_path):
    """train on features a bfloat16 ViT made: the card says bfloat16, cpu and the owners'
    transform (vit: bilinear, ImageNet mean/std, at the ViT's 32 px), and reads it back typed."""
    from napari_hila.cli import main
    from napari_hila.features.store import SlideFeatures, load_features, save_features

    made = load_features(bf16_vit_features)
    assert made.attrs["encoder_dtype"] == "bfloat16"
    rng = np.random.default_rng(0)
    rows = ["patient_id,slide_id,time,event"]
    for i in range(8):  # the real file's attributes, features carrying a hazard
        hazard = rng.normal()
        feats = made.features + rng.normal(size=made.features.shape).astype(np.float32)
        feats[:, 0] += 2 * hazard
        save_features(
            tmp_path / "feats" / f"S{i}.h5",
            SlideFeatures(
                feats,
                made.coords,
                made.region_features,
                made.region_coords,
                made.patch_to_region,
                attrs=dict(made.attrs),
            ),
        )
        rows.append(f"P{i},S{i},{rng.exponential(20 * np.exp(-hazard)):.3f},{i % 4 != 0:d}")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    argv = ["train", "--cohort", str(tmp_path / "cohort.csv"), "--features"]
    argv += [str(tmp_path / "feats"), "--out", str(tmp_path / "run"), "--model", "abmil"]
    argv += ["--folds", "2", "--epochs", "1", "--quiet", "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    card = read_card(tmp_path / "run" / "final_model")
    patch, region = card.patch_encoder, card.region_encoder
    assert (patch.name, patch.dtype, patch.device) == ("vit", "bfloat16", "cpu")
    assert patch.preprocessing == json.loads(made.attrs["encoder_preprocessing"])
    assert patch.preprocessing["interpolation"] == "bilinear"
    assert patch.preprocessing["size"] == TINY_VIT["image_size"]
    np.testing.assert_allclose(patch.preprocessing["mean"], [0.485, 0.456, 0.406])
    # mean-pooled regions ran as their patches did
    assert (region.dtype, region.device, region.preprocessing) == (
        "bfloat16",
        "cpu",
        patch.preprocessing,
    )
    assert card["encoders"]["patch"]["dtype"] == "bfloat16"  # in card.json itself
    assert "region_encoder_dtype" not in card.grid.extra


def test_a_region_encoder_of_its_own_records_its_dtype_only():
    """A separate region encoder: its own dtype; its preprocessing is not in the file, so the
    card leaves it out (read as None), as it does what a CLAM file does not record."""
    from napari_hila.features.store import SlideFeatures
    from napari_hila.training.card import _encoders

    steps = {"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    attrs = {
        "encoder": "conch",
        "region_encoder": "uni",
        "encoder_dtype": "float16",
        "region_encoder_dtype": "bfloat16",
        "encoder_device": "cuda:0",
        "encoder_preprocessing": json.dumps(steps),
    }
    feats = SlideFeatures(
        np.zeros((2, 4), np.float32),
        np.zeros((2, 2), np.int64),
        np.zeros((1, 3), np.float32),
        np.zeros((1, 2), np.int64),
        np.zeros(2, np.int64),
        attrs=attrs,
    )
    encoders = _encoders(feats)
    assert encoders["patch"] | {"version": ""} == {
        "name": "conch",
        "version": "",
        "dim": 4,
        "dtype": "float16",
        "device": "cuda:0",
        "preprocessing": steps,
    }
    assert encoders["region"]["dtype"] == "bfloat16" and encoders["region"]["dim"] == 3
    assert "preprocessing" not in encoders["region"]
    del attrs["encoder_dtype"], attrs["encoder_preprocessing"]  # a CLAM-style file: unknown
    assert _encoders(feats)["patch"] == {
        "name": "conch",
        "version": "",
        "dim": 4,
        "device": "cuda:0",
    }
