"""launch_viewer (used by `napari-hila view` and `demo`) and the view command's errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from hila_fake_results import fake_card, fake_result

from napari_hila import overlays
from napari_hila._qt.app import launch_viewer, survival_dock_of
from napari_hila._qt.km_dock import KaplanMeierDock
from napari_hila._qt.layers import slide_path_of
from napari_hila._qt.survival_dock import HilaSurvivalDock
from napari_hila.commands import view
from napari_hila.errors import HilaError

pytestmark = pytest.mark.gui


def test_launch_viewer_shows_saved_result_on_the_reader_layer(
    make_napari_viewer, sample_slide, tmp_path
):
    model = tmp_path / "model"
    model.mkdir()
    (model / "card.json").write_text(json.dumps(fake_card()))
    result = fake_result(str(sample_slide), mpp=0.499)
    result.model_path = str(model)
    result.save(tmp_path / "result")
    viewer = make_napari_viewer(show=True)
    launch_viewer(sample_slide, result=tmp_path / "result", model=model, viewer=viewer)
    slides = [ly for ly in viewer.layers if slide_path_of(ly)]
    assert len(slides) == 1 and slides[0].multiscale
    slide = slides[0]
    heat = next(ly for ly in viewer.layers if ly.metadata.get(overlays.OVERLAY_KEY) == "heatmap")
    assert tuple(str(u) for u in heat.units) == tuple(str(u) for u in slide.units)
    # heatmap cell edges land on the slide layer's pixel edges of each tile
    level = result.explanation.levels["patch"]
    layout = overlays.grid_layout(level.coords, level.tile_size)
    for i in (0, len(level.coords) // 2):
        corner = slide.world_to_data(
            heat.data_to_world((layout.rows[i] - 0.5, layout.cols[i] - 0.5))
        )
        np.testing.assert_allclose(corner, level.coords[i][::-1] - 0.5, atol=1e-6)
    docks = viewer.window.dock_widgets
    survival = survival_dock_of(viewer)
    assert isinstance(survival, HilaSurvivalDock)
    card_text = survival.model_picker.card_label.text()
    assert "cross-validated C-index: 0.660 &plusmn; 0.040" in card_text
    assert "60 patients" in card_text and "Not for clinical use" in card_text
    km = next(w for name, w in docks.items() if "Kaplan-Meier" in name)
    assert isinstance(km, KaplanMeierDock) and km.result is survival.result


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
