"""Exports from the viewer: annotated screenshot, region figure, GeoJSON and CSV.

Everything is read from the screen once, on the GUI thread, into an
:class:`ExportRequest` (the canvas, the heatmap's colormap, opacity, limits and
threshold, which selection layers are shown, the view's box); writing it is
plain numpy and matplotlib that :class:`ExportJob` runs in a worker with
progress and Cancel. Text is wrapped to the image width and checked against
the rendered bounding boxes, so nothing is cut. Every file is written atomically.
"""

from __future__ import annotations

import math
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from napari_hila import overlays
from napari_hila._qt.job import BackgroundJob
from napari_hila.errors import Cancelled, HilaError
from napari_hila.io_utils import atomic_path
from napari_hila.results import PredictionResult, risk_standing
from napari_hila.slides.base import pick_level

#: A read above the figure's size is reduced by a whole factor when the result keeps at
#: least this share of it (read_view): 7x faster than resampling, at most 1/3 fewer px.
REDUCE_KEEPS = 2 / 3
BAND_PX = 96  # height of the annotation band under an 800 px wide image (grows with lines)


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
    """Height of a one-line-title, one-line-details band under an image ``width`` px wide."""
    return int(round(BAND_PX * _text_scale(width)))


def _text_scale(width: int) -> float:
    return max(1.0, width / 800)


