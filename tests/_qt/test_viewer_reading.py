"""The viewer as a pathologist reads it: one result per slide, result first, legends, units.

Real napari viewers under Xvfb, the sample slide opened with the plugin's reader.
"""

from __future__ import annotations

import numpy as np
import pytest
from hila_fake_results import fake_card, fake_result
from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QApplication

from napari_hila import overlays
from napari_hila._qt.app import launch_viewer, survival_dock_of
from napari_hila._qt.km_dock import km_dock_for
from napari_hila.errors import HilaError

pytestmark = pytest.mark.gui


def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        QApplication.processEvents()


@pytest.fixture
def card_dir(tmp_path):
    import json

    model = tmp_path / "model"
    model.mkdir()
    (model / "card.json").write_text(json.dumps(fake_card()))
    return model


def open_viewer(make_napari_viewer, sample_slide, card_dir, size=None):
    viewer = make_napari_viewer(show=True)
    if size is not None:
        viewer.window._qt_window.resize(*size)
        settle()
    launch_viewer(sample_slide, viewer=viewer, model=card_dir)
    dock = survival_dock_of(viewer)
    result = fake_result(str(sample_slide))
    result.model_path = str(card_dir)
    result.warnings = ["this model was trained on a synthetic demo cohort: not for clinical use"]
    return viewer, dock, result


def _qt_dock_of(widget):
    from qtpy.QtWidgets import QDockWidget

    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def window_rect(widget, window) -> QRect:
    return QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())


def test_result_is_tied_to_its_slide(make_napari_viewer, sample_slide, card_dir, tmp_path):
    viewer, dock, result = open_viewer(make_napari_viewer, sample_slide, card_dir)
    dock.show_result(result)
    slide = dock.result_slide_layer()
    assert slide is not None and dock.result_is_current()
    assert "CMU-1-Small-Region.svs" in dock.result_panel.slide_label.text()
    assert "case CMU-1" in dock.result_panel.slide_label.text()  # Aperio's Filename field
    assert (
        not dock.result_panel.stale_label.isVisible() and dock.result_panel.risk_label.isEnabled()
    )
    # the tissue type the model and prompts are for; the Aperio sample records no organ
    assert "Model and prompts for test;" in dock.result_panel.slide_label.text()
    assert "does not record the organ" in dock.result_panel.slide_label.text()
    assert "may not apply" not in dock.result_panel.warnings_label.text()
    # a breast model on a slide whose file records skin: said, in the dock, naming the field
    from napari_hila.modelfile import ModelCard

    slide_props = slide.metadata.get("properties") or {}
    slide.metadata = {
        **slide.metadata,
        "properties": {**slide_props, "dicom.BodyPartExamined": "SKIN"},
    }
    dock.show_result(result, card=ModelCard.of({**fake_card(), "cancer_type": "BRCA"}))
    assert "records skin (dicom.BodyPartExamined: SKIN)" in dock.result_panel.slide_label.text()
    assert (
        "for breast" in dock.result_panel.warnings_label.text()
        and dock.result_panel.warnings_label.isVisibleTo(dock)
    )
    assert (
        "not for clinical use" in dock.result_panel.warnings_label.text()
    )  # the result's own stay
    slide.metadata = {**slide.metadata, "properties": slide_props}
    # one state: result, mask and card are replaced together, never set one by one
    breast = dock.shown
    dock.show_result(result, card=ModelCard.of(fake_card()))
    assert dock.shown is not breast and dock.card.cancer_type == "test"
    assert dock.result is dock.shown.result and dock.tissue is dock.shown.tissue
    with pytest.raises(AttributeError):
        dock.result = None
    dock.show_result(result)  # no card given: the same model's card stays
    assert dock.card.cancer_type == "test"
    overlays_shown = [ly for ly in dock.layers.layers if ly.visible]
    assert overlays_shown

    # a second slide is chosen: the result greys out and its layers hide
    other = viewer.add_image(
        np.full((64, 64, 3), 200, np.uint8),
        rgb=True,
        name="second.svs",
        metadata={"slide_path": str(tmp_path / "second.svs")},
    )
    dock.settings.slide_combo.setCurrentIndex(dock.settings.slide_combo.findData(other))
    assert not dock.result_is_current()
    assert (
        dock.result_panel.stale_label.isVisibleTo(dock)
        and "not for second.svs" in dock.result_panel.stale_label.text()
    )
    assert not dock.result_panel.risk_label.isEnabled() and not dock.prompts.isEnabled()
    assert not any(ly.visible for ly in dock.layers.layers)
    with pytest.raises(HilaError, match="choose CMU-1-Small-Region.svs"):
        dock.export(tmp_path / "wrong.png")
    assert not (tmp_path / "wrong.png").exists()

    # choosing the result's slide again brings back exactly the layers that were shown
    dock.settings.slide_combo.setCurrentIndex(dock.settings.slide_combo.findData(slide))
    assert dock.result_is_current() and not dock.result_panel.stale_label.isVisibleTo(dock)
    assert [ly for ly in dock.layers.layers if ly.visible] == overlays_shown

    # the result's slide is removed: greyed out, hidden, Export refused naming the file
    viewer.layers.remove(slide)
    assert dock.result_slide_layer() is None
    assert "no longer open" in dock.result_panel.stale_label.text()
    assert not any(ly.visible for ly in dock.layers.layers if ly in viewer.layers)
    assert dock.start_export(tmp_path / "gone.png") is False  # refused, with a notification
    with pytest.raises(HilaError, match="no longer open"):
        dock.export(tmp_path / "gone.png")
    assert not list(tmp_path.glob("gone*"))


