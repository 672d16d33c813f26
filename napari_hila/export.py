"""Writing a :class:`PredictionResult` as files other tools open.

- ``<name>.geojson``: a QuPath-style FeatureCollection in level-0 pixels; one
  ``detection`` per patch and one ``annotation`` per region, each classified
  selected or not in the viewer's colours, with ``measurements`` (the map values
  the viewer shows, x a uniform share, and the raw ones under their own names);
- ``patch_scores.csv``: every token with its score, selection, shown and raw maps;
- in both, a tile's rectangle stops at the slide's edge when the slide's size is
  known (the last row and column of regions usually run past it), as in the viewer;
- PNGs aligned pixel for pixel with ``thumbnail.png``: the selection map and one
  heatmap per prompt and level, each token's square filled on the thumbnail;
- ``km.png`` (the patient against the cohort) and ``contributions.png``.

:func:`write_prediction_folder` writes them all into ``predict``'s folder, all or
none; prediction itself (``napari_hila.predict``, a lower layer) writes no files.
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from napari_hila import overlays
from napari_hila.errors import Cancelled
from napari_hila.io_utils import atomic_path, staged_folder
from napari_hila.modelfile import ModelCard, read_card
from napari_hila.overlays import UNSELECTED_RGBA, heatmap_values
from napari_hila.plotting import plot_cohort_km, plot_prompt_contributions, save_figure
from napari_hila.results import LevelExplanation, PredictionResult
from napari_hila.slides import open_slide

# matplotlib (0.1 s warm, 0.4 s cold) is imported where a figure is drawn: this module loads
# with every napari-hila command (commands.demo builds its parser), tests/test_startup_imports.py.

__all__ = [
    "write_geojson",
    "write_csv",
    "render_level_maps",
    "write_prediction_outputs",
    "write_prediction_folder",
    "token_raster",
]


def _rgb(rgba: tuple[float, ...]) -> list[int]:
    return [int(round(255 * c)) for c in rgba[:3]]


# QuPath classification colours, the viewer's: selected yellow (the region outline
# colour), left out pale grey (the veil the viewer lays over them).
SELECTED_COLOUR = _rgb(overlays.REGION_SELECTED_RGBA)
UNSELECTED_COLOUR = _rgb(overlays.UNSELECTED_RGBA)
OVERLAY_ALPHA = 0.55
SHOWN_SUFFIX = "(x uniform share)"  # the value the viewer shows and colours
RAW_SUFFIX = "(raw plan value)"  # the stored map value it comes from


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> list[list[list[float]]]:
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _measurements(lv: LevelExplanation, shown: np.ndarray) -> Iterator[dict[str, float]]:
    """QuPath measurements of each token in turn, named for what they are: shown and raw values.

    Each column goes to Python floats in one ``tolist`` (value by value, a
    1600-token result took 4x as long).
    """
    columns: dict[str, list[float]] = {
        "alignment score (raw)": np.asarray(lv.scores, np.float64).tolist(),
        "selected (1 yes, 0 no)": np.asarray(lv.selected, bool).astype(np.float64).tolist(),
    }
    maps = np.asarray(lv.maps)
    for k, name in enumerate(lv.map_names):
        columns[f"{name} {SHOWN_SUFFIX}"] = shown[:, k].tolist()
        columns[f"{name} {RAW_SUFFIX}"] = maps[:, k].tolist()
    for row in zip(*columns.values(), strict=True):
        yield dict(zip(columns, row, strict=True))


def _shown_maps(lv: LevelExplanation) -> np.ndarray:
    """(N, K) every map as the viewer shows it, relative to a uniform share."""
    if not len(lv.map_names):
        return np.zeros((len(lv.coords), 0), np.float32)
    return np.stack([heatmap_values(lv, k) for k in range(len(lv.map_names))], axis=1)


def iter_geojson_features(
    result: PredictionResult, slide_size: tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
    """QuPath GeoJSON features, one at a time: every patch a detection, every region an
    annotation.

    Each is classified "Selected <level>" (yellow) or "Not selected <level>"
    (grey), the viewer's colours, and carries the values the viewer shows.
    With ``slide_size`` (level-0 width, height) the rectangles stop at the slide's edge.
    """
    levels = result.explanation.levels
    for name, lv in levels.items():
        is_patch = name == "patch" or (len(levels) == 1)
        edges = np.stack(overlays.clipped_extents(lv.coords, lv.tile_size, slide_size), 1)
        rows = zip(
            edges.astype(np.float64).tolist(),
            np.asarray(lv.selected, bool).tolist(),
            _measurements(lv, _shown_maps(lv)),
            strict=True,
        )
        for i, (edge, selected, values) in enumerate(rows):
            yield {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": _rectangle(*edge)},
                "properties": {
                    "objectType": "detection" if is_patch else "annotation",
                    "name": f"{name} {i}",
                    "classification": {
                        "name": f"Selected {name}" if selected else f"Not selected {name}",
                        "color": SELECTED_COLOUR if selected else UNSELECTED_COLOUR,
                    },
                    "isLocked": False,
                    "measurements": values,
                },
            }


def write_geojson(
    result: PredictionResult,
    path: str | os.PathLike,
    slide_size: tuple[int, int] | None = None,
) -> Path:
    """Every patch and region, with its selection, as a GeoJSON FeatureCollection (level-0 px),
    cut at ``slide_size`` (level-0 width, height) when given.

    Written feature by feature, the text ``json.dumps`` gives for the whole
    collection: a feature's dicts are freed before the next is built, and no
    one C call holds the interpreter (and the viewer's event loop) for all of them.
    """
    features = (json.dumps(feature) for feature in iter_geojson_features(result, slide_size))
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write('{"type": "FeatureCollection", "features": [')
        for n, text in enumerate(features):
            fh.write(", " + text if n else text)
        fh.write("]}")
    return Path(path)


def write_csv(
    result: PredictionResult,
    path: str | os.PathLike,
    slide_size: tuple[int, int] | None = None,
) -> Path:
    """One row per token of every level: position, score, selection, each map.

    ``size`` is the grid's tile side; ``width`` and ``height`` the tile's extent on the
    slide, cut at ``slide_size`` (level-0 width, height) when given.
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        names = sorted({n for lv in result.explanation.levels.values() for n in lv.map_names})
        columns = [f"{n} {SHOWN_SUFFIX}" for n in names] + [f"{n} {RAW_SUFFIX}" for n in names]
        header = ["level", "index", "x", "y", "size", "width", "height", "region", "selected"]
        header.append("alignment score (raw)")
        writer.writerow([*header, *columns])
        for level, lv in result.explanation.levels.items():
            column = {n: k for k, n in enumerate(lv.map_names)}
            shown = _shown_maps(lv)
            x0, y0, x1, y1 = overlays.clipped_extents(lv.coords, lv.tile_size, slide_size)
            for i in range(len(lv.coords)):
                parent = int(lv.parent[i]) if lv.parent is not None else -1
                maps = [f"{shown[i, column[n]]:.6g}" if n in column else "" for n in names]
                maps += [f"{lv.maps[i, column[n]]:.6g}" if n in column else "" for n in names]
                writer.writerow(
                    [
                        level,
                        i,
                        int(lv.coords[i, 0]),
                        int(lv.coords[i, 1]),
                        lv.tile_size,
                        int(x1[i] - x0[i]),
                        int(y1[i] - y0[i]),
                        parent,
                        int(bool(lv.selected[i])),
                        f"{lv.scores[i]:.6g}",
                        *maps,
                    ]
                )
    return Path(path)


def token_raster(
    lv: LevelExplanation, values: np.ndarray, shape: tuple[int, int], downsample: float
) -> tuple[np.ndarray, np.ndarray]:
    """Paint each token's square onto a (h, w) canvas at ``downsample`` (level-0 px per pixel).

    Returns the painted values and a mask of painted pixels. Later tokens
    overwrite earlier ones where squares overlap.
    """
    h, w = shape
    out = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), bool)
    x0 = np.floor(lv.coords[:, 0] / downsample).astype(int)
    y0 = np.floor(lv.coords[:, 1] / downsample).astype(int)
    x1 = np.ceil((lv.coords[:, 0] + lv.tile_size) / downsample).astype(int)
    y1 = np.ceil((lv.coords[:, 1] + lv.tile_size) / downsample).astype(int)
    for i in range(len(values)):
        ys, ye = max(y0[i], 0), min(y1[i], h)
        xs, xe = max(x0[i], 0), min(x1[i], w)
        if ys < ye and xs < xe:
            out[ys:ye, xs:xe] = values[i]
            mask[ys:ye, xs:xe] = True
    return out, mask


