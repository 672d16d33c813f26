"""The overlay layers of one result in a napari viewer.

Adds the layers :mod:`napari_hila.overlays` describes, swaps the prompt a
heatmap shows without touching the user's colormap or opacity, reports the
tile under the cursor, and removes everything again when a new result comes.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image, Layer

from napari_hila import overlays
from napari_hila.results import PredictionResult
from napari_hila.slides import SLIDE_SUFFIXES

SLIDE_PATH_KEYS = ("slide_path", "path")
STATUS_KINDS = ("heatmap", "selection", "regions")  # overlays whose status is the hover line
HOVER_CHARS = 100  # the status bar's share at laptop width (1366 px), after the coordinates
PROMPT_CHARS = 18  # a prompt's name in the hover line; the dock's tooltip has it whole


def hover_line(infos: list[overlays.TokenInfo], max_chars: int = HOVER_CHARS) -> str:
    """The tiles under the cursor in one short line: each map's value in its unit.

    E.g. "patch 3 selected: pleomorphism 1.75x uniform | region 1 not selected:
    invasion 0.67x uniform". The value is the prompt's share of the tile
    relative to a uniform share (overlays.MAP_UNIT: 1 = uniform, 0 = none, the
    heatmap's fixed 0-3 scale); names are shortened until the line fits ``max_chars``.
    """

    def part(info: overlays.TokenInfo, chars: int) -> str:
        name = info.prompt if len(info.prompt) <= chars else info.prompt[: chars - 1] + "…"
        kept = "selected" if info.selected else "not selected"
        return f"{info.level} {info.index} {kept}: {name} {info.alignment:.2f}x uniform"

    for chars in (PROMPT_CHARS, 12, 8, 4):
        line = " | ".join(part(info, chars) for info in infos)
        if len(line) <= max_chars:
            return line
    return line[: max_chars - 1] + "…"


def slide_path_of(layer: Layer) -> str | None:
    """The slide file a layer shows (from the reader's metadata or the layer's source)."""
    if not isinstance(layer, Image) or layer.metadata.get(overlays.OVERLAY_KEY):
        return None
    for key in SLIDE_PATH_KEYS:
        value = layer.metadata.get(key)
        if value:
            return str(value)
    source = getattr(getattr(layer, "source", None), "path", None)
    if source and any(str(source).lower().endswith(s) for s in SLIDE_SUFFIXES):
        return str(source)
    return None


def adopt_slide_units(layer: Layer, slide: Layer) -> bool:
    """Give a plain layer without units the slide's pixel size and units; True if it did.

    napari stops using units for every layer (the scale bar loses its "um") as
    soon as one layer is in pixels. A plain image or labels layer a user adds
    is taken as being in the slide's level-0 pixels, the usual case for masks
    and annotations exported from the slide; plugin overlays already carry units.
    """
    if layer is slide or layer.metadata.get(overlays.OVERLAY_KEY) or slide_path_of(layer):
        return False
    if any(str(u) != "pixel" for u in layer.units) or all(str(u) == "pixel" for u in slide.units):
        return False
    n = min(layer.ndim, 2)
    layer.units = (*layer.units[:-n], *slide.units[-n:])
    # the scale last: its extent event clears the viewer's cached extent, units and all
    layer.scale = (*layer.scale[:-n], *slide.scale[-n:])
    return True


class ResultLayers:
    """Owns the overlay layers of the current result in ``viewer``."""

    def __init__(self, viewer: Any, on_hover: Callable[[str, str], None] | None = None) -> None:
        self.viewer = viewer
        self.result: PredictionResult | None = None
        self.layers: list[Layer] = []
        self.heatmaps: dict[str, Layer] = {}
        self.prompts: dict[str, int] = {}
        self.on_hover = on_hover
        self.threshold: float | None = None  # x uniform share; tiles below it transparent
        self.slide_size: tuple[int, int] | None = None  # level-0 (width, height)
        self._hidden: dict[int, bool] = {}  # id(layer) -> visibility before hide()
        self._lookup_key: tuple | None = None
        self._lookup_cache: list[overlays.TileLookup] = []
        viewer.mouse_move_callbacks.append(self._on_mouse_move)

    # -- building ----------------------------------------------------------
    def show(
        self,
        result: PredictionResult,
        tissue: Any = None,
        prompts: dict[str, int | str] | None = None,
        units: Any = None,
        slide_size: tuple[int, int] | None = None,
    ) -> list[Layer]:
        """Show this result's overlays, replacing the previous result's.

        Layers of the same kind and level are updated in place (napari removes
        a layer slowly, and the user keeps their colormap, opacity and
        visibility); the others are added or removed. Heatmaps show napari's
        colour bar; ``slide_size`` (level-0 width, height) clips region outlines.
        """
        previous = {_key(layer): layer for layer in self.layers if layer in self.viewer.layers}
        prompts = dict(prompts or self._same_prompts(result))
        self.result = result
        self.slide_size = slide_size or self.slide_size
        self._hidden = {}
        self.layers, self.heatmaps = [], {}
        layer_data = overlays.result_layers(
            result, prompts, tissue, threshold=self.threshold, slide_size=self.slide_size
        )
        for data, kwargs, kind in layer_data:
            if units is not None:
                kwargs["units"] = units
            old = previous.pop(
                (kwargs["metadata"].get(overlays.OVERLAY_KEY), kwargs["metadata"].get("level")),
                None,
            )
            layer = _update(old, data, kwargs, kind) if old is not None else None
            if layer is None:
                if old is not None:
                    self.viewer.layers.remove(old)
                layer = Layer.create(data, kwargs, kind)
                if layer.metadata.get(overlays.OVERLAY_KEY) in STATUS_KINDS:
                    _add_tile_status(layer, self)
                self.viewer.add_layer(layer)
            self.layers.append(layer)
            if layer.metadata.get(overlays.OVERLAY_KEY) == "heatmap":
                self.heatmaps[layer.metadata["level"]] = layer
                layer.colorbar.visible = True
        for stale in previous.values():
            self.viewer.layers.remove(stale)
        self.prompts = {lv: int(ly.metadata["prompt_index"]) for lv, ly in self.heatmaps.items()}
        finest = self.finest_level()
        if finest in self.heatmaps:
            self._show_only(self.heatmaps[finest])  # the dock's prompt and the canvas agree
        return list(self.layers)

    # -- one result, one slide -------------------------------------------------
    def hide(self) -> None:
        """Hide every overlay (the result's slide is gone or not chosen); :meth:`restore` undoes it."""
        for layer in self.layers:
            if layer in self.viewer.layers and id(layer) not in self._hidden:
                self._hidden[id(layer)] = bool(layer.visible)
                layer.visible = False

    def restore(self) -> None:
        """Show the overlays again as they were before :meth:`hide`."""
        for layer in self.layers:
            if layer in self.viewer.layers and id(layer) in self._hidden:
                layer.visible = self._hidden[id(layer)]
        self._hidden = {}

    @property
    def hidden(self) -> bool:
        return bool(self._hidden)

    # -- threshold -------------------------------------------------------------
    def set_threshold(self, threshold: float | None) -> None:
        """Draw only tiles at or above ``threshold`` x a uniform share (None: all tiles)."""
        self.threshold = None if threshold is None else float(threshold)
        if self.result is None:
            return
        for level, layer in self.heatmaps.items():
            if layer not in self.viewer.layers:
                continue
            data, kwargs, _ = overlays.heatmap_layer(
                self.result, level, self.prompts.get(level, 0), threshold=self.threshold
            )
            layer.data = data
            _set_contrast(layer, data, tuple(layer.contrast_limits))
            layer.metadata = {**layer.metadata, "threshold": self.threshold}

    def _same_prompts(self, result: PredictionResult) -> dict[str, int]:
        """The prompts shown now, kept for a new result whose prompt lists are the same."""
        if self.result is None:
            return {}
        kept = {}
        for level, index in self.prompts.items():
            old = self.result.explanation.levels.get(level)
            new = result.explanation.levels.get(level)
            if old is not None and new is not None and old.map_names == new.map_names:
                kept[level] = index
        return kept

    def clear(self) -> None:
        """Remove this manager's layers that are still in the viewer."""
        for layer in self.layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers, self.heatmaps, self.prompts = [], {}, {}
        self.result = None

    def detach(self) -> None:
        """Stop listening to the viewer (the dock is closing)."""
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)

    # -- prompts ------------------------------------------------------------
    def set_prompt(self, level: str, prompt: int | str) -> Layer | None:
        """Show ``prompt`` in ``level``'s heatmap, keeping the user's colormap and opacity.

        That heatmap becomes the visible, selected one, so its controls are at hand.
        """
        if self.result is None or level not in self.result.explanation.levels:
            return None
        data, kwargs, _ = overlays.heatmap_layer(
            self.result, level, prompt, threshold=self.threshold
        )
        layer = self.heatmaps.get(level)
        if layer is None or layer not in self.viewer.layers:  # the user deleted it: bring it back
            layer = Layer.create(data, kwargs, "image")
            _add_tile_status(layer, self)
            self.viewer.add_layer(layer)
            layer.colorbar.visible = True
            self.layers.append(layer)
            self.heatmaps[level] = layer
        else:
            layer.data = data
            _set_contrast(layer, data, tuple(layer.contrast_limits))  # the user's limits stay
            layer.name = kwargs["name"]
            layer.metadata = {**layer.metadata, **kwargs["metadata"]}
        self.prompts[level] = int(kwargs["metadata"]["prompt_index"])
        self._show_only(layer)
        return layer

    def _show_only(self, layer: Layer) -> None:
        """Make ``layer`` the visible, selected heatmap (heatmaps of other levels would cover it)."""
        for other in self.heatmaps.values():
            if other is not layer and other in self.viewer.layers:
                other.visible = False
        layer.visible = True
        self.viewer.layers.selection.active = layer

    def prompt_text(self, level: str) -> str:
        layer = self.heatmaps.get(level)
        return str(layer.metadata.get("prompt_text", "")) if layer is not None else ""

    def finest_level(self) -> str | None:
        """The level with the smallest tiles (HiLa's patches)."""
        if self.result is None or not self.result.explanation.levels:
            return None
        levels = self.result.explanation.levels
        return min(levels, key=lambda n: levels[n].tile_size)

    # -- hover --------------------------------------------------------------
    def tiles_at(self, world_yx: tuple[float, float]) -> list[overlays.TokenInfo]:
        """The tile under a world point at each level with a map, finest level first."""
        if self.result is None:
            return []
        infos = (lookup.info(world_yx) for lookup in self._lookups())
        return [info for info in infos if info is not None]

    def describe(self, world_yx: tuple[float, float]) -> str:
        """One short line about the tiles under a world point (:func:`hover_line`)."""
        infos = self.tiles_at(world_yx)
        return hover_line(infos) if infos else ""

    def _lookups(self) -> list[overlays.TileLookup]:
        """Per-level tile lookups for the shown prompts, rebuilt when they change."""
        key = (id(self.result), tuple(sorted(self.prompts.items())))
        if self._lookup_key != key:
            levels = self.result.explanation.levels
            names = sorted(levels, key=lambda n: levels[n].tile_size)
            self._lookup_cache = [
                overlays.TileLookup(self.result, n, self.prompts.get(n, 0))
                for n in names
                if levels[n].map_names and len(levels[n].coords)
            ]
            self._lookup_key = key
        return self._lookup_cache

    def _on_mouse_move(self, viewer: Any, event: Any) -> None:
        if self.result is None or self.on_hover is None:
            return
        infos = self.tiles_at(tuple(event.position)[-2:])  # one lookup for both lines
        self.on_hover(hover_line(infos) if infos else "", " | ".join(i.text() for i in infos))


def _key(layer: Layer) -> tuple[Any, Any]:
    return layer.metadata.get(overlays.OVERLAY_KEY), layer.metadata.get("level")


def _update(layer: Layer, data: Any, kwargs: dict[str, Any], kind: str) -> Layer | None:
    """Put new data into an existing overlay layer; None when it must be rebuilt."""
    if layer._type_string != kind or (kind == "shapes" and len(data) != layer.nshapes):
        return None
    if kind == "shapes":
        layer.data = data
        layer.edge_color = kwargs["edge_color"]
        layer.edge_width = kwargs["edge_width"]
    else:
        layer.data = data
    layer.scale = kwargs.get("scale", layer.scale)
    layer.translate = kwargs.get("translate", layer.translate)
    if kind == "image":
        _set_contrast(layer, data, kwargs["contrast_limits"])
    if kind == "labels" and "colormap" in kwargs:
        layer.colormap = kwargs["colormap"]
    if "features" in kwargs:
        layer.features = kwargs["features"]
    layer.name = kwargs["name"]
    layer.metadata = dict(kwargs["metadata"])
    return layer


def _set_contrast(layer: Image, data: np.ndarray, limits: tuple[float, float]) -> None:
    """Slider range over all the data's values, limits as the overlay suggests."""
    finite = data[np.isfinite(data)]
    low = min(float(finite.min()), limits[0]) if finite.size else limits[0]
    high = max(float(finite.max()), limits[1]) if finite.size else limits[1]
    layer.contrast_limits_range = (low, high)
    layer.contrast_limits = limits


def _add_tile_status(layer: Layer, manager: ResultLayers) -> None:
    """Make an overlay's status-bar text the short line of :func:`hover_line`.

    It takes the place of napari's raw pixel value (a map value without its
    unit, a label number, a shape's index), after the coordinates.
    """
    plain = layer.get_status

    def get_status(self: Layer, position: Any = None, **kwargs: Any) -> dict:
        status = plain(position, **kwargs)
        if position is not None and kwargs.get("world", False) and isinstance(status, dict):
            text = manager.describe(tuple(np.asarray(position)[-2:]))
            if text:
                coords = status.get("coords") or status.get("coordinates", "")
                status["coordinates"] = f"{coords}: {text}"
                status["value"] = text
        return status

    layer.get_status = types.MethodType(get_status, layer)