LONG_NAME = "CMU-1-Small-Region_rescanned-2026-11-30_batch-0042_" * 2 + "x.svs"


@pytest.mark.parametrize(
    "size,font_size,slide_name",
    [
        ((1366, 768), None, None),
        ((1920, 1080), None, None),
        # a laptop with a larger font and a long file name: Run and Export stay in view
        ((1366, 768), 13, LONG_NAME),
    ],
)
def test_result_visible_without_scrolling(
    make_napari_viewer, sample_slide, card_dir, tmp_path, size, font_size, slide_name
):
    from napari.settings import get_settings

    appearance = get_settings().appearance
    default_font = appearance.font_size
    if slide_name is not None:
        (tmp_path / slide_name).symlink_to(sample_slide)
        sample_slide = tmp_path / slide_name
    try:
        if font_size is not None:
            appearance.font_size = font_size  # napari's theme font, 9 pt by default
        _check_result_visible(make_napari_viewer, sample_slide, card_dir, size, font_size)
    finally:
        appearance.font_size = default_font


def _check_result_visible(make_napari_viewer, sample_slide, card_dir, size, font_size):
    viewer, dock, result = open_viewer(make_napari_viewer, sample_slide, card_dir, size)
    dock.show_result(result)
    settle(10)
    window = viewer.window._qt_window
    assert (window.width(), window.height()) == size
    if font_size is not None:  # the larger font reached the dock
        assert dock.result_panel.risk_label.fontInfo().pointSize() >= font_size
    viewport = window_rect(dock.scroll.viewport(), window)
    assert dock.scroll.verticalScrollBar().value() == 0
    # with a larger font and a long name the result's first lines stay in view (the
    # rest scrolls); with the default font the whole result panel and chart fit too
    important = [dock.result_panel.slide_label, dock.result_panel.risk_label]
    if font_size is None:
        important += [
            dock.result_panel.warnings_label,
            dock.result_panel.legend,
            dock.result_panel.threshold_check,
            *dock.prompts.combos.values(),
            dock.prompts.chart,
            dock.prompts.hover_label,
        ]
    for widget in important:
        rect = window_rect(widget, window)
        assert widget.isVisible(), widget
        assert window.rect().contains(rect), (widget, rect, window.rect())
        assert viewport.contains(rect), (widget, rect, viewport)  # no scrolling needed
    # Run, Cancel, the progress bar, its stage and Export stay in view after a result,
    # pinned under it (whatever the font and the slide's name)
    dock_rect = window_rect(dock, window)
    result_bottom = window_rect(dock.result_panel.risk_label, window).bottom()
    for widget in (
        dock.run_panel.export_button,
        dock.run_panel.run_button,
        dock.run_panel.cancel_button,
        dock.run_panel.progress,
        dock.run_panel.stage_label,
    ):
        rect = window_rect(widget, window)
        assert widget.isVisible() and window.rect().contains(rect), (widget, rect)
        assert dock_rect.contains(rect) and not viewport.intersects(rect), (widget, rect)
        assert rect.top() > result_bottom
    # the result's lines are not cut on the right: the content fits the dock's width, and
    # a long file name wraps rather than widening the dock
    assert dock.scroll.widget().width() <= dock.scroll.viewport().width()
    assert dock.width() < 450, dock.width()
    # the Kaplan-Meier figure shows whole: beside the dock on a wide window, a tab on a laptop
    km = km_dock_for(dock.viewer, create=False)  # napari hands plugins a proxy of the viewer
    assert km is not None
    if size[0] < 1600:
        assert km.visibleRegion().isEmpty()  # a tab behind the HiLa dock, which is in front
        _qt_dock_of(km).raise_()
        settle(10)
    assert not km.visibleRegion().isEmpty()
    km_viewport = window_rect(km.scroll.viewport(), window)
    canvas = window_rect(km.canvas, window)
    assert window.rect().contains(canvas) and km_viewport.contains(canvas), (canvas, km_viewport)


