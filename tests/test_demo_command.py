"""`napari-hila demo` wiring: viewer with a display, files and a summary without one."""

from __future__ import annotations

import sys
import types

import pytest
from test_export import make_result

from napari_hila.cli import main
from napari_hila.commands import demo


@pytest.fixture
def fake_prediction(monkeypatch, tmp_path):
    """predict_slide replaced by one that returns a small known result, and the folder
    writer by one that saves just that result (the real run: test_predict)."""
    calls = []

    def fake_predict_slide(slide, model, **kwargs):
        calls.append({"slide": slide, "model": model, **kwargs})
        result = make_result()
        result.slide_path = str(slide)
        return result

    def fake_write_prediction_folder(result, out_dir, card=None, **kwargs):
        calls.append({"out_dir": out_dir})
        result.save(out_dir)

    monkeypatch.setattr(demo, "predict_slide", fake_predict_slide)
    monkeypatch.setattr(demo, "write_prediction_folder", fake_write_prediction_folder)
    return calls


def test_no_display_writes_files_and_prints_summary(fake_prediction, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr()
    assert "risk:   -2.000  (high risk; 70th percentile" in out.out
    assert "[patch] dense nuclei: raises risk by 0.300" in out.out
    assert str(tmp_path / "out") in out.out and "result.json" in out.out
    assert "no display" in out.err
    call = fake_prediction[0]
    assert call["slide"].name == "CMU-1-Small-Region.svs" and call["model"].name == "demo_model"
    assert fake_prediction[1]["out_dir"] == (tmp_path / "out").resolve()  # the files go to --out


def test_display_opens_the_viewer_with_the_result(fake_prediction, monkeypatch, tmp_path):
    opened = []
    fake_app = types.ModuleType("napari_hila._qt.app")
    fake_app.launch_viewer = lambda slide, result=None, model=None: opened.append(
        (slide, result, model)
    )
    fake_napari = types.ModuleType("napari")
    fake_napari.run = lambda: opened.append("run")
    monkeypatch.setitem(sys.modules, "napari_hila._qt.app", fake_app)
    monkeypatch.setitem(sys.modules, "napari", fake_napari)
    monkeypatch.setattr(demo, "display_available", lambda: True)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    slide, result_dir, model = opened[0]
    assert slide.endswith("CMU-1-Small-Region.svs") and result_dir == str(tmp_path / "out")
    assert model.endswith("demo_model") and opened[1] == "run"
    opened.clear()
    assert main(["demo", "--out", str(tmp_path / "out2"), "--no-viewer"]) == 0
    assert opened == []


def test_shipped_demo_model_matches_the_current_encoder():
    """If this fails, the descriptor changed: rerun scripts/train_demo_model.py and commit."""
    from napari_hila.encoders.descriptor import DESCRIPTOR_DIM, DESCRIPTOR_VERSION
    from napari_hila.modelfile import read_card
    from napari_hila.resources import resource_path

    card = read_card(resource_path("demo_model"))
    for level in ("patch", "region"):
        assert card["encoders"][level] == {
            "name": "hila-descriptor",
            "version": DESCRIPTOR_VERSION,
            "dim": DESCRIPTOR_DIM,
        }
    assert card["grid"]["region_px"] == 1024 and "not for clinical use" in card["label"]
    demo = card["demo"]
    assert demo["oracle_c_index"] > demo["cross_validated_c_index"]["hila"]["mean"] > 0.6
