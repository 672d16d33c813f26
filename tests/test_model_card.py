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
