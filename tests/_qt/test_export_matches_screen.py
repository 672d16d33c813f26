"""Exports match the screen: text never cut, colours and threshold as shown, in a worker."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hila_fake_results import fake_result
from matplotlib import colormaps

from napari_hila import overlays
from napari_hila._qt import export as qt_export
from napari_hila._qt.app import launch_viewer, survival_dock_of
from napari_hila.errors import Cancelled

pytestmark = pytest.mark.gui

LONG_TITLE = (
    "HiLa demo, 1024 px regions (synthetic cohort from CMU-1-Small-Region tiles; not for "
    "clinical use) — risk -3.838, low-risk group: at or below the cohort median, 10th "
    "percentile of the model's cohort"
)


@pytest.mark.parametrize("width", [320, 620, 1400, 3000])
def test_band_text_is_wrapped_and_inside_the_image(width):
    band, texts = qt_export.render_band(
        width,
        0.5,
        LONG_TITLE,
        "CMU-1-Small-Region.svs  x 0-2220, y 0-2967   prompt (patch): Solid dense-nuclei sheets",
        colormaps["inferno"],
        (0.0, 3.0),
        "'Solid dense-nuclei sheets': x a uniform share (1 = uniform); below 1.5 not drawn",
    )
    height = band.shape[0]
    assert band.shape[1] == width
    for text, box in texts:
        assert box.x0 >= 0 and box.y0 >= 0, text
        assert box.x1 <= width and box.y1 <= height, (text, box, width, height)
    shown = " ".join(text for text, _ in texts)
    assert "risk -3.838" in shown and "10th" in shown  # the risk is never cut off the title
    assert "below 1.5 not drawn" in shown.replace("\n", " ")
    # text boxes do not overlap one another (the prompt never runs under the colourbar)
    boxes = [box for _, box in texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 1 or overlap_y <= 1, (a, b)


def test_export_matches_the_screen_in_a_worker(make_napari_viewer, sample_slide, tmp_path, qtbot):
    viewer = make_napari_viewer(show=True)
    launch_viewer(sample_slide, viewer=viewer)
    dock = survival_dock_of(viewer)
    result = fake_result(str(sample_slide), mpp=0.499)
    dock.show_result(result)
    heat = dock.layers.heatmaps["patch"]
    heat.colormap = "viridis"
    heat.opacity = 0.8
    dock.result_panel.threshold_spin.setValue(1.0)
    dock.result_panel.threshold_check.setChecked(True)
    level = result.explanation.levels["patch"]
    values = overlays.heatmap_values(level, 0)
    dock.center_on_tile("patch", 10)
    viewer.camera.zoom /= 3  # several tiles at about a third of full resolution

    assert dock.start_export(tmp_path / "case.png")
    assert dock.run_panel.export_progress.isVisibleTo(dock)  # progress while the window stays live
    qtbot.waitUntil(lambda: dock.export_job.outcome is not None, timeout=60_000)
    outcome = dock.export_job.outcome
    assert outcome.error is None and not outcome.cancelled
    assert set(outcome.written) == {"screenshot", "region", "geojson", "csv"}
    assert (
        not dock.run_panel.export_progress.isVisibleTo(dock)
        and dock.run_panel.export_button.isEnabled()
    )

    from PIL import Image

    figure = np.asarray(Image.open(outcome.written["region"]))[..., :3].astype(float)
    x0, y0, x1, y1 = dock.export_job.request.bbox  # the view when Export was pressed
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, 2220), min(y1, 2967)
    scale = figure.shape[1] / (x1 - x0)
    from napari_hila.slides import open_slide

    checked = {"shown": 0, "hidden": 0}
    colours = np.asarray(heat.colormap.map(np.linspace(0, 1, 256)))[:, :3] * 255
    with open_slide(sample_slide) as slide:
        for i, (tx, ty) in enumerate(np.asarray(level.coords)):
            cx, cy = tx + 128, ty + 128  # tile centre, level-0 px
            if not (x0 + 8 <= cx < x1 - 8 and y0 + 8 <= cy < y1 - 8) or not level.selected[i]:
                continue
            px, py = int((cx - x0) * scale), int((cy - y0) * scale)
            under = slide.read_region((int(cx), int(cy)), 0, (1, 1))[0, 0, :3].astype(float)
            got = figure[py, px]
            if values[i] >= 1.0:
                colour = colours[int(round(np.clip(values[i] / 3.0, 0, 1) * 255))]
                expected = 0.2 * under + 0.8 * colour  # the layer's opacity and colormap
                checked["shown"] += 1
            else:
                expected = under  # below the threshold: the slide, untouched
                checked["hidden"] += 1
            np.testing.assert_allclose(got, expected, atol=14, err_msg=f"tile {i}")
    assert checked["shown"] >= 2 and checked["hidden"] >= 1, checked

    # Cancel: nothing is left behind
    request = qt_export.ExportRequest.from_viewer(
        viewer, result, tmp_path / "cancelled.png", slide=dock._open_slide()
    )
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        request.write(cancel=stop)
    assert not list(tmp_path.glob("cancelled*"))
