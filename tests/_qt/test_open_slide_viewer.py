"""A real napari viewer (under Xvfb) opens the sample: tissue on screen, scale bar, um."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _tissue_pixels(rgb: np.ndarray) -> float:
    """Share of pixels that look like H&E (pink/purple: red and blue above green)."""
    rgb = rgb[..., :3].astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float(((r - g > 25) & (b - g > 15)).mean())


def test_viewer_shows_sample_with_scale_bar(make_napari_viewer, sample_slide, qtbot):
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(sample_slide), plugin="napari-hila")
    viewer.reset_view()
    qtbot.waitUntil(
        lambda: _tissue_pixels(viewer.screenshot(canvas_only=True)) > 0.02, timeout=20000
    )
    shot = viewer.screenshot(canvas_only=True)
    assert shot[..., :3].std() > 20, "the canvas is blank"
    assert _tissue_pixels(shot) > 0.02
    np.testing.assert_allclose(layer.scale, [0.499, 0.499])
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert viewer.canvas.overlays.scale_bar.visible
    assert layer.metadata["objective_power"] == 20


def test_broken_slide_in_viewer_opens_nothing_and_raises_nothing(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    bad = tmp_path / "cut.svs"
    bad.write_bytes(b"")
    assert viewer.open(str(bad), plugin="napari-hila") == []
    assert len(viewer.layers) == 0
