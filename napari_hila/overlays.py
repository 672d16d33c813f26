"""Turn a :class:`~napari_hila.results.PredictionResult` into napari layer data.

Qt-free and napari-free: every function returns plain arrays or napari
``LayerData`` tuples ``(data, kwargs, layer_type)`` that
``viewer._add_layer_from_data`` or ``viewer.add_<type>(data, **kwargs)`` accept.

Geometry. World coordinates are microns, axes (y, x). The slide layer shows
level-0 pixel (x, y) with its centre at world ``(y * mpp, x * mpp)`` (napari
places pixel centres at ``index * scale + translate``; the slide has translate
0). A grid of tiles becomes an image with **one pixel per grid cell**, never
resampled to full resolution: scale is the grid step in microns and the
translate puts each cell's centre on its tile's centre,
``(origin + tile / 2 - 0.5) * mpp``, so the cell's edges fall exactly on the
tile's edge pixels of the slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from math import gcd
from typing import Any

import numpy as np

from napari_hila.results import MAP_UNIT, LevelExplanation, PredictionResult, map_is_informative
from napari_hila.slides.layers import tissue_layer_data

# matplotlib (0.1 s warm, 0.4 s cold) is imported where a colormap is drawn: this module
# loads with every napari-hila command (through export) and with the viewer's layers
# (tests/test_startup_imports.py).

__all__ = [
    "GridLayout",
    "LayerData",
    "TileLookup",
    "TokenInfo",
    "camera_for_token",
    "clipped_rectangles",
    "grid_layout",
    "MAP_COLORMAP",
    "MAP_LIMITS",
    "below_threshold_hidden",
    "blend_map",
    "CellPaint",
    "paint_cells",
    "heatmap_grid",
    "heatmap_layer",
    "heatmap_values",
    "map_colours",
    "map_label",
    "prompt_index",
    "region_outline_layer",
    "result_layers",
    "selection_layer",
    "token_at",
    "token_info",
    "top_tokens",
]

LayerData = tuple[Any, dict[str, Any], str]

# A heatmap bigger than this many cells means the coordinates are not on a
# lattice (e.g. jittered); we then fall back to a step of one tile.
MAX_GRID_CELLS = 64_000_000

# The patch selection map veils what the model left out in pale grey and keeps
# the selected tiles clear, so it sits over a heatmap without hiding it. Pale,
# not dark: on inferno a dark grey would read as a low map value.
SELECTED_RGBA = (0.0, 0.0, 0.0, 0.0)
UNSELECTED_RGBA = (0.82, 0.82, 0.82, 0.6)
UNSELECTED_LEGEND = "pale grey veil: tile not selected by the model"
REGION_LEGEND = "yellow outline: selected region; grey outline: region not selected"
# Region outlines: selected regions bright, the others faint.
REGION_SELECTED_RGBA = (1.0, 0.85, 0.0, 1.0)
REGION_UNSELECTED_RGBA = (0.6, 0.6, 0.6, 0.6)
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)
OVERLAY_KEY = "hila_overlay"  # layer.metadata key naming the overlay kind

# The one scale of every prompt map, for every prompt, slide and output (napari
# layers, CLI PNGs, exports): the token's share relative to a uniform share.
# 0 = none of it, 1 = a uniform share, 3 or more = three times (saturated).
MAP_LIMITS = (0.0, 3.0)
MAP_COLORMAP = "inferno"
MAP_OPACITY = 0.45
MAP_SCALE_NOTE = (
    f"{MAP_UNIT}; colours span {MAP_LIMITS[0]:g} to {MAP_LIMITS[1]:g} for every prompt and slide"
)


@dataclass(frozen=True)
class GridLayout:
    """Where each token of a level sits on a regular lattice.

    ``origin`` is the level-0 (x, y) of the top-left tile, ``step`` the lattice
    spacing in level-0 px (the tile side, or less when tiles overlap), and
    ``rows``/``cols`` each token's cell.
    """

    origin: tuple[int, int]
    step: int
    tile_size: int
    shape: tuple[int, int]  # (rows, cols)
    rows: np.ndarray
    cols: np.ndarray

    def scale(self, mpp: float) -> tuple[float, float]:
        """Layer scale (y, x) in microns per grid cell."""
        return (self.step * mpp, self.step * mpp)

    def translate(self, mpp: float) -> tuple[float, float]:
        """Layer translate (y, x) in microns: cell (0, 0)'s centre on tile 0's centre."""
        half = self.tile_size / 2.0 - 0.5
        return ((self.origin[1] + half) * mpp, (self.origin[0] + half) * mpp)

    def index_image(self) -> np.ndarray:
        """(rows, cols) int64: the token in each cell, -1 where there is none."""
        image = np.full(self.shape, -1, np.int64)
        image[self.rows, self.cols] = np.arange(len(self.rows))
        return image

    def paint(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """(rows, cols) float32 image of per-token ``values``; ``fill`` elsewhere."""
        image = np.full(self.shape, fill, np.float32)
        image[self.rows, self.cols] = np.asarray(values, np.float32)
        return image


def grid_layout(coords: np.ndarray, tile_size: int) -> GridLayout:
    """Fit the lattice the tokens' level-0 top-left ``coords`` (N, 2) lie on."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    tile_size = int(tile_size)
    if len(coords) == 0:
        empty = np.zeros(0, np.int64)
        return GridLayout((0, 0), tile_size, tile_size, (0, 0), empty, empty)
    origin = coords.min(axis=0)
    offsets = coords - origin
    step = reduce(gcd, np.unique(offsets).tolist(), 0) or tile_size
    step = min(step, tile_size)
    extent = offsets.max(axis=0) // step + 1
    if int(extent[0]) * int(extent[1]) > MAX_GRID_CELLS:
        step = tile_size
        extent = offsets.max(axis=0) // step + 1
    cols = offsets[:, 0] // step
    rows = offsets[:, 1] // step
    return GridLayout(
        (int(origin[0]), int(origin[1])),
        int(step),
        tile_size,
        (int(extent[1]), int(extent[0])),
        rows.astype(np.int64),
        cols.astype(np.int64),
    )


