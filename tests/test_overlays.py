"""Overlay geometry: heatmaps sit exactly on their tiles in napari's world frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hila_fake_results import PATCH_NAMES, fake_result
from napari.layers import Image, Labels, Layer

from napari_hila import overlays


@pytest.fixture
def result():
    return fake_result()


def test_grid_layout_recovers_lattice(result):
    level = result.explanation.levels["patch"]
    layout = overlays.grid_layout(level.coords, level.tile_size)
    assert layout.origin == (12, 20)
    assert layout.step == 256
    assert layout.shape == (8, 6)
    np.testing.assert_array_equal(layout.cols * 256 + 12, level.coords[:, 0])
    np.testing.assert_array_equal(layout.rows * 256 + 20, level.coords[:, 1])
    index = layout.index_image()
    assert (index >= 0).sum() == len(level.coords)
    assert index[layout.rows[5], layout.cols[5]] == 5
    assert index[0, 3] == -1  # token 3 was dropped as background


def test_grid_layout_overlapping_tiles_use_stride():
    coords = np.array([[0, 0], [128, 0], [256, 128]])
    layout = overlays.grid_layout(coords, 256)
    assert layout.step == 128
    assert layout.shape == (2, 3)


def test_heatmap_cells_align_with_slide_pixels(result):
    """Each heatmap pixel covers exactly its tile's level-0 pixels on the slide layer."""
    mpp = result.mpp
    level = result.explanation.levels["patch"]
    data, kwargs, kind = overlays.heatmap_layer(result, "patch", "necrosis")
    assert kind == "image"
    heat = Image(data, **kwargs)
    slide = Image(np.zeros((3000, 2300), np.uint8), scale=(mpp, mpp))
    layout = overlays.grid_layout(level.coords, level.tile_size)
    for i in (0, 7, len(level.coords) - 1):
        x0, y0 = level.coords[i]
        r, c = layout.rows[i], layout.cols[i]
        # the heatmap pixel's top-left edge and bottom-right edge, in slide pixels
        top_left = slide.world_to_data(heat.data_to_world((r - 0.5, c - 0.5)))
        bottom_right = slide.world_to_data(heat.data_to_world((r + 0.5, c + 0.5)))
        np.testing.assert_allclose(top_left, (y0 - 0.5, x0 - 0.5), atol=1e-6)
        np.testing.assert_allclose(bottom_right, (y0 + 255.5, x0 + 255.5), atol=1e-6)
        assert data[r, c] == pytest.approx(overlays.heatmap_values(level, "necrosis")[i])
    assert np.isnan(data[0, 3])  # no token there: transparent
    assert heat.metadata["prompt"] == "necrosis"
    assert "necrosis" in heat.name


def test_heatmap_values_are_relative_to_mean(result):
    level = result.explanation.levels["patch"]
    values = overlays.heatmap_values(level, 2)
    assert values.mean() == pytest.approx(1.0, rel=1e-5)
    column = level.maps[:, 2]
    np.testing.assert_allclose(values, column / column.mean(), rtol=1e-5)
    with pytest.raises(KeyError, match="no prompt 'nope'"):
        overlays.heatmap_values(level, "nope")


def test_token_at_and_info(result):
    level = result.explanation.levels["patch"]
    mpp = result.mpp
    x0, y0 = level.coords[10]
    inside = ((y0 + 0.0) * mpp, (x0 + 255.0) * mpp)  # first and last pixel centres
    assert overlays.token_at(level, inside, mpp) == 10
    outside = ((y0 + 0.0) * mpp, (x0 + 256.0) * mpp)  # first pixel of the next tile
    assert overlays.token_at(level, outside, mpp) != 10
    assert overlays.token_at(level, (-100.0, -100.0), mpp) == -1
    info = overlays.token_info(result, "patch", inside, "mitoses")
    assert info.index == 10
    assert info.selected == bool(level.selected[10])
    assert info.region == int(level.parent[10])
    assert "mitoses" in info.text() and "region" in info.text()


def test_selection_map_marks_selected_tiles(result):
    level = result.explanation.levels["patch"]
    data, kwargs, kind = overlays.selection_layer(result, "patch")
    layer = Layer.create(data, kwargs, kind)
    assert isinstance(layer, Labels) and data.dtype == np.uint8
    for i in range(len(level.coords)):
        x0, y0 = level.coords[i]
        world = ((y0 + 100) * result.mpp, (x0 + 100) * result.mpp)
        expected = overlays.SELECTED if level.selected[i] else overlays.NOT_SELECTED
        assert layer.get_value(world, world=True) == expected
    assert (data == 0).sum() == data.size - len(level.coords)  # holes stay empty
    assert kwargs["colormap"][overlays.NOT_SELECTED] == overlays.UNSELECTED_RGBA


def test_selection_map_of_a_large_slide_renders_without_numba():
    """100,000 patches: two label values, so napari's plain numpy colormap path works."""
    from napari.utils.colormaps import DirectLabelColormap

    big = fake_result(shape=(320, 320))
    data, kwargs, _ = overlays.selection_layer(big, "patch")
    assert len(big.explanation.levels["patch"].coords) > 80_000
    cmap = DirectLabelColormap(color_dict=kwargs["colormap"])
    colors = cmap.map(data.ravel()[:1000])
    assert colors.shape == (1000, 4)


def test_region_outlines_on_pixel_edges(result):
    level = result.explanation.levels["region"]
    data, kwargs, kind = overlays.region_outline_layer(result, "region")
    assert kind == "shapes" and len(data) == len(level.coords)
    layer = Layer.create(data, kwargs, kind)
    x0, y0 = level.coords[1]
    corners = np.array([layer.data_to_world(v) for v in layer.data[1]])
    mpp = result.mpp
    np.testing.assert_allclose(corners.min(axis=0), ((y0 - 0.5) * mpp, (x0 - 0.5) * mpp))
    np.testing.assert_allclose(corners.max(axis=0), ((y0 + 1023.5) * mpp, (x0 + 1023.5) * mpp))
    assert list(layer.features["selected"]) == list(level.selected)


