"""Exports from the viewer: annotated screenshot, region figure, GeoJSON and CSV.

Only :func:`annotated_screenshot` touches the viewer (``viewer.screenshot``);
composing the annotations and the region figure is plain matplotlib, and the
GeoJSON/CSV come from :mod:`napari_hila.export`. Every file is written
atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from napari_hila import overlays
from napari_hila.errors import HilaError
from napari_hila.io_utils import atomic_path
from napari_hila.results import PredictionResult

BAND_PX = 96  # height of the annotation band under the screenshot


def nice_length(max_um: float) -> float:
    """The largest 1, 2 or 5 x 10^k microns not above ``max_um``."""
    if max_um <= 0 or not math.isfinite(max_um):
        return 0.0
    power = 10 ** math.floor(math.log10(max_um))
    for step in (5, 2, 1):
        if step * power <= max_um:
            return float(step * power)
    return float(power)


def _length_text(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def heatmap_of(viewer: Any) -> Any | None:
    """The visible HiLa heatmap layer, preferring the selected one."""
    active = viewer.layers.selection.active
    if (
        active is not None
        and active.metadata.get(overlays.OVERLAY_KEY) == "heatmap"
        and active.visible
    ):
        return active
    for layer in reversed(viewer.layers):
        if layer.metadata.get(overlays.OVERLAY_KEY) == "heatmap" and layer.visible:
            return layer
    return None


def band_height(width: int) -> int:
    """Height of the annotation band under an image ``width`` px wide."""
    return int(round(BAND_PX * max(1.0, width / 800)))


def compose_annotated(
    image: np.ndarray,
    um_per_px: float,
    title: str,
    details: str,
    colormap: Any = None,
    contrast_limits: tuple[float, float] | None = None,
    colorbar_label: str = "",
) -> np.ndarray:
    """Add a band under an RGB(A) image with title, details, scale bar and colorbar.

    The image's own pixels are kept exactly; only the band (of
    :func:`band_height`, text growing with the width) is drawn, so even a
    3000-px figure composes fast. Returns RGBA uint8.
    """
    height, width = image.shape[:2]
    band_px = band_height(width)
    k = band_px / BAND_PX
    fig = Figure(figsize=(width / 100, band_px / 100), dpi=100)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    fig.text(0.01, 0.80, title, fontsize=11 * k, fontweight="bold", color="black", va="center")
    fig.text(0.01, 0.52, details, fontsize=9 * k, color="black", va="center")
    bar_um = nice_length(0.25 * width * um_per_px)
    if bar_um > 0:
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        ax.patch.set_alpha(0.0)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(band_px - 0.5, -0.5)
        x0, y0 = 0.01 * width, 0.80 * band_px
        ax.plot(
            [x0, x0 + bar_um / um_per_px], [y0, y0], color="black", lw=3 * k, solid_capstyle="butt"
        )
        ax.text(
            x0 + bar_um / um_per_px + 8 * k,
            y0,
            _length_text(bar_um),
            va="center",
            fontsize=9 * k,
            fontweight="bold",
            color="black",
        )
    if colormap is not None and contrast_limits is not None:
        cax = fig.add_axes((0.66, 0.45, 0.31, 0.25))
        mappable = ScalarMappable(Normalize(*contrast_limits), colormap)
        bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
        bar.set_label(colorbar_label, fontsize=8 * k, color="black")
        bar.ax.tick_params(labelsize=7 * k, colors="black")
    fig.canvas.draw()
    band = np.asarray(fig.canvas.buffer_rgba())[:band_px, :width]
    top = np.empty((height, width, 4), np.uint8)
    top[..., :3] = image[..., :3]
    top[..., 3] = 255
    return np.concatenate([top, band], axis=0)


def _mpl_colormap(layer: Any) -> ListedColormap:
    colors = np.asarray(layer.colormap.map(np.linspace(0, 1, 256)))
    return ListedColormap(colors[:, :3])


def annotated_screenshot(viewer: Any, result: PredictionResult) -> np.ndarray:
    """The canvas as shown, with scale bar, colorbar, prompt, risk and model burned in."""
    shot = viewer.screenshot(canvas_only=True, flash=False)
    canvas_h, canvas_w = viewer.canvas.size
    um_per_px = (canvas_w / shot.shape[1]) / viewer.camera.zoom  # world units are microns
    heat = heatmap_of(viewer)
    prompt = heat.metadata.get("prompt", "") if heat is not None else ""
    level = heat.metadata.get("level", "") if heat is not None else ""
    group = f", {result.risk_group} risk" if result.risk_group else ""
    title = f"{result.model_label or result.model_name} — risk {result.risk:.3f}{group}"
    details = f"{Path(result.slide_path).name}" + (
        f"   prompt ({level}): {prompt}" if prompt else ""
    )
    return compose_annotated(
        shot,
        um_per_px,
        title,
        details,
        colormap=_mpl_colormap(heat) if heat is not None else None,
        contrast_limits=tuple(heat.contrast_limits) if heat is not None else None,
        colorbar_label=f"'{prompt}': x a uniform share" if heat is not None else "",
    )


def save_png(rgba: np.ndarray, path: str | Path) -> Path:
    """Write an image array to ``path`` as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgba)).save(tmp, format="PNG", compress_level=3)
    return path


def view_bbox(viewer: Any, mpp: float) -> tuple[int, int, int, int]:
    """The level-0 box (x0, y0, x1, y1) the canvas currently shows."""
    height, width = viewer.canvas.size
    cy, cx = viewer.camera.center[-2:]
    half_h, half_w = height / viewer.camera.zoom / 2, width / viewer.camera.zoom / 2
    return (
        int(math.floor((cx - half_w) / mpp)),
        int(math.floor((cy - half_h) / mpp)),
        int(math.ceil((cx + half_w) / mpp)),
        int(math.ceil((cy + half_h) / mpp)),
    )