def prompt_index(level: LevelExplanation, prompt: int | str) -> int:
    """Column of ``level.maps`` for a prompt given by index or short name."""
    if isinstance(prompt, (int, np.integer)):
        if not 0 <= int(prompt) < len(level.map_names):
            raise IndexError(
                f"level {level.level!r} has {len(level.map_names)} prompts, not {prompt}"
            )
        return int(prompt)
    try:
        return level.map_names.index(prompt)
    except ValueError:
        raise KeyError(
            f"level {level.level!r} has no prompt {prompt!r}; it has {', '.join(level.map_names)}"
        ) from None


def heatmap_values(level: LevelExplanation, prompt: int | str) -> np.ndarray:
    """A prompt's per-token map relative to a uniform share (1 = a uniform share).

    New results store exactly that (M K P*[i, k] for HiLa, M a_i for attention
    models, each with mean 1); older results stored the plan column P*[:, k],
    which dividing by the column's mean brings to the same scale.
    """
    column = np.asarray(level.maps, np.float64)[:, prompt_index(level, prompt)]
    mean = column.mean() if len(column) else 0.0
    if not np.isfinite(mean) or mean <= 0:
        return np.zeros(len(column), np.float32)
    return (column / mean).astype(np.float32)


def map_label(level: LevelExplanation, prompt: int | str) -> str:
    """A map's name as every output shows it, flagged when it is uninformative."""
    k = prompt_index(level, prompt)
    name = level.map_names[k]
    if len(level.coords) and not map_is_informative(heatmap_values(level, k)):
        return f"{name} (uninformative: within 10% of uniform everywhere)"
    return name


def map_colours(
    values: np.ndarray, colormap: Any = MAP_COLORMAP, limits: tuple[float, float] = MAP_LIMITS
) -> np.ndarray:
    """RGB in 0..1 (shape ``values.shape + (3,)``) of map values on the fixed scale.

    ``colormap`` is a matplotlib colormap name or object (napari's colormaps
    are converted by the caller); values outside ``limits`` saturate.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    cmap = colormaps[colormap] if isinstance(colormap, str) else colormap
    norm = Normalize(*limits, clip=True)
    filled = np.where(np.isfinite(values), values, limits[0])
    return np.asarray(cmap(norm(filled)))[..., :3]


def _map_paint(
    values: np.ndarray, colormap: Any, limits: tuple[float, float], opacity: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, add)`` of a map drawn at ``opacity``: a pixel ``p`` becomes ``p * keep + add``.

    napari's translucent blending: where a value is NaN (no token, or below a
    threshold) the slide is kept (1, 0); elsewhere ``1 - opacity`` of it, plus
    ``opacity`` of the map's colour (0..255).
    """
    values = np.asarray(values, np.float32)
    keep = np.ones(values.shape, np.float32)
    add = np.zeros((*values.shape, 3), np.float32)
    shown = np.isfinite(values)
    if shown.any():
        keep[shown] = 1.0 - opacity
        add[shown] = opacity * 255.0 * map_colours(values[shown], colormap, limits)
    return keep, add


