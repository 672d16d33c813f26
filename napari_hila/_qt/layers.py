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


class ResultLayers:
    """Owns the overlay layers of the current result in ``viewer``."""

    def __init__(self, viewer: Any, on_hover: Callable[[str], None] | None = None) -> None:
        self.viewer = viewer
        self.result: PredictionResult | None = None
        self.layers: list[Layer] = []
        self.heatmaps: dict[str, Layer] = {}
        self.prompts: dict[str, int] = {}
        self.on_hover = on_hover
        viewer.mouse_move_callbacks.append(self._on_mouse_move)

    # -- building ----------------------------------------------------------
    def show(
        self,
        result: PredictionResult,
        tissue: Any = None,
        prompts: dict[str, int | str] | None = None,
        units: Any = None,
    ) -> list[Layer]:
        """Replace any previous overlays with this result's; returns the new layers."""
        self.clear()
        self.result = result
        specs = overlays.result_layers(result, prompts, tissue)
        for data, kwargs, kind in specs:
            if units is not None:
                kwargs["units"] = units
            layer = Layer.create(data, kwargs, kind)
            meta = layer.metadata
            if meta.get(overlays.OVERLAY_KEY) == "heatmap":
                self.heatmaps[meta["level"]] = layer
                self.prompts[meta["level"]] = int(meta["prompt_index"])
                _add_tile_status(layer, self)
            self.viewer.add_layer(layer)
            self.layers.append(layer)
        finest = self.finest_level()
        if finest in self.heatmaps:
            self.viewer.layers.selection.active = self.heatmaps[finest]
        return list(self.layers)

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
        """Show ``prompt`` in ``level``'s heatmap, keeping the user's colormap and opacity."""
        if self.result is None or level not in self.result.explanation.levels:
            return None
        data, kwargs, _ = overlays.heatmap_layer(self.result, level, prompt)
        layer = self.heatmaps.get(level)
        if layer is None or layer not in self.viewer.layers:  # the user deleted it: bring it back
            layer = Layer.create(data, kwargs, "image")
            _add_tile_status(layer, self)
            self.viewer.add_layer(layer)
            self.layers.append(layer)
            self.heatmaps[level] = layer
        else:
            layer.data = data
            layer.contrast_limits_range = (0.0, max(float(np.nanmax(data)), 1e-6))
            layer.contrast_limits = kwargs["contrast_limits"]
            layer.name = kwargs["name"]
            layer.metadata = {**layer.metadata, **kwargs["metadata"]}
        self.prompts[level] = int(kwargs["metadata"]["prompt_index"])
        return layer

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
    def describe(self, world_yx: tuple[float, float]) -> str:
        """One line about the tiles under a world point, finest level first."""
        if self.result is None:
            return ""
        levels = self.result.explanation.levels
        parts = []
        for name in sorted(levels, key=lambda n: levels[n].tile_size):
            if len(levels[name].map_names) == 0:
                continue
            info = overlays.token_info(self.result, name, world_yx, self.prompts.get(name, 0))
            if info is not None:
                parts.append(info.text())
        return " | ".join(parts)

    def _on_mouse_move(self, viewer: Any, event: Any) -> None:
        if self.result is None or self.on_hover is None:
            return
        position = tuple(event.position)[-2:]
        self.on_hover(self.describe(position))


def _add_tile_status(layer: Image, manager: ResultLayers) -> None:
    """Make the heatmap's status-bar text name the tile's score, selection and region."""
    plain = layer.get_status

    def get_status(self: Image, position: Any = None, **kwargs: Any) -> dict:
        status = plain(position, **kwargs)
        if position is not None and kwargs.get("world", False) and isinstance(status, dict):
            text = manager.describe(tuple(np.asarray(position)[-2:]))
            if text:
                status["coordinates"] = f"{status.get('coordinates', '')} | {text}"
        return status

    layer.get_status = types.MethodType(get_status, layer)