def test_heatmap_colourbar_legend_threshold(make_napari_viewer, sample_slide, card_dir):
    viewer, dock, result = open_viewer(make_napari_viewer, sample_slide, card_dir)
    dock.show_result(result)
    heat = dock.layers.heatmaps["patch"]
    assert heat.colorbar.visible and dock.layers.heatmaps["region"].colorbar.visible
    assert "x uniform share" in heat.name
    assert tuple(heat.contrast_limits) == overlays.MAP_LIMITS
    assert "x a uniform share" in dock.result_panel.legend.unit.text()
    assert dock.result_panel.legend.limits.text() == "0 – 3+"
    # the legend's ramp is the layer's colormap: its ends are the colormap's ends
    ramp = dock.result_panel.legend.ramp.pixmap().toImage()
    first, last = ramp.pixelColor(0, 5), ramp.pixelColor(ramp.width() - 1, 5)
    low, high = np.asarray(heat.colormap.map(np.array([0.0, 1.0])))[:, :3] * 255
    np.testing.assert_allclose([first.red(), first.green(), first.blue()], low, atol=4)
    np.testing.assert_allclose([last.red(), last.green(), last.blue()], high, atol=4)
    assert "not selected" in dock.result_panel.legend.unselected.text()
    # the contribution chart follows the theme, as the Kaplan-Meier dock does
    from matplotlib.colors import to_hex

    viewer.theme = "dark"
    dark = to_hex(dock.prompts.chart.figure.get_facecolor())
    viewer.theme = "light"
    assert to_hex(dock.prompts.chart.figure.get_facecolor()) != dark
    viewer.theme = "dark"

    # only tiles at or above the threshold are drawn; the others become transparent
    level = result.explanation.levels["patch"]
    layout = overlays.grid_layout(level.coords, level.tile_size)
    values = overlays.heatmap_values(level, 0)
    dock.result_panel.threshold_spin.setValue(1.2)
    dock.result_panel.threshold_check.setChecked(True)
    drawn = heat.data[layout.rows, layout.cols]
    assert np.all(np.isnan(drawn[values < 1.2])) and np.all(np.isfinite(drawn[values >= 1.2]))
    np.testing.assert_allclose(drawn[values >= 1.2], values[values >= 1.2])
    assert heat.metadata["threshold"] == pytest.approx(1.2)
    assert "below 1.2 hidden" in dock.result_panel.legend.unit.text()
    # a prompt switch keeps the threshold; unticking draws every tile again
    dock.set_prompt("patch", "necrosis")
    necrosis = overlays.heatmap_values(level, "necrosis")
    assert np.all(np.isnan(heat.data[layout.rows, layout.cols][necrosis < 1.2]))
    dock.result_panel.threshold_check.setChecked(False)
    np.testing.assert_allclose(heat.data[layout.rows, layout.cols], necrosis)

    # the region map lies on the patches: no colour where there is no tissue patch
    region_heat = dock.layers.heatmaps["region"]
    assert region_heat.data.shape == heat.data.shape
    holes = np.ones(layout.shape, bool)
    holes[layout.rows, layout.cols] = False
    assert holes.any() and np.all(np.isnan(region_heat.data[holes]))
    # region outlines stop at the slide's edge (the sample is 2220 x 2967 px)
    outlines = next(ly for ly in dock.layers.layers if ly.metadata.get("hila_overlay") == "regions")
    corners = np.concatenate([np.asarray(r) for r in outlines.data])
    assert corners[:, 1].max() <= 2220 - 0.5 and corners[:, 0].max() <= 2967 - 0.5


