"""Export: annotated screenshot with burned-in annotations, region figure, GeoJSON, CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hila_fake_results import fake_card, fake_result
from matplotlib.image import imread

from napari_hila import overlays
from napari_hila._qt import export as qt_export
from napari_hila._qt.app import launch_viewer, survival_dock_of
from napari_hila._qt.km_dock import KaplanMeierDock
from napari_hila._qt.layers import slide_path_of
from napari_hila._qt.survival_dock import HilaSurvivalDock

pytestmark = pytest.mark.gui


def test_nice_length():
    assert qt_export.nice_length(730.0) == 500.0
    assert qt_export.nice_length(199.0) == 100.0
    assert qt_export.nice_length(2.4) == 2.0


def longest_dark_run(rows: np.ndarray) -> int:
    """Longest horizontal run of near-black pixels in any row of an RGB block."""
    best = 0
    for row in rows.max(axis=2) < 60:
        run = 0
        for dark in row:
            run = run + 1 if dark else 0
            best = max(best, run)
    return best


def test_compose_annotated_burns_text_and_scale_bar():
    image = np.full((300, 400, 3), 128, np.uint8)
    plain = qt_export.compose_annotated(image, 1.0, "", "")
    annotated = qt_export.compose_annotated(
        image, 1.0, "HiLa demo - risk -2.1", "prompt: necrosis", "viridis", (0.0, 2.0), "alignment"
    )
    assert annotated.shape[1:] == (400, 3) and annotated.shape[0] > 300 + 40
    np.testing.assert_array_equal(annotated[:300, :, :3], image)  # the image keeps its pixels
    band = annotated[300:, :, :3]
    band_plain = np.full_like(band, 255)
    changed = np.abs(band.astype(int) - band_plain).sum(axis=2) > 0
    assert changed[:, :260].mean() > 0.01  # the title and details text
    assert changed[:, 260:].mean() > 0.05  # the colorbar
    # scale bar: 0.25 * 400 um rounds down to 100 um = 100 px at 1 um/px
    assert 98 <= longest_dark_run(plain[300:, :, :3]) <= 102
    half = qt_export.compose_annotated(image, 0.5, "", "")  # 0.5 um/px: 50 um = 100 px
    assert 98 <= longest_dark_run(half[300:, :, :3]) <= 102


def test_map_paint_covers_exact_tiles():
    import matplotlib

    from napari_hila import overlays

    coords = np.array([[100, 50], [164, 50], [100, 114]])  # 64-px tiles, one hole at (164, 114)
    layout = overlays.grid_layout(coords, 64)
    grid = layout.paint(np.array([1.0, 2.0, 0.0]))
    pixels = np.full((200, 300, 3), 255, np.uint8)
    paint = overlays.CellPaint.of_map(layout, grid, matplotlib.colormaps["gray"], (0.0, 2.0), 1.0)
    out = overlays.paint_cells(pixels, (0, 0, 300, 200), [paint])
    assert out[50, 100].tolist() == [128, 128, 128]  # first pixel of tile 0: value 1 of 2
    assert out[113, 163].tolist() == [128, 128, 128]  # last pixel of tile 0
    assert out[50, 164].tolist() == [255, 255, 255]  # tile 1: value 2 -> white
    assert out[114, 100].tolist() == [0, 0, 0]  # tile 2: value 0 -> black
    assert out[114, 164].tolist() == [255, 255, 255]  # the hole keeps the slide
    assert out[49, 100].tolist() == [255, 255, 255]  # just above the grid


class TwoLevelSlide:
    """A slide of two levels held in memory: level 1 is level 0's 4 x 4 block means."""

    path = "two-level.svs"

    def __init__(self, width: int, height: int) -> None:
        rng = np.random.default_rng(0)
        self.levels = [rng.integers(0, 256, (height // 4, width // 4, 3)).astype(np.uint8)]
        self.level_dimensions = [(width, height), (width // 4, height // 4)]
        self.level_downsamples = [1.0, 4.0]
        self.reads = []

    def read_region(self, location, level, size):
        assert level == 1, "the export reads the level that matches its size"
        self.reads.append((location, level, size))
        x, y = location[0] // 4, location[1] // 4
        return self.levels[0][y : y + size[1], x : x + size[0]]


def test_read_view_reduces_by_a_whole_factor_when_that_keeps_the_size():
    slide = TwoLevelSlide(4004, 3000)  # level 1: 1001 x 750 px
    level = slide.levels[0].astype(float)
    view, box = qt_export.read_view(slide, (0, 0, 4004, 3000), 600)
    # 1001 px to at most 600: halved (500 px, 5/6 of it) rather than resampled
    assert view.shape == (375, 500, 3)
    assert box == (0, 0, 4000, 3000)  # what the pixels show: whole 2 x 2 blocks only
    means = level[:750, :1000].reshape(375, 2, 500, 2, 3).mean(axis=(1, 3))
    assert np.abs(view - means).max() <= 0.5 + 1e-9
    # halving would keep only 500 of 900 px: resampled to 900 instead, the whole read shown
    view, box = qt_export.read_view(slide, (0, 0, 4004, 3000), 900)
    assert view.shape == (674, 900, 3) and box == (0, 0, 4004, 3000)
    # a read within the size is returned as read
    view, box = qt_export.read_view(slide, (400, 800, 2400, 2000), 500)
    assert view.shape == (300, 500, 3) and box == (400, 800, 2400, 2000)
    np.testing.assert_array_equal(view, slide.levels[0][200:500, 100:600])


def test_launch_viewer_then_export(make_napari_viewer, sample_slide, tmp_path):
    """launch_viewer (used by `view` and `demo`) on a saved result, then Export."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "card.json").write_text(json.dumps(fake_card()))
    result = fake_result(str(sample_slide), mpp=0.499)
    result.model_path = str(model)
    result.save(tmp_path / "result")
    viewer = make_napari_viewer(show=True)
    launch_viewer(sample_slide, result=tmp_path / "result", model=model, viewer=viewer)
    slides = [ly for ly in viewer.layers if slide_path_of(ly)]
    assert len(slides) == 1 and slides[0].multiscale  # the reader's layer
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
    assert any(ly.metadata.get(overlays.OVERLAY_KEY) == "tissue" for ly in viewer.layers)
    dock = survival_dock_of(viewer)
    assert isinstance(dock, HilaSurvivalDock)
    card_text = dock.settings.model_picker.card_label.text()
    assert "cross-validated C-index: 0.660 &plusmn; 0.040" in card_text
    assert "60 patients" in card_text and "Not for clinical use" in card_text
    # this card comes without weights: the view says the prompt statistics are unavailable
    assert "prompt statistics unavailable" in card_text and "safetensors" in card_text
    km = next(w for name, w in viewer.window.dock_widgets.items() if "Kaplan-Meier" in name)
    assert isinstance(km, KaplanMeierDock) and km.result is dock.result

    dock.set_prompt("patch", "necrosis")
    dock.center_on_tile("patch", 10)  # full resolution: the region figure stays small
    viewer.camera.zoom /= 2
    on_screen = viewer.screenshot(canvas_only=True, flash=False)
    plain = qt_export.canvas_screenshot(viewer)
    assert plain[..., :3].std() > 5  # the canvas rendered (not blank)
    # napari's own scale bar and colour bar are on screen; the export's band draws the
    # one of each, so the captured canvas leaves napari's out and puts them back after
    assert viewer.scale_bar.visible and dock.layers.heatmaps["patch"].colorbar.visible
    assert np.abs(on_screen[..., :3].astype(int) - plain[..., :3]).max() > 100
    assert viewer.scale_bar.visible and dock.layers.heatmaps["patch"].colorbar.visible
    regions = dock.result.explanation.levels["region"]
    regions.coords = regions.coords.copy()
    regions.coords[0, 0] = 2120  # a region 100 px from the slide's right edge, running past it
    written = dock.export(tmp_path / "case.png")
    assert set(written) == {"screenshot", "region", "geojson", "csv"}
    shot = (imread(written["screenshot"])[..., :3] * 255).round().astype(int)
    assert shot.shape[0] > plain.shape[0] + qt_export.band_height(plain.shape[1]) // 2
    np.testing.assert_allclose(shot[: plain.shape[0]], plain[..., :3], atol=1)  # view kept as shown
    assert viewer.scale_bar.visible and dock.layers.heatmaps["patch"].colorbar.visible
    band = shot[plain.shape[0] :]
    assert (band.min(axis=2) < 100).mean() > 0.01  # dark text/colorbar on the white band
    region = imread(written["region"])
    x0, y0, x1, y1 = qt_export.view_bbox(viewer, result.mpp)
    assert region.shape[1] == min(x1, 2220) - max(x0, 0)  # full resolution, cropped to the slide
    assert region[..., :3].std() > 0.02
    features = json.loads(written["geojson"].read_text())["features"]
    patches = [f for f in features if f["properties"]["objectType"] == "detection"]
    assert len(patches) == len(level.coords)  # every tile, with its selection
    with open(written["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["level"] == "patch" for r in rows) == len(level.coords)
    # the rectangles stop at the slide's edge (2220 px wide), as the viewer's outlines do
    ring = np.array(
        next(f for f in features if f["properties"]["name"] == "region 0")["geometry"][
            "coordinates"
        ][0]
    )
    assert ring[:, 0].min() == 2120 and ring[:, 0].max() == 2220
    assert [r["width"] for r in rows if r["level"] == "region"][0] == "100"


def test_view_bbox_matches_camera(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((1000, 1000)), scale=(0.5, 0.5))
    viewer.camera.center = (100.0, 200.0)
    viewer.camera.zoom = 2.0  # 2 screen px per um
    x0, y0, x1, y1 = qt_export.view_bbox(viewer, 0.5)
    height, width = viewer.canvas.size
    assert (x0 + x1) / 2 == pytest.approx(400, abs=1)
    assert (y0 + y1) / 2 == pytest.approx(200, abs=1)
    assert x1 - x0 == pytest.approx(width / 2 / 0.5, abs=2)
