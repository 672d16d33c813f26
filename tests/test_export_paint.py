"""Maps painted per grid cell at an export's size (overlays.CellPaint, overlays.paint_cells).

The reference is written out pixel by pixel here: each output pixel's centre
picks its cell, and the layers are blended one after the other in float64 with
matplotlib's colormap, as napari's translucent blending draws them.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps

from napari_hila import overlays


def lattice(seed=0, shape=(7, 9), step=64, origin=(40, 24), holes=0.3):
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(rng.random(shape) > holes)
    coords = np.stack([origin[0] + cols * step, origin[1] + rows * step], 1)
    layout = overlays.grid_layout(coords, step)
    values = rng.uniform(-0.5, 3.5, len(coords))
    values[rng.random(len(coords)) < 0.2] = np.nan  # below a threshold: not drawn
    return layout, layout.paint(values)


def reference(pixels, bbox, layers):
    """Per pixel, in float64: each layer's cell under the pixel's centre, blended in turn."""
    out = pixels.astype(np.float64)
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = bbox
    for layout, keep_add in layers:
        for r in range(height):
            y = y0 + (r + 0.5) * (y1 - y0) / height
            row = int(np.floor((y - layout.origin[1]) / layout.step))
            for c in range(width):
                x = x0 + (c + 0.5) * (x1 - x0) / width
                col = int(np.floor((x - layout.origin[0]) / layout.step))
                if 0 <= row < layout.shape[0] and 0 <= col < layout.shape[1]:
                    keep, add = keep_add(row, col)
                    out[r, c] = out[r, c] * keep + add
    return out


def map_cell(grid, cmap, opacity):
    def keep_add(row, col):
        value = grid[row, col]
        if not np.isfinite(value):
            return 1.0, 0.0
        colour = np.asarray(cmap(np.clip(value / 3.0, 0.0, 1.0)))[:3] * 255
        return 1.0 - opacity, opacity * colour

    return keep_add


def veil_cell(mask, rgba):
    def keep_add(row, col):
        if not mask[row, col]:
            return 1.0, 0.0
        return 1.0 - rgba[3], rgba[3] * 255 * np.asarray(rgba[:3])

    return keep_add


@pytest.mark.parametrize(
    "bbox,size",
    [
        ((0, 0, 700, 520), (130, 175)),  # whole lattice and its margin, 4 level-0 px per px
        ((100, 60, 420, 300), (240, 320)),  # one level-0 px per output px: exact tile edges
        ((231, 157, 333, 229), (90, 127)),  # enlarged, not a whole factor
    ],
)
def test_map_and_veil_match_a_per_pixel_blend(bbox, size):
    rng = np.random.default_rng(3)
    layout, grid = lattice()
    mask = rng.random(layout.shape) < 0.4
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    cmap = colormaps["viridis"]
    paints = [
        overlays.CellPaint.of_map(layout, grid, cmap, (0.0, 3.0), 0.7),
        overlays.CellPaint.of_mask(layout, mask, overlays.UNSELECTED_RGBA),
    ]
    out = overlays.paint_cells(pixels, bbox, paints)
    expected = reference(
        pixels,
        bbox,
        [(layout, map_cell(grid, cmap, 0.7)), (layout, veil_cell(mask, overlays.UNSELECTED_RGBA))],
    )
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    assert np.abs(out - expected).max() <= 0.5 + 1e-3  # rounded once, not once per layer
    # the map alone is blend_map's, the one renderer, on the same cells
    alone = overlays.paint_cells(pixels, bbox, paints[:1])
    values = np.full(size, np.nan)
    for r in range(size[0]):
        for c in range(size[1]):
            x = bbox[0] + (c + 0.5) * (bbox[2] - bbox[0]) / size[1]
            y = bbox[1] + (r + 0.5) * (bbox[3] - bbox[1]) / size[0]
            row = int(np.floor((y - layout.origin[1]) / layout.step))
            col = int(np.floor((x - layout.origin[0]) / layout.step))
            if 0 <= row < layout.shape[0] and 0 <= col < layout.shape[1]:
                values[r, c] = grid[row, col]
    np.testing.assert_array_equal(alone, overlays.blend_map(pixels, values, cmap, (0, 3), 0.7))


def test_block_and_band_paths_agree(monkeypatch):
    """Big cells are blended block by block, small ones through a per-pixel lookup."""
    rng = np.random.default_rng(5)
    layout, grid = lattice(seed=5, shape=(30, 40), step=16)
    pixels = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    paint = overlays.CellPaint.of_map(layout, grid, "inferno", (0.0, 3.0), 0.45)
    bbox = (30, 10, 700, 500)
    calls = []
    blocks = overlays._paint_blocks
    monkeypatch.setattr(overlays, "_paint_blocks", lambda *a: calls.append("blocks") or blocks(*a))
    monkeypatch.setattr(overlays, "BLOCK_MIN_PX", 1)
    by_block = overlays.paint_cells(pixels, bbox, [paint])
    monkeypatch.setattr(overlays, "BLOCK_MIN_PX", 10**9)
    by_band = overlays.paint_cells(pixels, bbox, [paint])
    assert calls == ["blocks"]
    np.testing.assert_array_equal(by_block, by_band)
    assert np.abs(by_block.astype(int) - pixels).max() > 50  # the map was drawn


def test_paints_on_different_lattices_are_drawn_in_turn():
    rng = np.random.default_rng(7)
    fine, fine_grid = lattice(seed=7, step=32, shape=(12, 14))
    coarse, coarse_grid = lattice(seed=8, step=96, shape=(4, 5), origin=(8, 8))
    pixels = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    bbox = (0, 0, 480, 400)
    first = overlays.CellPaint.of_map(fine, fine_grid, "magma", (0.0, 3.0), 0.5)
    second = overlays.CellPaint.of_map(coarse, coarse_grid, "gray", (0.0, 3.0), 0.5)
    assert not first.same_lattice(second)
    with pytest.raises(ValueError, match="one lattice"):
        first.under(second)
    out = overlays.paint_cells(pixels, bbox, [first, second])
    expected = reference(
        pixels,
        bbox,
        [
            (fine, map_cell(fine_grid, colormaps["magma"], 0.5)),
            (coarse, map_cell(coarse_grid, colormaps["gray"], 0.5)),
        ],
    )
    assert np.abs(out - expected).max() <= 1.0  # rounded once per lattice


def test_nothing_painted_keeps_the_pixels():
    layout, grid = lattice()
    pixels = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    blank = overlays.CellPaint.of_map(layout, np.full(layout.shape, np.nan), "inferno")
    np.testing.assert_array_equal(overlays.paint_cells(pixels, (0, 0, 600, 500), [blank]), pixels)
    # a box off the lattice entirely
    paint = overlays.CellPaint.of_map(layout, grid, "inferno")
    np.testing.assert_array_equal(
        overlays.paint_cells(pixels, (5000, 5000, 5600, 5500), [paint]), pixels
    )
