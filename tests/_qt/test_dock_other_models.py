"""CrossFusion's per-magnification attention and VPTSurv's tile attention in the dock.

The dock is generic over a result's levels; these tests run the real models'
explain() on the sample slide and check every level becomes a heatmap aligned
to the slide: one pixel per tile, at the tile's level-0 position, in microns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_hila.results import PredictionResult

pytestmark = pytest.mark.gui

TINY_VIT = dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64)


def _result(explanation, slide_path, mpp: float, model_name: str) -> PredictionResult:
    return PredictionResult(
        slide_path=str(slide_path),
        slide_fingerprint="",
        mpp=mpp,
        model_name=model_name,
        model_label=f"{model_name} (untrained, test)",
        model_path="",
        explanation=explanation,
        time_bin_edges=np.array([0.0, 10.0, 20.0, 30.0, np.inf]),
    )


@pytest.fixture
def crossfusion_result(sample_slide, tmp_path):
    from napari_hila.features.extract import extract_slide
    from napari_hila.features.store import load_features
    from napari_hila.models import build_model, collate

    torch.manual_seed(0)
    path = extract_slide(
        sample_slide, tmp_path, encoder="hila-descriptor", magnifications=("5x", "10x", "20x")
    )
    feats = load_features(path)
    model = build_model("crossfusion", patch_dim=feats.features.shape[1], width=32, heads=4).eval()
    explanation = model.explain(collate([feats]))
    return _result(explanation, sample_slide, float(feats.attrs["mpp"]), "crossfusion")


@pytest.fixture
def vptsurv_result(sample_slide):
    from napari_hila.models import build_model
    from napari_hila.predict import explain_slide_tiles

    torch.manual_seed(0)
    model = build_model(
        "vptsurv", vit=TINY_VIT, decoder_dim=32, decoder_heads=4, dropout=0.0, tile_chunk=16
    ).eval()
    explanation, facts = explain_slide_tiles(model, sample_slide)
    return _result(explanation, sample_slide, facts.mpp, "vptsurv")


def _check_heatmaps_align(viewer, result):
    from napari_hila.overlays import OVERLAY_KEY

    heatmaps = {
        layer.metadata["level"]: layer
        for layer in viewer.layers
        if layer.metadata.get(OVERLAY_KEY) == "heatmap"
    }
    assert set(heatmaps) == set(result.explanation.levels)
    for name, level in result.explanation.levels.items():
        layer = heatmaps[name]
        data = np.asarray(layer.data)
        np.testing.assert_allclose(layer.scale, [level.tile_size * result.mpp] * 2, rtol=1e-6)
        # Each tile's centre, in microns, lands on the heatmap pixel that holds a value.
        centres_um = (level.coords[:, ::-1] + level.tile_size / 2) * result.mpp  # (y, x)
        index = np.round((centres_um - np.asarray(layer.translate)) / np.asarray(layer.scale))
        index = index.astype(int)
        assert np.isfinite(data[index[:, 0], index[:, 1]]).all(), f"{name}: tile off its pixel"
        assert np.count_nonzero(np.isfinite(data)) == len(level.coords)


def _show_in_dock(make_napari_viewer, sample_slide, result):
    """The sample open in a shown viewer, ``result`` displayed by the HiLa dock."""
    from napari_hila._qt.survival_dock import HilaSurvivalDock

    viewer = make_napari_viewer(show=True)
    viewer.open(sample_slide, plugin="napari-hila")
    dock = HilaSurvivalDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.show_result(result)
    return viewer


def test_crossfusion_levels_show_as_aligned_heatmaps(
    make_napari_viewer, sample_slide, crossfusion_result
):
    viewer = _show_in_dock(make_napari_viewer, sample_slide, crossfusion_result)
    levels = crossfusion_result.explanation.levels
    assert set(levels) == {"5x", "10x", "20x"}
    assert levels["5x"].tile_size == 4 * levels["20x"].tile_size
    _check_heatmaps_align(viewer, crossfusion_result)


def test_vptsurv_sampled_tiles_show_as_an_aligned_heatmap(
    make_napari_viewer, sample_slide, vptsurv_result
):
    viewer = _show_in_dock(make_napari_viewer, sample_slide, vptsurv_result)
    assert list(vptsurv_result.explanation.levels) == ["tiles"]
    _check_heatmaps_align(viewer, vptsurv_result)
