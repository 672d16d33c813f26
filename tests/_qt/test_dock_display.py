"""The dock's result-display path on a hand-built result: layers, prompts, gallery, hover."""

from __future__ import annotations

import numpy as np
import pytest
from hila_fake_results import PATCH_NAMES, REGION_NAMES, fake_result

from napari_hila import overlays
from napari_hila._qt.survival_dock import HilaSurvivalDock

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_and_dock(make_napari_viewer, sample_slide):
    viewer = make_napari_viewer(show=True)
    mpp = 0.499
    viewer.add_image(
        np.full((2967, 2220, 3), 230, np.uint8),
        rgb=True,
        scale=(mpp, mpp),
        name="sample",
        metadata={"slide_path": str(sample_slide)},
    )
    dock = HilaSurvivalDock(viewer)
    viewer.window.add_dock_widget(dock, name="HiLa survival")
    return viewer, dock


def overlay_layers(viewer, kind):
    return [ly for ly in viewer.layers if ly.metadata.get(overlays.OVERLAY_KEY) == kind]


def test_show_result_layers_prompts_gallery_hover(viewer_and_dock, sample_slide):
    viewer, dock = viewer_and_dock
    result = fake_result(str(sample_slide))
    assert dock.settings.slide_combo.count() == 1
    dock.show_result(result)
    heatmaps = overlay_layers(viewer, "heatmap")
    assert sorted(ly.metadata["level"] for ly in heatmaps) == ["patch", "region"]
    patch_heat = next(ly for ly in heatmaps if ly.metadata["level"] == "patch")
    np.testing.assert_allclose(patch_heat.scale, (256 * 0.499, 256 * 0.499))
    np.testing.assert_allclose(patch_heat.translate, ((20 + 127.5) * 0.499, (12 + 127.5) * 0.499))
    assert patch_heat.data.shape == (8, 6)  # one pixel per grid cell, not resampled
    assert len(overlay_layers(viewer, "selection")) == 1
    assert len(overlay_layers(viewer, "regions")) == 1
    assert "Risk score" in dock.result_panel.risk_label.text()
    text = dock.result_panel.risk_label.text()
    assert "High-risk group: above the model" in text and "71st percentile" in text
    # survival read from the model's curve at 1, 3 and 5 years (edges 0, 12, 24, 48, 96 months)
    s12, s36, s60 = result.survival_at([12.0, 36.0, 60.0])
    assert f"1 year <b>{100 * s12:.0f}%</b>" in text and f"5 years <b>{100 * s60:.0f}%</b>" in text
    assert f"3 years <b>{100 * s36:.0f}%</b>" in text
    assert "Slide:</b> CMU-1-Small-Region.svs" in dock.result_panel.slide_label.text()
    # a second result replaces the first's layers instead of stacking them
    # the user's colormap survives, the layer is updated in place, the data is new
    first_heat = dock.layers.heatmaps["patch"]
    first_heat.colormap = "magma"
    result = fake_result(str(sample_slide), seed=1)
    dock.show_result(result)
    assert len(overlay_layers(viewer, "heatmap")) == 2
    assert dock.layers.heatmaps["patch"] is first_heat and first_heat.colormap.name == "magma"
    level = result.explanation.levels["patch"]
    layout = overlays.grid_layout(level.coords, 256)
    np.testing.assert_allclose(
        first_heat.data[layout.rows, layout.cols], overlays.heatmap_values(level, 0)
    )
    first_heat.colormap = "turbo"

    # prompt switching, bar clicks, gallery and hover
    heat = dock.layers.heatmaps["patch"]
    heat.colormap = "magma"
    heat.opacity = 0.3
    dock.prompts.combos["patch"].setCurrentText("necrosis")
    assert dock.layers.heatmaps["patch"] is heat
    assert heat.metadata["prompt"] == "necrosis" and "necrosis" in heat.name
    assert heat.colormap.name == "magma" and heat.opacity == pytest.approx(0.3)
    level = result.explanation.levels["patch"]
    expected = overlays.heatmap_values(level, "necrosis")
    layout = overlays.grid_layout(level.coords, 256)
    np.testing.assert_allclose(heat.data[layout.rows, layout.cols], expected)
    assert "necrosis" in dock.prompts.text.text()
    # the region level has its own prompt list
    assert [dock.prompts.combos["region"].itemText(i) for i in range(3)] == REGION_NAMES
    dock.set_prompt("region", "glands")
    region_heat = dock.layers.heatmaps["region"]
    assert region_heat.metadata["prompt"] == "glands"
    # one heatmap at a time: the chosen level shows and is selected, the other hides
    assert region_heat.visible and not heat.visible
    assert viewer.layers.selection.active is region_heat

    # clicking a bar shows its prompt: simulate the pick on the "mitoses" bar
    bar = next(b for b, c in dock.prompts.chart.bars if c.name == "mitoses")
    dock.prompts.chart._on_pick(type("Pick", (), {"artist": bar})())
    assert dock.prompts.combos["patch"].currentText() == "mitoses"
    # ranked by absolute contribution: the strongest is drawn on top (last)
    assert dock.prompts.chart.bars[-1][1].name == PATCH_NAMES[0]
    assert len(dock.gallery.buttons) == 9
    level = result.explanation.levels["patch"]
    best = int(overlays.top_tokens(level, "mitoses", 1)[0])
    dock.gallery.buttons[0].click()
    x0, y0 = level.coords[best]
    np.testing.assert_allclose(
        viewer.camera.center[-2:], ((y0 + 127.5) * 0.499, (x0 + 127.5) * 0.499)
    )
    assert viewer.camera.zoom == pytest.approx(1 / 0.499)

    # hovering a tile names its score, selection, region and the prompt's alignment
    x0, y0 = level.coords[4]
    world = ((y0 + 10) * 0.499, (x0 + 10) * 0.499)
    dock.layers._on_mouse_move(viewer, type("Move", (), {"position": world})())
    # one short line: the map's value in its unit (x a uniform share), per level
    text = dock.prompts.hover_label.text()
    shown = dock.prompts.combos["patch"].currentText()
    value = overlays.heatmap_values(level, shown)[4]
    kept = "selected" if level.selected[4] else "not selected"
    assert text.startswith(f"patch 4 {kept}: {shown[:17]}") and f"{value:.2f}x uniform" in text
    region = int(level.parent[4])
    assert f" | region {region} " in text and len(text) <= 100
    full = (
        dock.prompts.hover_label.toolTip()
    )  # the long form: region, whole names, the unit spelled out
    assert f"region {region}" in full and "a uniform share" in full
    for layer in (
        dock.layers.heatmaps["patch"],
        *overlay_layers(viewer, "selection"),
        *overlay_layers(viewer, "regions"),
    ):  # napari's raw value (a number without unit, a label, a shape index) gives way
        status = layer.get_status(world, world=True)["coordinates"]
        assert status.endswith(": " + text), (layer.name, status)


def test_hover_line_fits_a_laptop_status_bar():
    from napari_hila._qt.layers import hover_line

    long = overlays.TokenInfo(
        level="patch",
        index=12345,
        score=0.1,
        selected=True,
        region=7,
        prompt="tumour cells infiltrating the surrounding desmoplastic stroma",
        alignment=2.345,
    )
    region = overlays.TokenInfo(
        level="region",
        index=7,
        score=-0.28,
        selected=False,
        region=-1,
        prompt="glandular architecture lost",
        alignment=0.5,
    )
    line = hover_line([long, region])
    # 18-character names make it 112 long: they are cut to 12, which fits exactly
    assert line == (
        "patch 12345 selected: tumour cell… 2.35x uniform | "
        "region 7 not selected: glandular a… 0.50x uniform"
    )
    assert len(line) == 100
    narrow = hover_line([long, region], max_chars=60)
    assert len(narrow) == 60 and narrow.endswith("…")
    assert hover_line([region]) == "region 7 not selected: glandular archite… 0.50x uniform"
