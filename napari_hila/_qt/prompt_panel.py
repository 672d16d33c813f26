"""Prompt panel: contributions to the risk as bars, and the top tiles of a prompt.

Clicking a bar shows that prompt's heatmap; clicking a thumbnail centres the
viewer on the tile at full resolution.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QToolButton, QWidget

from napari_hila._qt.theme import apply_theme, theme_colors
from napari_hila.results import PredictionResult, PromptContribution
from napari_hila.slides.base import pick_level

THUMB_PX = 72
TOP_PROMPTS = 6  # bars in the chart (readable in a laptop's dock); the lists hold every prompt
LABEL_CHARS = 20


def ranked_contributions(contributions: list[PromptContribution]) -> list[PromptContribution]:
    """Prompts ordered by how strongly they move the risk, strongest first."""
    return sorted(contributions, key=lambda c: -abs(c.delta_risk))


class ContributionChart(FigureCanvasQTAgg):
    """Horizontal bars: each prompt's change of this patient's risk."""

    prompt_clicked = Signal(str, str)  # level, prompt name

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        self.figure = Figure(figsize=(3.4, 2.6), layout="constrained")
        super().__init__(self.figure)
        self.setParent(parent)
        self.viewer = viewer
        self.bars: list[tuple[Any, PromptContribution]] = []
        self.shown: tuple[PredictionResult, dict[str, str]] | None = None
        self.setMinimumHeight(170)
        self.setMinimumWidth(160)  # the figure's own size would force a wide dock
        self.mpl_connect("pick_event", self._on_pick)
        events = getattr(getattr(viewer, "events", None), "theme", None)
        if events is not None:  # redrawn in the new theme's colours (light or dark)
            events.connect(self._on_theme)
            self.destroyed.connect(lambda *_: _disconnect(events, self._on_theme))

    def _on_theme(self, *_: Any) -> None:
        if self.shown is not None:
            self.show_contributions(*self.shown)

    def show_contributions(self, result: PredictionResult, highlight: dict[str, str]) -> None:
        """Draw the ranked contributions; ``highlight`` maps level -> shown prompt."""
        from napari_hila.plotting import plot_prompt_contributions

        self.shown = (result, dict(highlight))
        self.figure.clear()
        ax = self.figure.add_subplot(1, 1, 1)
        plot_prompt_contributions(result, ax=ax, top=TOP_PROMPTS)
        # plot_prompt_contributions draws the strongest on top: bar i is ranked[::-1][i]
        ranked = ranked_contributions(result.explanation.contributions)[:TOP_PROMPTS][::-1]
        colors = theme_colors(self.viewer)
        self.bars = list(zip(ax.patches, ranked, strict=False))
        for bar, contrib in self.bars:
            bar.set_picker(True)
            if highlight.get(contrib.level) == contrib.name:
                bar.set_edgecolor(colors["foreground"])
                bar.set_linewidth(1.5)
        short = [
            f"{c.level[:1].upper()}: "
            + (c.name if len(c.name) <= LABEL_CHARS else c.name[: LABEL_CHARS - 1] + "…")
            for c in ranked
        ]
        ax.set_yticks(range(len(ranked)), short, fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3, symmetric=True))
        ax.tick_params(axis="x", labelsize=7)
        for text in ax.texts:  # the long note is for the PNG; the dock's column is narrow
            if text.get_text().startswith("negligible"):
                text.set_text("negligible")
        method = result.explanation.contribution_method
        ax.set_title(f"top {len(ranked)} prompts by effect on risk", fontsize=7)
        self.setToolTip(f"Contribution method: {method}" if method else "")
        unit = "cohort risk SDs" if ranked and ranked[0].delta_sd is not None else "risk units"
        ax.set_xlabel(f"change in risk, {unit}", fontsize=7)
        apply_theme(self.figure, self.viewer)
        self.draw_idle()

    def _on_pick(self, event: Any) -> None:
        for bar, contrib in self.bars:
            if event.artist is bar:
                self.prompt_clicked.emit(contrib.level, contrib.name)
                return


def _disconnect(emitter: Any, callback: Any) -> None:
    """Stop a viewer event calling a deleted chart; the viewer may already be gone."""
    with contextlib.suppress(AttributeError, RuntimeError):  # the viewer closed first
        emitter.disconnect(callback)


def read_thumbnail(
    slide: Any, coords: tuple[int, int], tile: int, side: int = THUMB_PX
) -> np.ndarray:
    """A tile as a ``side`` x ``side`` RGB thumbnail, read at the level ``pick_level`` picks."""
    from skimage.transform import resize

    level = pick_level(slide.level_downsamples, tile / side)
    downsample = slide.level_downsamples[level]
    size = max(1, int(round(tile / downsample)))
    region = slide.read_region((int(coords[0]), int(coords[1])), level, (size, size))
    image = resize(region, (side, side), order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(image.astype(np.uint8))


def _icon(rgb: np.ndarray) -> QIcon:
    height, width = rgb.shape[:2]
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(image))


class TileGallery(QWidget):
    """A grid of tile thumbnails; clicking one emits its level and index."""

    tile_clicked = Signal(str, int)

    def __init__(self, parent: QWidget | None = None, columns: int = 3) -> None:
        super().__init__(parent)
        self.columns = columns
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.buttons: list[QToolButton] = []

    def show_tiles(
        self, level: str, indices: list[int], thumbnails: list[np.ndarray], captions: list[str]
    ) -> None:
        for button in self.buttons:
            self.grid.removeWidget(button)
            button.deleteLater()
        self.buttons = []
        for n, (index, thumb, caption) in enumerate(
            zip(indices, thumbnails, captions, strict=True)
        ):
            button = QToolButton(self)
            button.setIcon(_icon(thumb))
            button.setIconSize(QSize(THUMB_PX, THUMB_PX))
            button.setToolTip(caption)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
            button.clicked.connect(lambda _=False, i=int(index): self.tile_clicked.emit(level, i))
            self.grid.addWidget(button, n // self.columns, n % self.columns)
            self.buttons.append(button)