def _blend(thumbnail: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A map's painted pixels over the thumbnail, on the fixed scale (:func:`overlays.blend_map`)."""
    return overlays.blend_map(thumbnail, np.where(mask, values, np.nan))


def _blend_selection(thumbnail: np.ndarray, selected: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Left-out tiles greyed as in the viewer, selected ones clear."""
    out = thumbnail[..., :3].astype(np.float32)
    grey = mask & (selected < 0.5)
    alpha = UNSELECTED_RGBA[3]
    out[grey] = (1 - alpha) * out[grey] + alpha * 255.0 * np.asarray(UNSELECTED_RGBA[:3])
    return out.round().astype(np.uint8)


def _save_png(rgb: np.ndarray, path: Path) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=3)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "map"


def render_level_maps(
    result: PredictionResult, thumbnail: np.ndarray, downsample: float, out_dir: str | os.PathLike
) -> dict[str, Path]:
    """Selection map and per-prompt heatmaps of every level, blended on the thumbnail.

    Every heatmap is drawn on the one fixed scale the viewer uses
    (:data:`napari_hila.overlays.MAP_LIMITS`, relative to a uniform share),
    so maps compare across prompts and slides; left-out tiles are greyed.
    """
    out_dir = Path(out_dir)
    written = {}
    shape = thumbnail.shape[:2]
    for level, lv in result.explanation.levels.items():
        if len(lv.coords) == 0:
            continue
        sel, mask = token_raster(lv, lv.selected.astype(np.float32), shape, downsample)
        written[f"selection_{level}"] = _save_png(
            _blend_selection(thumbnail, sel, mask), out_dir / f"selection_{level}.png"
        )
        for k, name in enumerate(lv.map_names):
            values, mask = token_raster(lv, heatmap_values(lv, k), shape, downsample)
            path = out_dir / f"heatmap_{level}_{k:02d}_{_slug(name)}.png"
            written[f"heatmap_{level}_{name}"] = _save_png(_blend(thumbnail, values, mask), path)
    return written


#: The result's note when the outputs drawn on slide pixels were not written.
NO_PIXELS_NOTE = (
    "no slide pixels were read (prediction from features, or the slide file is absent): "
    "thumbnail.png and the PNG heatmaps on it were not written"
)


def write_prediction_outputs(
    result: PredictionResult,
    out_dir: str | os.PathLike,
    card: dict[str, Any] | None = None,
    thumbnail: np.ndarray | None = None,
    thumbnail_max_side: int = 1024,
    read_slide: bool = True,
    slide_size: tuple[int, int] | None = None,
) -> dict[str, Path]:
    """Everything ``napari-hila predict`` writes, into ``out_dir``; returns the paths.

    Without a ``thumbnail``, one is read from the slide, unless ``read_slide`` is
    False or the slide file is absent: then thumbnail.png and the maps drawn on
    it are skipped and the result's warnings say so (GeoJSON, CSV and plots stay).
    The GeoJSON and CSV rectangles stop at the slide's edge: ``slide_size`` (level-0
    width, height), or the size of the slide read for the thumbnail. A ``thumbnail``
    given needs ``slide_size`` too (the maps are drawn at its scale).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slide_path = str(result.slide_path or "")
    pixels = thumbnail is not None or (
        read_slide and bool(slide_path) and Path(slide_path).exists()
    )
    if not pixels and NO_PIXELS_NOTE not in result.warnings:
        result.warnings.append(NO_PIXELS_NOTE)
    if pixels and thumbnail is None:
        with open_slide(slide_path) as slide:
            thumbnail = np.asarray(slide.get_thumbnail(thumbnail_max_side))[..., :3]
            slide_size = slide.level_dimensions[0]
    written = {"result": result.save(out_dir)}
    written["geojson"] = write_geojson(result, out_dir / "patches.geojson", slide_size)
    written["csv"] = write_csv(result, out_dir / "patch_scores.csv", slide_size)
    if pixels:
        if slide_size is None:
            raise ValueError("a thumbnail without slide_size: the maps' scale is unknown")
        downsample = slide_size[0] / thumbnail.shape[1]
        written["thumbnail"] = _save_png(
            np.ascontiguousarray(thumbnail, np.uint8), out_dir / "thumbnail.png"
        )
        written.update(render_level_maps(result, thumbnail, downsample, out_dir))
    from matplotlib.figure import Figure

    if card is not None:
        survival = (
            np.asarray(result.time_bin_edges, float),
            np.asarray(result.explanation.survival, float),
        )
        ax = Figure(figsize=(6.4, 5.2), dpi=110).add_subplot(1, 1, 1)
        plot_cohort_km(card, ax=ax, patient_survival=survival)
        ax.figure.suptitle(str(card.get("label") or card.get("model", "")), fontsize=8)
        written["km"] = save_figure(ax, out_dir / "km.png")
    n = len(result.explanation.contributions)
    if n:
        ax = Figure(figsize=(7.0, 0.32 * n + 1.4), dpi=110).add_subplot(1, 1, 1)
        plot_prompt_contributions(result, ax=ax)
        written["contributions"] = save_figure(ax, out_dir / "contributions.png")
    return written


#: Names ``predict`` wrote into its folder before the outputs manifest; a rewrite
#: removes them, so no earlier model's maps stay beside new ones.
STALE_OUTPUTS = (
    "result.json",
    "result.npz",
    "thumbnail.png",
    "selection_*.png",
    "heatmap_*.png",
    "km.png",
    "contributions.png",
    "patches.geojson",
    "patch_scores.csv",
)


def write_prediction_folder(
    result: PredictionResult,
    out_dir: str | os.PathLike,
    card: ModelCard | Mapping[str, Any] | None = None,
    *,
    read_slide: bool = True,
    progress: Callable[[str, float], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Path]:
    """``predict``'s folder: :func:`write_prediction_outputs` into ``out_dir``, all or none.

    The files are written into a staging folder that replaces the folder's earlier
    outputs only once complete. ``card``: the model's card (default: read from the
    result's ``model_path``); ``read_slide=False`` for a prediction from features
    (no pixels read). ``progress("export", fraction)`` and ``cancel`` (raises
    :class:`~napari_hila.errors.Cancelled` before anything is written) as for
    :func:`napari_hila.predict.predict_slide`. Returns the final paths.
    """
    if cancel is not None and cancel.is_set():
        raise Cancelled("prediction cancelled by the user")
    report = progress or (lambda stage, fraction: None)
    report("export", 0.0)
    card = read_card(result.model_path) if card is None else card
    out_dir = Path(out_dir)
    with staged_folder(out_dir, stale=STALE_OUTPUTS) as staging:
        written = write_prediction_outputs(result, staging, card=card, read_slide=read_slide)
    report("export", 1.0)
    return {key: out_dir / path.name for key, path in written.items()}