def _paint(pixels: np.ndarray, keep: Any, add: Any) -> np.ndarray:
    """``pixels * keep + add`` rounded to uint8 (``keep`` and ``add`` broadcast over them)."""
    out = np.asarray(pixels)[..., :3].astype(np.float32)
    out *= np.asarray(keep, np.float32)[..., None] if np.ndim(keep) else np.float32(keep)
    out += add
    np.rint(out, out=out)
    return out.astype(np.uint8)


def blend_map(
    pixels: np.ndarray,
    values: np.ndarray,
    colormap: Any = MAP_COLORMAP,
    limits: tuple[float, float] = MAP_LIMITS,
    opacity: float = MAP_OPACITY,
) -> np.ndarray:
    """The one renderer of a map over tissue: (h, w, 3) uint8 pixels, (h, w) values.

    Pixels whose value is NaN (no token there) keep the slide's colour; the
    others are ``opacity`` of the map's colour over the tissue, as napari's
    translucent blending draws the heatmap layer. :class:`CellPaint` draws
    the same per grid cell (exports at any resolution).
    """
    return _paint(pixels, *_map_paint(values, colormap, limits, opacity))


@dataclass(frozen=True)
class CellPaint:
    """What a layer paints over each cell of a lattice: a pixel ``p`` becomes ``p * keep + add``.

    ``keep`` is (rows, cols) in 0..1 and ``add`` (rows, cols, 3) in 0..255:
    napari's translucent blending with the colour and opacity fixed per cell.
    Layers on one lattice compose per cell (:meth:`under`), so a figure is
    blended once, at its output size (:func:`paint_cells`), however many
    layers it shows and whatever the slide's size.
    """

    layout: GridLayout
    keep: np.ndarray
    add: np.ndarray

    @classmethod
    def of_map(
        cls,
        layout: GridLayout,
        grid_values: np.ndarray,
        colormap: Any = MAP_COLORMAP,
        limits: tuple[float, float] = MAP_LIMITS,
        opacity: float = MAP_OPACITY,
    ) -> CellPaint:
        """A (rows, cols) map image (NaN: nothing drawn), as :func:`blend_map` draws it."""
        return cls(layout, *_map_paint(grid_values, colormap, limits, opacity))

    @classmethod
    def of_mask(cls, layout: GridLayout, mask: np.ndarray, rgba: tuple[float, ...]) -> CellPaint:
        """Colour ``rgba`` (0..1, its alpha the opacity) over the cells where ``mask`` is true."""
        mask = np.asarray(mask, bool)
        alpha = float(rgba[3])
        keep = np.where(mask, np.float32(1.0 - alpha), np.float32(1.0)).astype(np.float32)
        colour = (alpha * 255.0 * np.asarray(rgba[:3], np.float32)).astype(np.float32)
        add = np.where(mask[..., None], colour, np.float32(0.0)).astype(np.float32)
        return cls(layout, keep, add)

    def same_lattice(self, other: CellPaint) -> bool:
        a, b = self.layout, other.layout
        return (a.origin, a.step, a.shape) == (b.origin, b.step, b.shape)

    def under(self, above: CellPaint) -> CellPaint:
        """This paint with ``above`` drawn over it, on the same lattice, as one paint."""
        if not self.same_lattice(above):
            raise ValueError("only paints on one lattice compose per cell")
        return CellPaint(
            self.layout,
            self.keep * above.keep,
            self.add * above.keep[..., None] + above.add,
        )