def heatmap_over(
    pixels: np.ndarray,
    bbox: tuple[int, int, int, int],
    layout: overlays.GridLayout,
    grid_values: np.ndarray,
    colormap: Any = overlays.MAP_COLORMAP,
    limits: tuple[float, float] = overlays.MAP_LIMITS,
    alpha: float = overlays.MAP_OPACITY,
) -> np.ndarray:
    """Blend a grid heatmap over slide pixels showing level-0 box ``bbox``.

    Each output pixel takes the cell its centre falls in (nearest, exact tile
    edges); cells without a token leave the slide untouched. The colours are
    :func:`napari_hila.overlays.blend_map`'s, the one map renderer.
    """
    x0, y0, x1, y1 = bbox
    height, width = pixels.shape[:2]
    xs = x0 + (np.arange(width) + 0.5) * (x1 - x0) / width  # level-0 px of each column centre
    ys = y0 + (np.arange(height) + 0.5) * (y1 - y0) / height
    cols = np.floor((xs - layout.origin[0]) / layout.step).astype(np.int64)
    rows = np.floor((ys - layout.origin[1]) / layout.step).astype(np.int64)
    col_ok = (cols >= 0) & (cols < layout.shape[1])
    row_ok = (rows >= 0) & (rows < layout.shape[0])
    values = np.full((height, width), np.nan, np.float32)
    rr, cc = np.ix_(np.flatnonzero(row_ok), np.flatnonzero(col_ok))
    cell_r, cell_c = np.ix_(rows[row_ok], cols[col_ok])
    values[rr, cc] = grid_values[cell_r, cell_c]
    return overlays.blend_map(pixels, values, colormap, limits, alpha)


def region_figure(
    slide: Any,
    result: PredictionResult,
    bbox: tuple[int, int, int, int],
    level: str,
    prompt: int | str,
    max_side: int = 3000,
    colormap: Any = None,
    limits: tuple[float, float] | None = None,
    opacity: float | None = None,
) -> np.ndarray:
    """A figure of a slide region with a prompt's heatmap over it, at up to ``max_side`` px.

    Reads the slide at the finest pyramid level that keeps the longer side
    near ``max_side``; the heatmap cells sit at their exact tile positions.
    Colormap, limits and opacity default to the fixed map scale; the viewer
    passes the heatmap layer's own, so the figure matches the screen.
    """
    x0, y0, x1, y1 = (int(v) for v in bbox)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, slide.level_dimensions[0][0]), min(y1, slide.level_dimensions[0][1])
    if x1 <= x0 or y1 <= y0:
        raise HilaError(
            f"{slide.path}: the region {bbox} lies outside the slide; pan to tissue first"
        )
    wanted = max(max(x1 - x0, y1 - y0) / max_side, 1.0)
    read_level = max(i for i, d in enumerate(slide.level_downsamples) if d <= wanted or i == 0)
    ds = slide.level_downsamples[read_level]
    size = (max(1, int((x1 - x0) / ds)), max(1, int((y1 - y0) / ds)))
    pixels = slide.read_region((x0, y0), read_level, size)
    if max(pixels.shape[:2]) > max_side:
        from skimage.transform import resize

        factor = max_side / max(pixels.shape[:2])
        shape = (max(1, int(pixels.shape[0] * factor)), max(1, int(pixels.shape[1] * factor)))
        pixels = resize(pixels, shape, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    lv = result.explanation.levels[level]
    k = overlays.prompt_index(lv, prompt)
    layout = overlays.grid_layout(lv.coords, lv.tile_size)
    values = overlays.heatmap_values(lv, k)
    cmap = matplotlib.colormaps[overlays.MAP_COLORMAP] if colormap is None else colormap
    limits = overlays.MAP_LIMITS if limits is None else limits
    opacity = overlays.MAP_OPACITY if opacity is None else opacity
    blended = heatmap_over(
        pixels, (x0, y0, x1, y1), layout, layout.paint(values), cmap, limits, opacity
    )
    name = overlays.map_label(lv, k)
    return compose_annotated(
        blended,
        result.mpp * (x1 - x0) / blended.shape[1],
        f"{result.model_label or result.model_name} — risk {result.risk:.3f}",
        f"{Path(result.slide_path).name}  x {x0}-{x1}, y {y0}-{y1}   prompt ({level}): {name}",
        colormap=cmap,
        contrast_limits=limits,
        colorbar_label=f"'{name}': x a uniform share",
    )


def export_all(
    viewer: Any, result: PredictionResult, path: str | Path, slide: Any = None
) -> dict[str, Path]:
    """Write ``<stem>.png`` (screenshot), ``<stem>_region.png``, ``.geojson`` and ``.csv``."""
    from napari_hila import export as result_export

    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() == ".png" else path
    written = {"screenshot": save_png(annotated_screenshot(viewer, result), f"{stem}.png")}
    heat = heatmap_of(viewer)
    level = heat.metadata["level"] if heat is not None else None
    if slide is not None and level is not None:
        figure = region_figure(
            slide,
            result,
            view_bbox(viewer, result.mpp),
            level,
            heat.metadata["prompt"],
            colormap=_mpl_colormap(heat),
            limits=tuple(heat.contrast_limits),
            opacity=float(heat.opacity),
        )
        written["region"] = save_png(figure, f"{stem}_region.png")
    written["geojson"] = Path(result_export.write_geojson(result, f"{stem}.geojson"))
    written["csv"] = Path(result_export.write_csv(result, f"{stem}.csv"))
    return written