def test_tissue_mask_alignment(result):
    from napari_hila.slides import TissueMask

    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    specs = overlays.result_layers(result, tissue=TissueMask(mask, 16.0))
    data, kwargs, kind = specs[0]
    layer = Layer.create(data, kwargs, kind)
    assert layer.metadata[overlays.OVERLAY_KEY] == "tissue"
    mpp = result.mpp
    # mask pixel (2, 3) covers level-0 pixels y 32..47, x 48..63
    np.testing.assert_allclose(
        layer.data_to_world((2 - 0.5, 3 - 0.5)), ((32 - 0.5) * mpp, (48 - 0.5) * mpp)
    )
    layer.visible = True
    assert layer.get_value((32 * mpp, 48 * mpp), world=True) == 1
    assert layer.get_value((48 * mpp, 111 * mpp), world=True) == 1  # row 3, col 6
    assert layer.get_value((48 * mpp, 112 * mpp), world=True) == 0  # row 3, col 7
    assert layer.get_value((31 * mpp, 48 * mpp), world=True) == 0  # row 1


def test_result_layers_one_heatmap_per_level(result):
    layers = [
        Layer.create(*spec) for spec in overlays.result_layers(result, {"patch": "lymphocytes"})
    ]
    kinds = [(ly.metadata.get(overlays.OVERLAY_KEY), ly.metadata.get("level")) for ly in layers]
    assert kinds.count(("heatmap", "patch")) == 1
    assert kinds.count(("heatmap", "region")) == 1
    assert ("selection", "patch") in kinds and ("regions", "region") in kinds
    heat = next(
        ly for ly in layers if ly.metadata.get("level") == "patch" and "prompt" in ly.metadata
    )
    assert heat.metadata["prompt"] == "lymphocytes"
    assert heat.metadata["prompt_text"].startswith("Tumour shows lymphocytes")
    assert heat.visible  # the patch heatmap shows; the region one waits to be switched on
    assert not next(
        ly for ly in layers if ly.metadata.get("level") == "region" and "prompt" in ly.metadata
    ).visible


def test_top_tokens_and_camera(result):
    level = result.explanation.levels["patch"]
    top = overlays.top_tokens(level, PATCH_NAMES[0], 5)
    column = level.maps[:, 0]
    assert list(column[top]) == sorted(column, reverse=True)[:5]
    center, zoom = overlays.camera_for_token(level, int(top[0]), result.mpp)
    x0, y0 = level.coords[top[0]]
    assert center == pytest.approx(((y0 + 127.5) * result.mpp, (x0 + 127.5) * result.mpp))
    assert zoom == pytest.approx(1 / result.mpp)


def test_card_cindex_from_trainer_metrics():
    from napari_hila._qt.model_picker import card_summary, cross_validated_cindex

    metrics = {"c_index_per_fold": [0.6, 0.7], "c_index_mean": 0.65, "c_index_std": 0.0707}
    assert cross_validated_cindex(metrics) == (0.65, 0.0707)
    assert cross_validated_cindex({"c_index": [0.6, 0.7]}) == pytest.approx((0.65, 0.0707107))
    text = card_summary({"model": "hila", "label": "x (synthetic)", "metrics": metrics})
    assert "0.650 &plusmn; 0.071" in text and "Not for clinical use" in text


def test_maps_share_one_fixed_scale_and_flag_near_uniform(result):
    """Every heatmap layer has the same limits and colormap whatever its values."""
    level = result.explanation.levels["patch"]
    limits = {
        overlays.heatmap_layer(result, "patch", k)[1]["contrast_limits"]
        for k in range(len(level.map_names))
    }
    assert limits == {overlays.MAP_LIMITS}
    flat = dataclasses.replace(level, maps=np.ones_like(level.maps) * 0.3)
    assert "uninformative" in overlays.map_label(flat, 0)
    spread = dataclasses.replace(
        level, maps=np.linspace(0.2, 2.5, level.maps.size).reshape(level.maps.shape)
    )
    assert "uninformative" not in overlays.map_label(spread, 0)


def test_blend_map_draws_the_fixed_scale_over_tissue():
    pixels = np.full((2, 3, 3), 200, np.uint8)
    values = np.array([[0.0, 3.0, np.nan], [1.5, 30.0, -1.0]])
    out = overlays.blend_map(pixels, values, "gray", opacity=1.0)
    assert out[0, 2].tolist() == [200, 200, 200]  # no token: tissue untouched
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [255, 255, 255] and out[1, 2].tolist() == [0, 0, 0]  # saturate
    assert 120 < out[1, 0, 0] < 135  # 1.5 is half-way on 0..3
    half = overlays.blend_map(pixels, values, "gray", opacity=0.5)
    assert half[0, 0].tolist() == [100, 100, 100]


def test_tile_lookup_matches_linear_scan(result):
    """The grid lookup the hover uses finds the same tile as checking every tile."""
    level = result.explanation.levels["patch"]
    lookup = overlays.TileLookup(result, "patch", "mitoses")
    rng = np.random.default_rng(1)
    points = rng.uniform(-50, 2300, size=(400, 2)) * result.mpp
    for y, x in points:
        assert lookup.token((y, x)) == overlays.token_at(level, (y, x), result.mpp)
    hits = sum(lookup.token((y, x)) >= 0 for y, x in points)
    assert 50 < hits < 400  # the sample covered tiles, holes and the outside
