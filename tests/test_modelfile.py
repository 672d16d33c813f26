"""The model file: round trip, card keys, encoder mismatch, and no pickle."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from _single_thread import one_torch_thread  # noqa: F401

from napari_hila.errors import ModelFileError
from napari_hila.features.store import SlideFeatures
from napari_hila.modelfile import (
    CARD_KEYS,
    check_features_match,
    config_to_dict,
    load_model,
    save_model,
)
from napari_hila.models.batch import collate
from napari_hila.models.registry import build_model


def _feats(dim=5, encoder="enc-a", m=20, seed=0):
    rng = np.random.default_rng(seed)
    coords = np.stack([np.arange(m) * 256, np.zeros(m, int)], 1)
    return SlideFeatures(
        rng.normal(size=(m, dim)).astype(np.float32),
        coords,
        rng.normal(size=(1, dim)).astype(np.float32),
        np.zeros((1, 2), np.int64),
        np.zeros(m, np.int64),
        attrs={"encoder": encoder, "region_encoder": encoder},
    )


def _card(model_name, config):
    return {
        "model": model_name,
        "config": config_to_dict(config),
        "label": "test model",
        "encoders": {"patch": {"name": "enc-a", "dim": 5}, "region": {"name": "enc-a", "dim": 5}},
        "time_bin_edges": [0.0, 5.0, None],
        "risk_threshold": -1.0,
    }


@pytest.fixture
def saved_abmil(tmp_path):
    torch.manual_seed(0)
    model = build_model("abmil", patch_dim=5, n_bins=2).eval()
    folder = save_model(tmp_path / "m", model, _card("abmil", model.config))
    return model, folder


def test_round_trip_gives_identical_outputs_and_full_card(saved_abmil):
    model, folder = saved_abmil
    loaded = load_model(folder, "cpu")
    batch = collate([_feats()])
    with torch.no_grad():
        np.testing.assert_array_equal(model(batch).risk.numpy(), loaded.model(batch).risk.numpy())
    assert not loaded.model.training
    card = json.loads((folder / "card.json").read_text())
    assert set(CARD_KEYS) <= set(card)
    assert card["weights_sha256"] and card["label"] == loaded.label == "test model"


def test_hila_round_trip_keeps_prompt_embeddings(tmp_path):
    torch.manual_seed(0)
    model = build_model("hila", patch_dim=5, region_dim=5, text_dim=8, n_bins=2)
    for level in model.prompt_levels():
        k = len(model.prompt_names(level))
        model.set_prompt_embeddings(level, np.random.default_rng(1).normal(size=(k, 8)))
    model.eval()
    folder = save_model(tmp_path / "h", model, _card("hila", model.config))
    loaded = load_model(folder, "cpu")
    batch = collate([_feats()])
    with torch.no_grad():
        assert float(model(batch).risk) == float(loaded.model(batch).risk)


def test_mismatched_encoder_names_both(saved_abmil):
    _, folder = saved_abmil
    card = load_model(folder, "cpu").card
    with pytest.raises(ModelFileError, match="'enc-b'.*'enc-a'") as info:
        check_features_match(card, _feats(encoder="enc-b"), "slide.h5")
    assert "slide.h5" in str(info.value)
    with pytest.raises(ModelFileError, match="width 7 but the model expects 5"):
        check_features_match(card, _feats(dim=7, encoder="enc-a"))
    check_features_match(card, _feats())  # matching features pass
    # the card is typed and frozen: an older encoder version is a changed copy
    card = dataclasses.replace(
        card, patch_encoder=dataclasses.replace(card.patch_encoder, version="1")
    )
    newer = _feats()
    newer.attrs["encoder_version"] = "2"
    with pytest.raises(
        ModelFileError, match="version 2 here but the model was trained on version 1"
    ):
        check_features_match(card, newer)


def test_pickled_weights_refused(saved_abmil, tmp_path):
    model, folder = saved_abmil
    torch.save(model.state_dict(), folder / "model.safetensors")
    with pytest.raises(ModelFileError, match="pickled"):
        load_model(folder, "cpu")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="never loaded"):
        load_model(tmp_path / "model.pt", "cpu")


def test_safetensors_whose_header_length_starts_like_a_pickle_loads(saved_abmil):
    """A header length of 0x..80 (first byte 0x80, like pickle's protocol byte) is safetensors."""
    import hashlib

    from safetensors.torch import save

    model, folder = saved_abmil
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    blob = next(
        b
        for n in range(300)
        if (b := save(state, metadata={"format": "napari-hila-model/1", "pad": "x" * n}))[:1]
        == b"\x80"
    )
    (folder / "model.safetensors").write_bytes(blob)
    card = json.loads((folder / "card.json").read_text())
    card["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (folder / "card.json").write_text(json.dumps(card))
    loaded = load_model(folder, "cpu")
    for key, value in state.items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)


def test_corrupt_or_partial_model_dirs(saved_abmil, tmp_path):
    model, folder = saved_abmil
    with pytest.raises(ModelFileError, match="no card.json"):
        load_model(tmp_path / "nowhere", "cpu")
    other = build_model("abmil", patch_dim=5, n_bins=2)
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(folder, "cpu")
    (folder / "card.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(folder, "cpu")
