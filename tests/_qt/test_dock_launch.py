"""The view command's errors (launch_viewer itself: test_export_screenshot.py)."""

from __future__ import annotations

import argparse

import pytest

from napari_hila.commands import view
from napari_hila.errors import HilaError

pytestmark = pytest.mark.gui


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nope.svs"], "nope.svs"),
        (["--model", "{tmp}"], "card.json"),
        (["--result", "{tmp}"], "result.json"),
    ],
)
def test_view_command_rejects_bad_input(tmp_path, argv, message):
    parser = argparse.ArgumentParser()
    view.add_arguments(parser)
    args = parser.parse_args([a.format(tmp=tmp_path) for a in argv])
    with pytest.raises(HilaError, match=message):
        view.run(args)


def test_view_command_opens_slide_and_dock(monkeypatch, sample_slide, qtbot):
    import napari

    from napari_hila._qt.app import survival_dock_of
    from napari_hila._qt.model_picker import demo_model_path

    seen = {}

    def fake_run():  # instead of blocking in the event loop: look, then close
        viewer = napari.current_viewer()
        seen["layers"] = [ly.name for ly in viewer.layers]
        dock = survival_dock_of(viewer)
        seen["slides"] = dock.settings.slide_combo.count()
        seen["model"] = dock.settings.model_picker.model_path
        viewer.close()

    monkeypatch.setattr(napari, "run", fake_run)
    parser = argparse.ArgumentParser()
    view.add_arguments(parser)
    model = demo_model_path() or pytest.skip("demo model not built")
    assert view.run(parser.parse_args([str(sample_slide), "--model", str(model)])) == 0
    assert seen["layers"] == [sample_slide.name] and seen["slides"] == 1
    assert seen["model"] == str(model)