#: :func:`paint_cells` blends block by block (one numpy call per cell in view) when the
#: cells in view average at least this many output px, else row band by row band through
#: a per-pixel lookup: 3000 x 3000 px under 1600 cells take 0.02 s by block, 0.2 s by band.
BLOCK_MIN_PX = 1024


def _cells_along(n: int, lo: float, hi: float, origin: int, step: int, cells: int) -> np.ndarray:
    """The lattice cell under each of ``n`` output px spanning level-0 ``lo``..``hi``
    (by its centre: exact tile edges); ``cells`` (one past the last) off the lattice."""
    centres = lo + (np.arange(n) + 0.5) * ((hi - lo) / n)
    index = np.floor((centres - origin) / step).astype(np.int64)
    index[(index < 0) | (index >= cells)] = cells
    return index


def _runs(index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, start, stop) of each run of equal entries of ``index``."""
    cuts = np.flatnonzero(np.diff(index)) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(index)]])
    return index[starts], starts, stops


def paint_cells(
    pixels: np.ndarray, bbox: tuple[int, int, int, int], paints: list[CellPaint]
) -> np.ndarray:
    """``paints`` drawn in order over (h, w, 3) ``pixels`` that show level-0 box ``bbox``.

    Each output pixel takes the cell its centre falls in, so cell edges land
    on tile edges at any scale. Consecutive paints on one lattice are composed
    per cell first; the pixels are then blended once per lattice, only inside
    painted cells. Returns (h, w, 3) uint8; the cost follows the output, not the slide.
    """
    out = np.array(np.asarray(pixels)[..., :3], np.uint8)
    groups: list[CellPaint] = []
    for paint in paints:
        if groups and groups[-1].same_lattice(paint):
            groups[-1] = groups[-1].under(paint)
        else:
            groups.append(paint)
    x0, y0, x1, y1 = bbox
    height, width = out.shape[:2]
    for paint in groups:
        rows, cols = paint.layout.shape
        if rows == 0 or cols == 0:
            continue
        row_of = _cells_along(height, y0, y1, paint.layout.origin[1], paint.layout.step, rows)
        col_of = _cells_along(width, x0, x1, paint.layout.origin[0], paint.layout.step, cols)
        keep = np.ones((rows + 1, cols + 1), np.float32)  # a last row and column that keep
        add = np.zeros((rows + 1, cols + 1, 3), np.float32)
        keep[:rows, :cols], add[:rows, :cols] = paint.keep, paint.add
        row_runs, col_runs = _runs(row_of), _runs(col_of)
        if height * width >= BLOCK_MIN_PX * len(row_runs[0]) * len(col_runs[0]):
            _paint_blocks(out, keep, add, row_runs, col_runs)
        else:
            for top in range(0, height, 256):
                band = row_of[top : top + 256, None]
                out[top : top + 256] = _paint(
                    out[top : top + 256], keep[band, col_of], add[band, col_of]
                )
    return out


def _paint_blocks(
    out: np.ndarray,
    keep: np.ndarray,
    add: np.ndarray,
    row_runs: tuple[np.ndarray, ...],
    col_runs: tuple[np.ndarray, ...],
) -> None:
    """Blend ``out`` in place, one block of output px per painted cell."""
    painted = (keep != 1.0) | (add != 0.0).any(axis=2)
    for row, top, bottom in zip(*row_runs, strict=True):
        for col, left, right in zip(*col_runs, strict=True):
            if painted[row, col]:
                block = out[top:bottom, left:right]
                block[:] = _paint(block, keep[row, col], add[row, col])


def _meta(result: PredictionResult, kind: str, level: str, **extra: Any) -> dict[str, Any]:
    return {
        OVERLAY_KEY: kind,
        "level": level,
        "slide_path": result.slide_path,
        "model": result.model_label or result.model_name,
        **extra,
    }


def below_threshold_hidden(values: np.ndarray, threshold: float | None) -> np.ndarray:
    """``values`` with those below ``threshold`` set to NaN (drawn transparent); None keeps all."""
    values = np.asarray(values, np.float32)
    if threshold is None:
        return values
    return np.where(values >= float(threshold), values, np.float32(np.nan)).astype(np.float32)


def _finer_level(result: PredictionResult, level_name: str) -> LevelExplanation | None:
    """The level whose tiles point into ``level_name``'s (HiLa's patches inside regions)."""
    if level_name != _coarse_level(result):
        return None
    for name, other in result.explanation.levels.items():
        if name != level_name and other.parent is not None and len(other.coords):
            return other
    return None


def heatmap_grid(
    result: PredictionResult, level_name: str, prompt: int | str, threshold: float | None = None
) -> tuple[GridLayout, np.ndarray]:
    """The lattice a heatmap is drawn on and its (rows, cols) image: what napari and exports show.

    A coarse level (HiLa's regions) is painted on its patches' lattice, each
    patch taking its region's value, so the map covers tissue only and stops at
    the slide's edge. Values below ``threshold`` (x a uniform share) are NaN.
    """
    level = result.explanation.levels[level_name]
    values = heatmap_values(level, prompt_index(level, prompt))
    finer = _finer_level(result, level_name)
    if finer is not None:
        layout = grid_layout(finer.coords, finer.tile_size)
        parent = np.asarray(finer.parent, np.int64)
        inside = (parent >= 0) & (parent < len(values))
        drawn = np.full(len(parent), np.nan, np.float32)
        drawn[inside] = values[parent[inside]]
    else:
        layout = grid_layout(level.coords, level.tile_size)
        drawn = values
    return layout, layout.paint(below_threshold_hidden(drawn, threshold))


def heatmap_layer(
    result: PredictionResult,
    level_name: str,
    prompt: int | str,
    colormap: str = MAP_COLORMAP,
    threshold: float | None = None,
) -> LayerData:
    """Image layer data: the prompt's map on the fixed scale, NaN off-tissue.

    One pixel per tile of :func:`heatmap_grid` (regions drawn on their patches,
    so never over glass); values below ``threshold`` are transparent.
    """
    level = result.explanation.levels[level_name]
    k = prompt_index(level, prompt)
    values = heatmap_values(level, k)
    layout, image = heatmap_grid(result, level_name, k, threshold)
    kwargs = {
        "name": f"{level_name} prompt: {level.map_names[k]} (x uniform share)",
        "scale": layout.scale(result.mpp),
        "translate": layout.translate(result.mpp),
        "colormap": colormap,
        "opacity": MAP_OPACITY,
        "contrast_limits": MAP_LIMITS,
        "interpolation2d": "nearest",
        "blending": "translucent",
        "metadata": _meta(
            result,
            "heatmap",
            level_name,
            prompt=level.map_names[k],
            prompt_index=k,
            prompt_text=level.map_texts[k] if k < len(level.map_texts) else "",
            map_unit=MAP_UNIT,
            informative=map_is_informative(values),
            threshold=threshold,
        ),
    }
    return image, kwargs, "image"


NOT_SELECTED, SELECTED = 1, 2  # selection-map label values (0: no tile)


def selection_layer(result: PredictionResult, level_name: str = "patch") -> LayerData:
    """Labels layer data: 1 where a tile was left out, 2 where it was selected, 0 elsewhere.

    Two label values, not one per tile: napari's direct colormap needs numba
    beyond 65,535 labels and a slide at 20x has up to ~100,000 patches. The
    viewer's status bar names the tile under the cursor from the grid instead.
    """
    level = result.explanation.levels[level_name]
    layout = grid_layout(level.coords, level.tile_size)
    labels = np.zeros(layout.shape, np.uint8)
    selected = np.asarray(level.selected, bool)
    labels[layout.rows, layout.cols] = np.where(selected, SELECTED, NOT_SELECTED)
    kwargs = {
        "name": f"{level_name} selection",
        "scale": layout.scale(result.mpp),
        "translate": layout.translate(result.mpp),
        "colormap": {
            None: TRANSPARENT,
            0: TRANSPARENT,
            NOT_SELECTED: UNSELECTED_RGBA,
            SELECTED: SELECTED_RGBA,
        },
        "opacity": 1.0,
        "metadata": _meta(result, "selection", level_name),
    }
    return labels, kwargs, "labels"


def clipped_extents(
    coords: np.ndarray, size: float, slide_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x0, y0, x1, y1) per tile in level-0 px, the far edges cut at the slide's edge.

    ``slide_size`` is the level-0 (width, height); a region running past the
    slide (the last row and column of 4096 px regions usually do) stops there.
    The viewer's outlines and the GeoJSON/CSV exports share this cut.
    """
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    x0, y0 = coords[:, 0], coords[:, 1]
    x1, y1 = x0 + size, y0 + size
    if slide_size is not None:
        x1, y1 = np.minimum(x1, slide_size[0]), np.minimum(y1, slide_size[1])
    return x0, y0, x1, y1


def clipped_rectangles(
    coords: np.ndarray, size: int, slide_size: tuple[int, int] | None = None
) -> np.ndarray:
    """(N, 4, 2) rectangle corners (row, col), level-0 px on pixel edges, cut at the slide's edge
    (see :func:`clipped_extents`)."""
    x0, y0, x1, y1 = clipped_extents(coords, size, slide_size)
    corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
    return np.stack([np.stack(c, axis=1) for c in corners], axis=1) - 0.5


def region_outline_layer(
    result: PredictionResult,
    level_name: str = "region",
    slide_size: tuple[int, int] | None = None,
) -> LayerData:
    """Shapes layer data: one rectangle per region on the slide's pixel edges.

    Selected regions are drawn in a strong colour, the others faintly; the
    features table names each region's score and selection. With
    ``slide_size`` (level-0 width, height) the rectangles stop at the slide's edge.
    """
    level = result.explanation.levels[level_name]
    mpp = result.mpp
    selected = np.asarray(level.selected, bool)
    edge = [REGION_SELECTED_RGBA if s else REGION_UNSELECTED_RGBA for s in selected]
    kwargs = {
        "name": f"{level_name} selection",
        "shape_type": "rectangle",
        "edge_color": np.array(edge) if edge else "white",
        "face_color": "transparent",
        "edge_width": max(level.tile_size / 80.0, 2.0),
        "scale": (mpp, mpp),
        "features": {
            "region": np.arange(len(selected)),
            "alignment_score": np.asarray(level.scores, np.float32),
            "selected": selected,
        },
        "metadata": _meta(result, "regions", level_name),
    }
    return list(clipped_rectangles(level.coords, level.tile_size, slide_size)), kwargs, "shapes"


def result_layers(
    result: PredictionResult,
    prompts: dict[str, int | str] | None = None,
    tissue: Any = None,
    threshold: float | None = None,
    slide_size: tuple[int, int] | None = None,
) -> list[LayerData]:
    """All overlays for a result, bottom to top.

    The tissue mask (a :class:`~napari_hila.slides.TissueMask`, drawn by the
    slides package's own layer function, hidden), one heatmap per level showing
    ``prompts[level]`` (default the first prompt; the coarse level's hidden;
    tiles below ``threshold`` transparent), then the selection maps (region
    outlines cut at ``slide_size``, level-0 width and height): outlines for the coarsest level, per-tile labels
    for the others.
    """
    prompts = prompts or {}
    layers: list[LayerData] = []
    if tissue is not None:
        data, kwargs, kind = tissue_layer_data(tissue, result.mpp)
        kwargs.pop("units", None)  # the viewer passes the slide layer's units
        kwargs["visible"] = False
        kwargs["metadata"] = {**kwargs.get("metadata", {}), OVERLAY_KEY: "tissue"}
        layers.append((data, kwargs, kind))
    levels = result.explanation.levels
    coarse = _coarse_level(result)
    for name, level in levels.items():
        if len(level.coords) == 0 or level.maps.shape[1] == 0:
            continue
        data, kwargs, kind = heatmap_layer(result, name, prompts.get(name, 0), threshold=threshold)
        kwargs["visible"] = name != coarse  # one heatmap at a time; the user can switch
        layers.append((data, kwargs, kind))
    for name, level in levels.items():
        if len(level.coords) == 0:
            continue
        if name == coarse:
            layers.append(region_outline_layer(result, name, slide_size))
        else:
            layers.append(selection_layer(result, name))
    return layers


def _coarse_level(result: PredictionResult) -> str | None:
    """The level drawn as outlines: the one other levels point into (HiLa's regions)."""
    levels = result.explanation.levels
    if len(levels) < 2:
        return None
    return max(levels, key=lambda n: levels[n].tile_size)


def token_at(level: LevelExplanation, world_yx: tuple[float, float], mpp: float) -> int:
    """Index of the token whose tile contains the world point, or -1 (a linear scan)."""
    x = world_yx[1] / mpp + 0.5  # back to level-0 px (pixel-edge frame)
    y = world_yx[0] / mpp + 0.5
    coords = np.asarray(level.coords, np.float64)
    if len(coords) == 0:
        return -1
    size = level.tile_size
    inside = (coords[:, 0] <= x) & (x < coords[:, 0] + size)
    inside &= (coords[:, 1] <= y) & (y < coords[:, 1] + size)
    hits = np.flatnonzero(inside)
    return int(hits[0]) if len(hits) else -1


class TileLookup:
    """Constant-time "which tile is under the cursor" for one level and prompt.

    Built once per result and prompt, so hovering over a slide with 100,000
    patches costs a grid lookup, not a scan of every tile.
    """

    def __init__(self, result: PredictionResult, level_name: str, prompt: int | str) -> None:
        self.level_name = level_name
        self.level = result.explanation.levels[level_name]
        self.mpp = result.mpp
        self.prompt = prompt_index(self.level, prompt)
        self.layout = grid_layout(self.level.coords, self.level.tile_size)
        self.index = self.layout.index_image()
        self.values = heatmap_values(self.level, self.prompt)

    def token(self, world_yx: tuple[float, float]) -> int:
        """The token whose tile contains the world point, or -1."""
        if self.layout.step < self.level.tile_size:  # overlapping tiles: several may hold it
            return token_at(self.level, world_yx, self.mpp)
        x = world_yx[1] / self.mpp + 0.5
        y = world_yx[0] / self.mpp + 0.5
        col = int(np.floor((x - self.layout.origin[0]) / self.layout.step))
        row = int(np.floor((y - self.layout.origin[1]) / self.layout.step))
        rows, cols = self.layout.shape
        if not (0 <= row < rows and 0 <= col < cols):
            return -1
        i = int(self.index[row, col])
        if i < 0:
            return -1
        x0, y0 = self.level.coords[i]
        inside = x0 <= x < x0 + self.level.tile_size and y0 <= y < y0 + self.level.tile_size
        return i if inside else -1

    def info(self, world_yx: tuple[float, float]) -> TokenInfo | None:
        i = self.token(world_yx)
        if i < 0:
            return None
        level = self.level
        return TokenInfo(
            level=self.level_name,
            index=i,
            score=float(level.scores[i]),
            selected=bool(level.selected[i]),
            region=int(level.parent[i]) if level.parent is not None else -1,
            prompt=level.map_names[self.prompt],
            alignment=float(self.values[i]),
        )


@dataclass(frozen=True)
class TokenInfo:
    """What the viewer says about the tile under the cursor."""

    level: str
    index: int
    score: float
    selected: bool
    region: int
    prompt: str
    alignment: float

    def text(self) -> str:
        region = f", region {self.region}" if self.region >= 0 else ""
        kept = "selected" if self.selected else "not selected"
        return (
            f"{self.level} {self.index} ({kept}{region}): '{self.prompt}' "
            f"{self.alignment:.2f}x a uniform share"
        )


def token_info(
    result: PredictionResult, level_name: str, world_yx: tuple[float, float], prompt: int | str
) -> TokenInfo | None:
    """The tile under a world point at one level, with the chosen prompt's alignment."""
    return TileLookup(result, level_name, prompt).info(world_yx)


def top_tokens(level: LevelExplanation, prompt: int | str, count: int = 8) -> np.ndarray:
    """Indices of the ``count`` tiles most aligned with a prompt, best first."""
    column = np.asarray(level.maps, np.float64)[:, prompt_index(level, prompt)]
    order = np.argsort(-column, kind="stable")
    return order[: max(int(count), 0)]


def camera_for_token(
    level: LevelExplanation, index: int, mpp: float, full_resolution: bool = True
) -> tuple[tuple[float, float], float]:
    """Camera ``(center_yx, zoom)`` showing a tile; zoom 1/mpp is one screen px per slide px."""
    x0, y0 = np.asarray(level.coords[index], np.float64)
    half = level.tile_size / 2.0 - 0.5
    center = ((y0 + half) * mpp, (x0 + half) * mpp)
    zoom = 1.0 / mpp if full_resolution else 256.0 / (level.tile_size * mpp)
    return center, zoom
