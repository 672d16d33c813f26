"""The dock's pixel size field for a slide without mpp: the note, the layer scale, the run."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hila import overlays
from napari_hila._qt.model_picker import demo_model_path
from napari_hila._qt.survival_dock import HilaSurvivalDock
from napari_hila.slides.synthetic import write_test_slide

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def nompp_slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nompp")
    return write_test_slide(folder / "nompp.tif", 2400, 1800, layout="flat", mpp=None)


@pytest.fixture
def model_dir():
    return demo_model_path() or pytest.skip("napari_hila/resources/demo_model is not built")


def slide_layer(viewer):
    return next(ly for ly in viewer.layers if ly.metadata.get("path"))


def test_spin_box_sets_the_scale_and_the_run_uses_it(
    make_napari_viewer, nompp_slide, model_dir, tmp_path, qtbot
):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(nompp_slide), plugin="napari-hila")
    dock = HilaSurvivalDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.cache_dir = tmp_path / "cache"
    dock.settings.model_picker.set_model(model_dir)
    layer = slide_layer(viewer)
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    assert dock.settings.mpp_spin.value() == 0.5 and dock.settings.mpp_spin.isEnabled()
    assert dock.settings.mpp_note.isVisibleTo(dock)
    assert "no pixel size; 0.5 um/px assumed" in dock.settings.mpp_note.text()
    assert "Why: the file does not record its pixel size." in dock.settings.mpp_note.text()

    dock.settings.mpp_spin.setValue(0.25)  # as a user does: the scale bar is now true
    np.testing.assert_allclose(layer.scale, (0.25, 0.25))
    assert layer.metadata["mpp"] == 0.25 and layer.metadata["mpp_source"] == "user"
    assert not dock.settings.mpp_note.isVisibleTo(dock)

    assert dock.run() is True
    assert dock.job.mpp == 0.25
    qtbot.waitUntil(lambda: dock.job.outcome is not None, timeout=120_000)
    assert dock.job.outcome.error is None, dock.job.outcome.error
    result = dock.result
    assert result.mpp == 0.25 and result.extra["mpp_source"] == "user"
    patch = result.explanation.levels["patch"]
    assert patch.tile_size == 512  # the 40x grid, not the assumed 20x one
    heat = dock.layers.heatmaps["patch"]
    np.testing.assert_allclose(heat.scale, (512 * 0.25,) * 2)
    layout = overlays.grid_layout(patch.coords, patch.tile_size)
    corner = heat.data_to_world((layout.rows[0] - 0.5, layout.cols[0] - 0.5))
    np.testing.assert_allclose(layer.world_to_data(corner), patch.coords[0][::-1] - 0.5, atol=1e-6)

    # a new value after the run moves the overlays with the slide and asks for a new run
    dock.settings.mpp_spin.setValue(0.3)
    np.testing.assert_allclose(layer.scale, (0.3, 0.3))
    np.testing.assert_allclose(heat.scale, (512 * 0.3,) * 2)
    corner = heat.data_to_world((layout.rows[0] - 0.5, layout.cols[0] - 0.5))
    np.testing.assert_allclose(layer.world_to_data(corner), patch.coords[0][::-1] - 0.5, atol=1e-6)
    assert "press Run" in dock.run_panel.stage_label.text() and dock.result.mpp == 0.25

    # the saved result, shown over a freshly opened slide, brings its pixel size along
    result.save(tmp_path / "result")
    from napari_hila._qt.app import launch_viewer

    other = launch_viewer(nompp_slide, result=tmp_path / "result", viewer=make_napari_viewer())
    np.testing.assert_allclose(slide_layer(other).scale, (0.25, 0.25))


def test_launch_viewer_mpp_reaches_the_layer_and_the_dock(make_napari_viewer, nompp_slide):
    from napari_hila._qt.app import launch_viewer, survival_dock_of

    viewer = launch_viewer(nompp_slide, viewer=make_napari_viewer(show=True), mpp=0.25)
    np.testing.assert_allclose(slide_layer(viewer).scale, (0.25, 0.25))
    dock = survival_dock_of(viewer)
    assert dock.settings.mpp_spin.value() == 0.25 and not dock.settings.mpp_note.isVisibleTo(dock)
    assert dock.slide_mpp(slide_layer(viewer)) == 0.25