def _wrap(text: str, font_px: float, width_px: float) -> list[str]:
    """``text`` in lines that fit ``width_px`` at ``font_px`` (a DejaVu Sans estimate)."""
    chars = max(8, int(width_px / (0.62 * font_px)))
    return textwrap.wrap(text, chars, break_long_words=True) or [""]


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

    The image's own pixels are kept exactly; the band is :func:`render_band`'s.
    Returns RGB uint8 (both parts are opaque: an alpha channel would only cost
    a quarter more to write).
    """
    height, width = image.shape[:2]
    band, _ = render_band(
        width, um_per_px, title, details, colormap, contrast_limits, colorbar_label
    )
    out = np.empty((height + band.shape[0], width, 3), np.uint8)
    out[:height] = image[..., :3]
    out[height:] = band[..., :3]
    return out


def render_band(
    width: int,
    um_per_px: float,
    title: str,
    details: str,
    colormap: Any = None,
    contrast_limits: tuple[float, float] | None = None,
    colorbar_label: str = "",
) -> tuple[np.ndarray, list[tuple[str, Any]]]:
    """The annotation band (RGBA) and ``(text, pixel box)`` of every text rendered in it.

    Title and details are wrapped to the width and the band grows to hold every
    line; the scale bar and the colorbar share the last row, the colorbar's
    label wrapped under it. Lines are rewrapped narrower until every rendered
    box lies inside the band, so no text is ever cut.
    """
    k = _text_scale(width)
    margin = 8 * k
    title_px, text_px, small_px = 11 * k * 100 / 72, 9 * k * 100 / 72, 7.5 * k * 100 / 72
    for attempt in range(5):
        fit = 1.0 - 0.1 * attempt
        usable = fit * (width - 2 * margin)
        rows = [(line, title_px, "bold") for line in _wrap(title, title_px, usable)]
        rows += [(line, text_px, "normal") for line in _wrap(details, text_px, usable)]
        label_lines = _wrap(colorbar_label, small_px, fit * 0.42 * width) if colorbar_label else []
        bottom_px = 24 * k
        if colormap is not None:
            bottom_px = max(bottom_px, 14 * k + 1.5 * small_px * (1 + len(label_lines)))
        text_h = sum(1.45 * size for _, size, _ in rows)
        band_px = int(math.ceil(margin + text_h + 4 * k + bottom_px + margin))
        fig, boxes = _draw_band(
            width,
            band_px,
            margin,
            rows,
            um_per_px,
            colormap,
            contrast_limits,
            "\n".join(label_lines),
            small_px,
            bottom_px,
            k,
        )
        if all(_inside(box, width, band_px) for _, box in boxes):
            break
    band = np.array(fig.canvas.buffer_rgba())[:band_px, :width]
    return band, boxes


def _inside(box: Any, width: int, height: int) -> bool:
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height


def _draw_band(
    width: int,
    band_px: int,
    margin: float,
    rows: list[tuple[str, float, str]],
    um_per_px: float,
    colormap: Any,
    contrast_limits: tuple[float, float] | None,
    colorbar_label: str,
    small_px: float,
    bottom_px: float,
    k: float,
) -> tuple[Figure, list[tuple[str, Any]]]:
    """Render the band; returns the figure and ``(text, pixel box)`` of every text drawn."""
    fig = Figure(figsize=(width / 100, band_px / 100), dpi=100)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    ax = fig.add_axes((0, 0, 1, 1))  # pixel coordinates, y down
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(band_px, 0)
    artists = []
    y = margin
    for line, size, weight in rows:
        artists.append(
            ax.text(
                margin,
                y,
                line,
                fontsize=size * 72 / 100,
                fontweight=weight,
                va="top",
                color="black",
            )
        )
        y += 1.45 * size
    row_top = band_px - margin - bottom_px
    bar_um = nice_length(0.25 * width * um_per_px)
    if bar_um > 0:
        y_bar = row_top + 8 * k
        ax.plot(
            [margin, margin + bar_um / um_per_px],
            [y_bar, y_bar],
            color="black",
            lw=3 * k,
            solid_capstyle="butt",
        )
        artists.append(
            ax.text(
                margin + bar_um / um_per_px + 8 * k,
                y_bar,
                _length_text(bar_um),
                va="center",
                fontsize=9 * k,
                fontweight="bold",
                color="black",
            )
        )
    colorbar_texts = []
    if colormap is not None and contrast_limits is not None:
        bar_h = 10 * k
        left, bottom = 1 - (0.42 * width + 3 * margin) / width, 1 - (row_top + bar_h) / band_px
        cax = fig.add_axes((left, bottom, 0.42, bar_h / band_px))
        bar = fig.colorbar(
            ScalarMappable(Normalize(*contrast_limits), colormap), cax=cax, orientation="horizontal"
        )
        bar.ax.tick_params(labelsize=small_px * 72 / 100, colors="black", pad=1)
        if colorbar_label:
            bar.set_label(colorbar_label, fontsize=small_px * 72 / 100, color="black", labelpad=1)
        colorbar_texts = [bar.ax.xaxis.label, *bar.ax.get_xticklabels()]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [
        (a.get_text(), a.get_window_extent(renderer))
        for a in [*artists, *colorbar_texts]
        if a.get_text()
    ]
    return fig, boxes


def _mpl_colormap(layer: Any) -> ListedColormap:
    colors = np.asarray(layer.colormap.map(np.linspace(0, 1, 256)))
    return ListedColormap(colors[:, :3])


def export_title(result: PredictionResult) -> str:
    """The figure title: model, risk score and where it stands, as the dock says it."""
    standing = risk_standing(result)
    return f"{result.model_label or result.model_name} — risk {result.risk:.3f}" + (
        f", {standing}" if standing else ""
    )


def canvas_screenshot(viewer: Any) -> np.ndarray:
    """The canvas as shown, without napari's own scale bar and colour bars.

    The annotation band draws the one scale bar and the one colour bar of an
    export (labelled with the map's unit); napari's, burned into the canvas
    too, would show each twice. They are hidden for the capture only and put
    back as they were.
    """
    hidden = []
    if viewer.scale_bar.visible:
        hidden.append(viewer.scale_bar)
    for layer in viewer.layers:
        colorbar = getattr(layer, "colorbar", None)
        if colorbar is not None and colorbar.visible:
            hidden.append(colorbar)
    try:
        for overlay in hidden:
            overlay.visible = False
        return viewer.screenshot(canvas_only=True, flash=False)
    finally:
        for overlay in hidden:
            overlay.visible = True


def annotated_screenshot(viewer: Any, result: PredictionResult) -> np.ndarray:
    """The canvas as shown, with scale bar, colorbar, prompt, risk and model burned in."""
    shot = canvas_screenshot(viewer)
    return _annotate_screenshot(shot, _ScreenState.from_viewer(viewer), result)


def _annotate_screenshot(
    shot: np.ndarray, state: _ScreenState, result: PredictionResult
) -> np.ndarray:
    um_per_px = (state.canvas_width / shot.shape[1]) / state.zoom  # world units are microns
    details = Path(result.slide_path).name + (
        f"   prompt ({state.level}): {state.prompt}" if state.prompt else ""
    )
    return compose_annotated(
        shot,
        um_per_px,
        export_title(result),
        details,
        colormap=state.colormap,
        contrast_limits=state.limits,
        colorbar_label=state.colorbar_label(),
    )


@dataclass(frozen=True)
class _ScreenState:
    """What the canvas shows that an export must match, read once on the GUI thread."""

    canvas_width: int
    zoom: float
    level: str | None = None
    prompt: str | None = None
    colormap: Any = None
    limits: tuple[float, float] | None = None
    opacity: float = overlays.MAP_OPACITY
    threshold: float | None = None
    show_selection: bool = False  # the patch selection veil is visible
    show_regions: bool = False  # the region outlines are visible

    @classmethod
    def from_viewer(cls, viewer: Any) -> _ScreenState:
        heat = heatmap_of(viewer)
        shown = {
            layer.metadata.get(overlays.OVERLAY_KEY)
            for layer in viewer.layers
            if layer.visible and layer.metadata.get(overlays.OVERLAY_KEY)
        }
        common = {
            "canvas_width": int(viewer.canvas.size[1]),
            "zoom": float(viewer.camera.zoom),
            "show_selection": "selection" in shown,
            "show_regions": "regions" in shown,
        }
        if heat is None:
            return cls(**common)
        threshold = heat.metadata.get("threshold")
        return cls(
            level=heat.metadata.get("level"),
            prompt=heat.metadata.get("prompt"),
            colormap=_mpl_colormap(heat),
            limits=tuple(float(v) for v in heat.contrast_limits),
            opacity=float(heat.opacity),
            threshold=None if threshold is None else float(threshold),
            **common,
        )

    def colorbar_label(self) -> str:
        if self.prompt is None:
            return ""
        hidden = f"; below {self.threshold:g} not drawn" if self.threshold is not None else ""
        return f"'{self.prompt}': x a uniform share (1 = uniform){hidden}"


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an image array to ``path`` as PNG, atomically.

    zlib level 1: a 3000 px region figure writes in 0.28 s against 0.31 s at
    level 3, for a file 3% larger.
    """
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG", compress_level=1)
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


def unselected_veil(result: PredictionResult, level: str = "patch") -> overlays.CellPaint:
    """The viewer's pale veil over tiles the model left out (:data:`overlays.UNSELECTED_RGBA`)."""
    lv = result.explanation.levels[level]
    layout = overlays.grid_layout(lv.coords, lv.tile_size)
    unselected = layout.paint((~np.asarray(lv.selected, bool)).astype(np.float32), fill=0.0)
    return overlays.CellPaint.of_mask(layout, unselected > 0.5, overlays.UNSELECTED_RGBA)


def draw_region_outlines(
    pixels: np.ndarray,
    bbox: tuple[int, int, int, int],
    result: PredictionResult,
    level: str,
    slide_size: tuple[int, int],
) -> np.ndarray:
    """Region rectangles in the viewer's colours (selected yellow, others grey), cut at the slide."""
    lv = result.explanation.levels[level]
    out = pixels[..., :3].copy()
    height, width = out.shape[:2]
    x0, y0, x1, y1 = bbox
    sx, sy = width / (x1 - x0), height / (y1 - y0)
    line = max(1, int(round(min(height, width) / 400)))
    for (rx, ry), selected in zip(
        np.asarray(lv.coords), np.asarray(lv.selected, bool), strict=True
    ):
        rgba = overlays.REGION_SELECTED_RGBA if selected else overlays.REGION_UNSELECTED_RGBA
        colour = (np.asarray(rgba[:3]) * 255).round().astype(np.uint8)
        left = int(round((rx - x0) * sx))
        top = int(round((ry - y0) * sy))
        right = int(round((min(rx + lv.tile_size, slide_size[0]) - x0) * sx))
        bottom = int(round((min(ry + lv.tile_size, slide_size[1]) - y0) * sy))
        if right <= 0 or bottom <= 0 or left >= width or top >= height:
            continue
        cl, cr = max(left, 0), min(right, width)
        ct, cb = max(top, 0), min(bottom, height)
        for edge in (top, bottom - line):
            if 0 <= edge < height or 0 <= edge + line <= height:
                out[max(edge, 0) : min(edge + line, height), cl:cr] = colour
        for edge in (left, right - line):
            if 0 <= edge < width or 0 <= edge + line <= width:
                out[ct:cb, max(edge, 0) : min(edge + line, width)] = colour
    return out


def read_view(
    slide: Any, bbox: tuple[int, int, int, int], max_side: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Slide pixels of level-0 box ``bbox`` (cut to the slide) at up to ``max_side`` px,
    and the level-0 box they show.

    Reads at the level :func:`~napari_hila.slides.base.pick_level` picks (the
    coarsest at least as fine as the output needs, within 1%), so the time
    follows the size of the output, not of the slide. A read larger than
    ``max_side`` is reduced by a whole factor when that keeps at least
    :data:`REDUCE_KEEPS` of ``max_side`` (a 20,000 px slide's 5000 px level
    gives 2500 px), else resampled to ``max_side``.
    """
    x0, y0, x1, y1 = (int(v) for v in bbox)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, slide.level_dimensions[0][0]), min(y1, slide.level_dimensions[0][1])
    if x1 <= x0 or y1 <= y0:
        raise HilaError(
            f"{slide.path}: the region {bbox} lies outside the slide; pan to tissue first"
        )
    wanted = max(max(x1 - x0, y1 - y0) / max_side, 1.0)
    read_level = pick_level(slide.level_downsamples, wanted)
    ds = slide.level_downsamples[read_level]
    size = (max(1, int((x1 - x0) / ds)), max(1, int((y1 - y0) / ds)))
    pixels = slide.read_region((x0, y0), read_level, size)
    if max(pixels.shape[:2]) <= max_side:
        return np.ascontiguousarray(pixels[..., :3]), (x0, y0, x1, y1)
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3]))
    whole = math.ceil(max(image.size) / max_side)
    if max(image.size) // whole >= REDUCE_KEEPS * max_side:
        # a whole factor (each output px the mean of whole x whole px): 0.02 s on a 5000 px
        # read against 0.14 s resampled to 3000 px; the box ends on the last whole block
        width, height = image.size[0] // whole, image.size[1] // whole
        pixels = np.asarray(image.reduce(whole, box=(0, 0, width * whole, height * whole)))
        x1, y1 = x0 + round(width * whole * ds), y0 + round(height * whole * ds)
    else:
        # box filter: each output pixel the mean of the pixels it covers (anti-aliased),
        # in C; skimage's Gaussian resize took 14 s on a 5000 px read
        factor = max_side / max(image.size)
        size = (max(1, int(image.size[0] * factor)), max(1, int(image.size[1] * factor)))
        pixels = np.asarray(image.resize(size, Image.Resampling.BOX))
    return np.ascontiguousarray(pixels), (x0, y0, x1, y1)


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
    threshold: float | None = None,
    show_selection: bool = False,
    show_regions: bool = False,
) -> np.ndarray:
    """A figure of a slide region with a prompt's heatmap over it, at up to ``max_side`` px.

    The heatmap is :func:`overlays.heatmap_grid`'s, as the layer draws it
    (regions on their patches, tiles below ``threshold`` not drawn). Colormap,
    limits and opacity default to the fixed map scale; the viewer passes the
    heatmap layer's own, and which selection layers are shown, so the figure
    matches the screen.
    """
    pixels, (x0, y0, x1, y1) = read_view(slide, bbox, max_side)
    lv = result.explanation.levels[level]
    k = overlays.prompt_index(lv, prompt)
    layout, grid = overlays.heatmap_grid(result, level, k, threshold)
    cmap = matplotlib.colormaps[overlays.MAP_COLORMAP] if colormap is None else colormap
    limits = overlays.MAP_LIMITS if limits is None else limits
    opacity = overlays.MAP_OPACITY if opacity is None else opacity
    box = (x0, y0, x1, y1)
    # the map and the veil painted per cell and blended once, at the figure's size
    paints = [overlays.CellPaint.of_map(layout, grid, cmap, limits, opacity)]
    patch_level = _patch_level(result)
    if show_selection and patch_level is not None:
        paints.append(unselected_veil(result, patch_level))
    blended = overlays.paint_cells(pixels, box, paints)
    coarse = overlays._coarse_level(result)
    if show_regions and coarse is not None:
        blended = draw_region_outlines(blended, box, result, coarse, slide.level_dimensions[0])
    name = overlays.map_label(lv, k)
    hidden = f"; below {threshold:g} not drawn" if threshold is not None else ""
    return compose_annotated(
        blended,
        result.mpp * (x1 - x0) / blended.shape[1],
        export_title(result),
        f"{Path(result.slide_path).name}  x {x0}-{x1}, y {y0}-{y1}   prompt ({level}): {name}",
        colormap=cmap,
        contrast_limits=limits,
        colorbar_label=f"'{name}': x a uniform share (1 = uniform){hidden}",
    )


def _patch_level(result: PredictionResult) -> str | None:
    """The level drawn as a per-tile selection veil (every level but the outlined one)."""
    coarse = overlays._coarse_level(result)
    others = [n for n, lv in result.explanation.levels.items() if n != coarse and len(lv.coords)]
    return others[0] if others else None


EXPORT_STEPS = ("screenshot", "region", "geojson", "csv")


@dataclass
class ExportRequest:
    """One export, with everything it needs from the screen already read.

    :meth:`from_viewer` runs on the GUI thread (the screenshot and the layers'
    state); :meth:`write` touches no Qt object and may run in a worker.
    """

    result: PredictionResult
    stem: Path
    screenshot: np.ndarray
    state: _ScreenState
    bbox: tuple[int, int, int, int]
    slide: Any = None
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_viewer(
        cls, viewer: Any, result: PredictionResult, path: str | Path, slide: Any = None
    ) -> ExportRequest:
        path = Path(path)
        stem = path.with_suffix("") if path.suffix.lower() == ".png" else path
        return cls(
            result=result,
            stem=stem,
            screenshot=canvas_screenshot(viewer),
            state=_ScreenState.from_viewer(viewer),
            bbox=view_bbox(viewer, result.mpp),
            slide=slide,
        )

    def write(
        self,
        progress: Callable[[str, float], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Path]:
        """Write ``<stem>.png``, ``<stem>_region.png``, ``.geojson`` and ``.csv``.

        ``progress(step, fraction)`` after each file; a set ``cancel`` stops
        before the next file and removes the ones written (raises ``Cancelled``).
        """
        from napari_hila import export as result_export

        stem, state, written = self.stem, self.state, {}
        steps: list[tuple[str, Callable[[], Path]]] = [
            (
                "screenshot",
                lambda: save_png(
                    _annotate_screenshot(self.screenshot, state, self.result), f"{stem}.png"
                ),
            )
        ]
        if self.slide is not None and state.level is not None:
            steps.append(
                (
                    "region",
                    lambda: save_png(
                        region_figure(
                            self.slide,
                            self.result,
                            self.bbox,
                            state.level,
                            state.prompt,
                            colormap=state.colormap,
                            limits=state.limits,
                            opacity=state.opacity,
                            threshold=state.threshold,
                            show_selection=state.show_selection,
                            show_regions=state.show_regions,
                        ),
                        f"{stem}_region.png",
                    ),
                )
            )
        size = self.slide.dimensions if self.slide is not None else None  # rectangles stop there
        steps.append(
            (
                "geojson",
                lambda: Path(result_export.write_geojson(self.result, f"{stem}.geojson", size)),
            )
        )
        steps.append(
            ("csv", lambda: Path(result_export.write_csv(self.result, f"{stem}.csv", size)))
        )
        for n, (name, step) in enumerate(steps):
            if cancel is not None and cancel.is_set():
                for done in written.values():
                    done.unlink(missing_ok=True)
                raise Cancelled("export cancelled by the user")
            if progress is not None:
                progress(f"writing {name} ({n + 1}/{len(steps)})", n / len(steps))
            written[name] = step()
        if progress is not None:
            progress("done", 1.0)
        self.files = written
        return written


def export_all(
    viewer: Any, result: PredictionResult, path: str | Path, slide: Any = None
) -> dict[str, Path]:
    """Write ``<stem>.png`` (screenshot), ``<stem>_region.png``, ``.geojson`` and ``.csv``."""
    return ExportRequest.from_viewer(viewer, result, path, slide=slide).write()


@dataclass
class ExportOutcome:
    written: dict[str, Path] = field(default_factory=dict)
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0


def run_export(
    request: ExportRequest,
    progress: Callable[[str, float], None] | None = None,
    cancel: threading.Event | None = None,
) -> ExportOutcome:
    """Write an export; every failure becomes a message, never an exception."""
    import logging
    import time

    started = time.perf_counter()
    try:
        written = request.write(progress, cancel)
        return ExportOutcome(written=written, seconds=time.perf_counter() - started)
    except Cancelled:
        return ExportOutcome(cancelled=True, seconds=time.perf_counter() - started)
    except (HilaError, OSError) as err:
        return ExportOutcome(error=str(err), seconds=time.perf_counter() - started)
    except Exception as err:  # a bug: log it in full, tell the user in one line
        logging.getLogger(__name__).exception("export to %s failed", request.stem)
        return ExportOutcome(
            error=f"{request.stem}: export failed ({type(err).__name__}: {err}); please report it",
            seconds=time.perf_counter() - started,
        )


class ExportJob(BackgroundJob):
    """One export in a napari thread worker; Cancel removes the files already written."""

    def __init__(self, request: ExportRequest, parent: Any = None) -> None:
        super().__init__(run_export, (request,), _export_bug, parent)
        self.request = request


def _export_bug(err: BaseException) -> ExportOutcome:
    """Only on a bug in run_export, which turns every expected failure into an outcome."""
    return ExportOutcome(error=f"export failed: {type(err).__name__}: {err}")
