"""The dock's legend: what the heatmap colours and the selection veils mean.

The colour ramp is drawn from the heatmap layer's own colormap and contrast
limits, so it always matches the canvas (and napari's colour bar on it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from napari_hila import overlays

RAMP_SIZE = (150, 12)  # px


def ramp_pixels(layer: Any, width: int = RAMP_SIZE[0], height: int = RAMP_SIZE[1]) -> np.ndarray:
    """(height, width, 3) uint8: the layer's colormap from its lower to its upper limit."""
    colours = np.asarray(layer.colormap.map(np.linspace(0.0, 1.0, width)))[:, :3]
    row = (np.clip(colours, 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(row[None], height, axis=0))


def _swatch(rgba: tuple[float, float, float, float], outline: bool = False) -> QPixmap:
    image = np.full((12, 12, 3), 255, np.uint8)
    colour = (np.asarray(rgba[:3]) * 255).round().astype(np.uint8)
    if outline:
        image[[0, 1, -2, -1], :] = colour
        image[:, [0, 1, -2, -1]] = colour
    else:
        image[:] = colour
    qimage = QImage(image.data, 12, 12, 36, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimage)


class MapLegend(QWidget):
    """Colour ramp with its unit and limits, and what grey veils and outlines mean."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.ramp = QLabel(self)
        self.limits = QLabel(self)
        self.unit = QLabel(self)
        self.unit.setWordWrap(True)
        ramp_row = QHBoxLayout()
        ramp_row.addWidget(self.ramp)
        ramp_row.addWidget(self.limits, 1)
        layout.addLayout(ramp_row)
        layout.addWidget(self.unit)
        row = QHBoxLayout()
        self.unselected = self._swatch(row, _swatch(overlays.UNSELECTED_RGBA), "not selected")
        self.region = self._swatch(
            row, _swatch(overlays.REGION_SELECTED_RGBA, outline=True), "selected region"
        )
        row.addStretch(1)
        layout.addLayout(row)

    def _swatch(self, row: QHBoxLayout, pixmap: QPixmap, text: str) -> QLabel:
        swatch = QLabel(self)
        swatch.setPixmap(pixmap)
        label = QLabel(text, self)
        label.setWordWrap(True)  # a larger font wraps it rather than widening the dock
        label.setToolTip(
            "Tiles the model left out are veiled pale grey; selected regions are outlined "
            "yellow, the others grey"
        )
        row.addWidget(swatch, 0, Qt.AlignmentFlag.AlignVCenter)
        row.addWidget(label)
        return label

    def show_layer(self, layer: Any) -> None:
        """Draw the ramp of ``layer`` (a heatmap) with its limits and the map's unit."""
        pixels = ramp_pixels(layer)
        h, w = pixels.shape[:2]
        image = QImage(pixels.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        self.ramp.setPixmap(QPixmap.fromImage(image))
        low, high = (float(v) for v in layer.contrast_limits)
        self.limits.setText(f"{low:g} – {high:g}{'+' if high == overlays.MAP_LIMITS[1] else ''}")
        threshold = layer.metadata.get("threshold")
        shown = f"; tiles below {threshold:g} hidden" if threshold is not None else ""
        self.unit.setText(f"heatmap: x a uniform share (1 = uniform){shown}")
