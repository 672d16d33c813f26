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


def compose_annotated(
    image: np.ndarray,
    um_per_px: float,
    title: str,
    details: str,
    colormap: Any = None,
    contrast_limits: tuple[float, float] | None = None,
    colorbar_label: str = "",
) -> np.ndarray:
    """Burn a scale bar, a colorbar and text into an RGB(A) image; returns RGBA uint8.

    The image keeps its pixels; a band of ``BAND_PX`` below it carries the text
    and the colorbar, and the scale bar is drawn over its bottom-left corner.
    """
    height, width = image.shape[:2]
    dpi = 100
    fig = Figure(figsize=(width / dpi, (height + BAND_PX) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    frac = height / (height + BAND_PX)
    ax = fig.add_axes((0, 1 - frac, 1, frac))
    ax.imshow(image[..., :3], interpolation="nearest")
    ax.set_axis_off()
    bar_um = nice_length(0.25 * width * um_per_px)
    if bar_um > 0:
        bar_px = bar_um / um_per_px
        x0, y0 = 0.04 * width, height - 0.05 * height
        ax.plot([x0, x0 + bar_px], [y0, y0], color="white", linewidth=6, solid_capstyle="butt")
        ax.plot([x0, x0 + bar_px], [y0, y0], color="black", linewidth=2, solid_capstyle="butt")
        ax.text(
            x0,
            y0 - 0.02 * height,
            _length_text(bar_um),
            color="black",
            fontsize=10,
            fontweight="bold",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    band = BAND_PX / (height + BAND_PX)
    fig.text(0.01, band * 0.72, title, fontsize=11, fontweight="bold", color="black", va="center")
    fig.text(0.01, band * 0.30, details, fontsize=9, color="black", va="center")
    if colormap is not None and contrast_limits is not None:
        cax = fig.add_axes((0.66, band * 0.45, 0.31, band * 0.25))
        mappable = ScalarMappable(Normalize(*contrast_limits), colormap)
        bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
        bar.set_label(colorbar_label, fontsize=8, color="black")
        bar.ax.tick_params(labelsize=7, colors="black")
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def _mpl_colormap(layer: Any) -> ListedColormap:
    colors = np.asarray(layer.colormap.map(np.linspace(0, 1, 256)))
    return ListedColormap(colors[:, :3])


def annotated_screenshot(viewer: Any, result: PredictionResult) -> np.ndarray:
    """The canvas as shown, with scale bar, colorbar, prompt, risk and model burned in."""
    shot = viewer.screenshot(canvas_only=True, flash=False)
    canvas_h, canvas_w = viewer._canvas_size
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
        colorbar_label=f"alignment with '{prompt}' (x slide mean)" if heat is not None else "",
    )


def save_png(rgba: np.ndarray, path: str | Path) -> Path:
    """Write an image array to ``path`` as PNG, atomically."""
    from matplotlib.image import imsave

    path = Path(path)
    with atomic_path(path) as tmp:
        imsave(tmp, rgba, format="png")
    return path


def view_bbox(viewer: Any, mpp: float) -> tuple[int, int, int, int]:
    """The level-0 box (x0, y0, x1, y1) the canvas currently shows."""
    height, width = viewer._canvas_size
    cy, cx = viewer.camera.center[-2:]
    half_h, half_w = height / viewer.camera.zoom / 2, width / viewer.camera.zoom / 2
    return (
        int(math.floor((cx - half_w) / mpp)),
        int(math.floor((cy - half_h) / mpp)),
        int(math.ceil((cx + half_w) / mpp)),
        int(math.ceil((cy + half_h) / mpp)),
    )


def region_figure(
    slide: Any,
    result: PredictionResult,
    bbox: tuple[int, int, int, int],
    level: str,
    prompt: int | str,
    max_side: int = 3000,
) -> np.ndarray:
    """A figure of a slide region with a prompt's heatmap over it, at up to ``max_side`` px.

    Reads the slide at the finest pyramid level that keeps the longer side
    under ``max_side``; the heatmap is drawn with nearest-neighbour cells at
    their exact tile positions.
    """
    x0, y0, x1, y1 = (int(v) for v in bbox)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, slide.level_dimensions[0][0]), min(y1, slide.level_dimensions[0][1])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"region {bbox} lies outside the slide {slide.path}")
    wanted = max(x1 - x0, y1 - y0) / max_side
    read_level = max(
        (i for i, d in enumerate(slide.level_downsamples) if d <= max(wanted, 1)), default=0
    )
    ds = slide.level_downsamples[read_level]
    pixels = slide.read_region((x0, y0), read_level, (int((x1 - x0) / ds), int((y1 - y0) / ds)))
    if max(pixels.shape[:2]) > max_side:
        from skimage.transform import resize

        factor = max_side / max(pixels.shape[:2])
        shape = (int(pixels.shape[0] * factor), int(pixels.shape[1] * factor))
        pixels = resize(pixels, shape, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    lv = result.explanation.levels[level]
    layout = overlays.grid_layout(lv.coords, lv.tile_size)
    values = overlays.heatmap_values(lv, prompt)
    heat = layout.paint(values)
    k = overlays.prompt_index(lv, prompt)
    height, width = pixels.shape[:2]
    um_per_px = result.mpp * (x1 - x0) / width
    fig_w = width / 100
    fig = Figure(figsize=(fig_w, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(pixels, extent=(x0, x1, y1, y0), interpolation="antialiased")
    gx0, gy0 = layout.origin
    extent = (gx0, gx0 + layout.shape[1] * layout.step, gy0 + layout.shape[0] * layout.step, gy0)
    high = float(np.nanpercentile(values, 99)) if len(values) else 1.0
    ax.imshow(
        heat, extent=extent, cmap="turbo", alpha=0.45, vmin=0, vmax=high, interpolation="nearest"
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_axis_off()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba()).copy()
    return compose_annotated(
        image,
        um_per_px,
        f"{result.model_label or result.model_name} — risk {result.risk:.3f}",
        f"{Path(result.slide_path).name}  x {x0}-{x1}, y {y0}-{y1}   prompt ({level}): {lv.map_names[k]}",
        colormap=matplotlib.colormaps["turbo"],
        contrast_limits=(0.0, high),
        colorbar_label=f"alignment with '{lv.map_names[k]}' (x slide mean)",
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
            slide, result, view_bbox(viewer, result.mpp), level, heat.metadata["prompt"]
        )
        written["region"] = save_png(figure, f"{stem}_region.png")
    written["geojson"] = Path(result_export.write_geojson(result, f"{stem}.geojson"))
    written["csv"] = Path(result_export.write_csv(result, f"{stem}.csv"))
    return written
