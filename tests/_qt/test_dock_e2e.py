"""End to end in a real viewer: the sample slide, the shipped demo model, the real pipeline.

``HILA_E2E_MODEL=DIR`` runs it with another model directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from napari_hila import overlays
from napari_hila._qt.model_picker import demo_model_path
from napari_hila._qt.survival_dock import HilaSurvivalDock
from napari_hila.slides import detect_tissue, make_grids, open_slide

pytestmark = pytest.mark.gui


@pytest.fixture
def model_dir() -> Path:
    chosen = os.environ.get("HILA_E2E_MODEL")
    path = Path(chosen) if chosen else demo_model_path()
    if path is None:
        pytest.skip("napari_hila/resources/demo_model is not built yet (napari-hila demo engineer)")
    return path


@pytest.fixture
def dock(make_napari_viewer, sample_slide, model_dir, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(sample_slide), plugin="napari-hila")
    widget = HilaSurvivalDock(viewer)
    viewer.window.add_dock_widget(widget)
    widget.cache_dir = tmp_path / "cache"
    widget.settings.model_picker.set_model(model_dir)
    assert widget.settings.model_picker.error is None
    return widget


def run_to_end(dock, qtbot, timeout_ms=180_000):
    assert dock.run() is True
    qtbot.waitUntil(lambda: dock.job.outcome is not None, timeout=timeout_ms)
    outcome = dock.job.outcome
    assert outcome.error is None and not outcome.cancelled, outcome.error
    return outcome


def test_run_sample_with_model(dock, qtbot, sample_slide):
    viewer = dock.viewer
    run_to_end(dock, qtbot)
    result = dock.result
    assert result is dock.job.outcome.result and np.isfinite(result.risk)
    assert result.risk_group in ("high", "low")
    assert "Risk score" in dock.result_panel.risk_label.text()
    kinds = {
        (ly.metadata.get(overlays.OVERLAY_KEY), ly.metadata.get("level")) for ly in viewer.layers
    }
    assert {("heatmap", "patch"), ("heatmap", "region"), ("selection", "patch")} <= kinds
    assert ("regions", "region") in kinds and ("tissue", None) in kinds

    # the patch grid is the slides package's grid for this model, and each heatmap
    # cell's edges land on the slide layer's pixel edges of its tile
    grid = dock.card["grid"]
    with open_slide(sample_slide) as slide:
        grids = make_grids(
            slide,
            detect_tissue(slide),
            patch_px=grid["patch_px"],
            region_px=grid["region_px"],
            target_mpp=grid["target_mpp"],
        )
    level = result.explanation.levels["patch"]
    assert {tuple(c) for c in level.coords} == {tuple(c) for c in grids.patch_coords}
    slide_layer = next(ly for ly in viewer.layers if ly.metadata.get("path"))
    heat = dock.layers.heatmaps["patch"]
    layout = overlays.grid_layout(level.coords, level.tile_size)
    for i in range(len(level.coords)):
        top_left = heat.data_to_world((layout.rows[i] - 0.5, layout.cols[i] - 0.5))
        np.testing.assert_allclose(
            slide_layer.world_to_data(top_left), level.coords[i][::-1] - 0.5, atol=1e-6
        )
    np.testing.assert_allclose(heat.scale, (grids.patch_size * result.mpp,) * 2)

    # switching prompts shows the other prompt's plan column
    other = level.map_names[-1]
    dock.set_prompt("patch", other)
    expected = overlays.heatmap_values(level, other)
    np.testing.assert_allclose(heat.data[layout.rows, layout.cols], expected, rtol=1e-6)

    # a second run on the same slide and model reads the feature cache, rewriting nothing
    cached = {p: p.stat().st_mtime_ns for p in Path(dock.cache_dir).rglob("*.h5")}
    assert len(cached) == 1
    run_to_end(dock, qtbot)
    assert {p: p.stat().st_mtime_ns for p in Path(dock.cache_dir).rglob("*.h5")} == cached
    assert dock.result.risk == pytest.approx(result.risk, abs=1e-6)
    assert (
        len([ly for ly in viewer.layers if ly.metadata.get(overlays.OVERLAY_KEY) == "heatmap"]) == 2
    )


@pytest.mark.slow
def test_cancel_mid_extraction_then_resume(dock, qtbot, tmp_path):
    """Cancel while encoding patches: no layers; the next run completes with the same risk."""
    viewer = dock.viewer
    n_layers = len(viewer.layers)
    assert dock.run() is True
    qtbot.waitUntil(lambda: "patches" in dock.run_panel.stage_label.text(), timeout=120_000)
    dock.cancel()
    qtbot.waitUntil(lambda: dock.job.outcome is not None, timeout=30_000)
    assert dock.job.outcome.cancelled
    finished = [p for p in Path(dock.cache_dir).rglob("*.h5") if not p.name.startswith(".")]
    assert not finished  # only the hidden partial file a resumed run continues from
    assert len(viewer.layers) == n_layers
    resumed = run_to_end(dock, qtbot).result
    dock.cache_dir = tmp_path / "fresh-cache"
    fresh = run_to_end(dock, qtbot).result
    assert resumed.risk == pytest.approx(fresh.risk, abs=1e-5)


def test_mismatched_model_and_blank_slide_notify(dock, qtbot, tmp_path, model_dir):
    """A model whose encoder width differs, a slide without tissue: one clear error each."""
    import json
    import shutil

    import tifffile
    from napari.utils.notifications import notification_manager

    errors: list[str] = []

    def record(event):
        note = getattr(event, "value", event)
        if str(note.severity) == "error":
            errors.append(str(note.message))

    notification_manager.notification_ready.connect(record)
    try:
        bad = tmp_path / "bad_model"
        shutil.copytree(model_dir, bad)
        card = json.loads((bad / "card.json").read_text())
        card["encoders"]["patch"]["dim"] = 100
        (bad / "card.json").write_text(json.dumps(card))
        dock.settings.model_picker.set_model(bad)
        run_to_end_expecting_error(dock, qtbot)
        assert "the model expects 100" in errors[-1]

        blank = tmp_path / "blank.tif"
        white = np.full((1024, 1024, 3), 245, np.uint8)
        tifffile.imwrite(
            blank,
            white,
            tile=(256, 256),
            photometric="rgb",
            resolution=(20000, 20000),
            resolutionunit="CENTIMETER",
        )
        dock.viewer.open(str(blank), plugin="napari-hila")
        dock.settings.slide_combo.setCurrentIndex(
            dock.settings.slide_combo.findText(dock.viewer.layers[-1].name)
        )
        dock.settings.model_picker.set_model(model_dir)
        run_to_end_expecting_error(dock, qtbot)
        assert "no tissue found" in errors[-1] and "blank.tif" in errors[-1]
    finally:
        notification_manager.notification_ready.disconnect(record)
    assert not any(ly.metadata.get(overlays.OVERLAY_KEY) for ly in dock.viewer.layers)


def run_to_end_expecting_error(dock, qtbot):
    assert dock.run() is True
    qtbot.waitUntil(lambda: dock.job.outcome is not None, timeout=120_000)
    assert dock.job.outcome.error and dock.run_panel.stage_label.text() == "failed"