def test_no_unit_warning_from_plugin_layers_and_plain_layers_get_units(
    make_napari_viewer, sample_slide, card_dir, monkeypatch
):
    import napari._vispy.canvas as vispy_canvas

    import napari_hila._qt.survival_dock as survival_dock

    said: list[str] = []
    monkeypatch.setattr(vispy_canvas, "show_warning", lambda message: said.append(str(message)))
    notes: list[str] = []
    monkeypatch.setattr(survival_dock, "show_info", lambda message: notes.append(str(message)))

    # control: napari warns for a layer in pixels beside one in microns
    control = make_napari_viewer(show=True)
    control.add_image(np.zeros((8, 8)), scale=(0.5, 0.5), units=("um", "um"))
    control.add_image(np.zeros((8, 8)))
    control.screenshot(canvas_only=True, flash=False)
    assert any("Inconsistent units" in s for s in said)
    control.layers.clear()  # it would warn again whenever it redraws
    settle()
    said.clear()

    viewer, dock, result = open_viewer(make_napari_viewer, sample_slide, card_dir)
    dock.show_result(result)
    dock.set_prompt("region", "glands")
    viewer.screenshot(canvas_only=True, flash=False)
    assert not said  # slide, heatmaps, selection and outlines all carry the slide's units

    # a plain image: napari's core handler draws it and warns once before any plugin
    # callback runs (napari orders its own callbacks first); then the layer takes the
    # slide's pixel size and units, no redraw warns again, and the dock says so once
    slide = dock.result_slide_layer()
    plain = viewer.add_image(np.zeros((50, 50)), name="a mask")
    assert len(said) == 1
    assert tuple(str(u) for u in plain.units) == tuple(str(u) for u in slide.units)
    np.testing.assert_allclose(plain.scale, slide.scale[-2:])
    viewer.screenshot(canvas_only=True, flash=False)
    viewer.screenshot(canvas_only=True, flash=False)
    assert len(said) == 1  # the units hold: napari does not warn on later draws
    assert str(viewer.layers.extent.units[-1]) == "micrometer"  # the scale bar keeps its unit
    viewer.add_labels(np.zeros((50, 50), np.uint8), name="labels")
    viewer.screenshot(canvas_only=True, flash=False)
    assert len(said) == 2
    assert len(notes) == 1 and "a mask" in notes[0] and "0.499 um/px" in notes[0]  # said once
    assert "no longer applies" in notes[0]
    # a layer the user gave units of their own is left alone (and is not talked about)
    own = viewer.add_image(np.zeros((10, 10)), scale=(2.0, 2.0), units=("nm", "nm"), name="own")
    assert tuple(str(u) for u in own.units) == ("nanometer", "nanometer")
    np.testing.assert_allclose(own.scale, (2.0, 2.0))
    assert len(notes) == 1
