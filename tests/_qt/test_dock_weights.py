"""The dock's model area: which encoder the model needs and whether its weights were found."""

from __future__ import annotations

import json

import pytest
from hila_fake_results import fake_card

from napari_hila._qt.survival_dock import HilaSurvivalDock

pytestmark = pytest.mark.gui


def _model(folder, patch: str, region: str | None = None):
    card = fake_card()
    card["encoders"] = {"patch": {"name": patch, "dim": 32}}
    if region:
        card["encoders"]["region"] = {"name": region, "dim": 32}
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_model_area_names_the_encoder_and_its_weights(make_napari_viewer, tmp_path, monkeypatch):
    config = tmp_path / "encoders.yaml"
    monkeypatch.setenv("NAPARI_HILA_ENCODERS", str(config))
    viewer = make_napari_viewer(show=True)
    dock = HilaSurvivalDock(viewer)
    viewer.window.add_dock_widget(dock)
    picker = dock.settings.model_picker
    uni = _model(tmp_path / "uni-model", "uni")

    # configured, but the file is not there: the path, the config file and red
    missing = tmp_path / "weights" / "uni.safetensors"
    config.write_text(f"uni:\n  weights: {missing}\n")
    picker.set_model(uni)
    text = picker.weights_label.text()
    assert picker.weights_label.isVisibleTo(dock) and not picker.card_label.isVisibleTo(dock)
    assert picker.weights_missing
    assert "patch encoder uni" in text and str(missing) in text and "does not exist" in text
    assert str(config) in text and "color:#e0524f" in text

    # not configured at all: the line to add, to which file
    config.write_text("{}\n")
    picker.set_model(uni)
    text = picker.weights_label.text()
    assert picker.weights_missing and "weights not found" in text
    assert "uni: PATH" in text and str(config) in text

    # the file exists: where it is, not in red
    missing.parent.mkdir()
    missing.write_bytes(b"weights")
    config.write_text(f"uni:\n  weights: {missing}\n")
    picker.set_model(uni)
    text = picker.weights_label.text()
    assert not picker.weights_missing and text == f"patch encoder uni: {missing}"

    # a view-mode region encoder of its own is checked too; the descriptor needs none
    both = _model(tmp_path / "two", "hila-descriptor", region="conch-trunk")
    picker.set_model(both)
    lines = picker.weights_label.text().split("<br>")
    assert lines[0] == "patch encoder hila-descriptor: needs no weights"
    assert "region encoder conch-trunk: weights not found" in lines[1] and picker.weights_missing
