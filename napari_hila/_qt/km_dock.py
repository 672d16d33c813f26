"""The "Kaplan-Meier" dock: the model's cohort, and this patient against it.

Top: the cohort's high- and low-risk Kaplan-Meier curves with confidence
bands, numbers at risk and the log-rank p-value, with this patient's predicted
survival over them (drawn by :func:`napari_hila.plotting.plot_cohort_km`).
Bottom: where the patient's risk falls in the cohort's risk distribution.
Colours follow napari's theme and change with it.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_hila._qt.scroll import make_scrollable
from napari_hila._qt.theme import apply_theme, theme_colors
from napari_hila.modelfile import ModelCard
from napari_hila.results import PredictionResult, ordinal, risk_standing

_DOCKS: dict[int, weakref.ref] = {}  # id(viewer) -> the viewer's Kaplan-Meier dock


def km_dock_for(viewer: Any, create: bool = True) -> KaplanMeierDock | None:
    """The viewer's Kaplan-Meier dock; docked on the right if ``create`` and none is open."""
    ref = _DOCKS.get(id(viewer))
    dock = ref() if ref is not None else None
    if dock is not None:
        try:
            dock.isVisible()  # raises if Qt already deleted the widget
            return dock
        except RuntimeError:
            _DOCKS.pop(id(viewer), None)
    if not create:
        return None
    dock = KaplanMeierDock(viewer)
    qt_dock = viewer.window.add_dock_widget(dock, name="Kaplan-Meier", area="right")
    _arrange(viewer, qt_dock)
    return dock


SIDE_BY_SIDE_WIDTH = 1600  # window px from which the two docks sit side by side
DOCK_WIDTH = 400  # px of each dock: result lines and the plot read without wrapping every word
DOCK_MIN_WIDTH = 360


def _arrange(viewer: Any, qt_dock: Any) -> None:
    """Give the Kaplan-Meier dock the full column height so its whole figure shows.

    On a wide window (1920 px) it sits beside the HiLa dock; on a laptop
    (1366 px) it is a tab behind it, the HiLa dock in front. Stacked in one
    column, each would get half the height and neither fit.
    """
    from qtpy.QtWidgets import QDockWidget

    from napari_hila._qt.survival_dock import HilaSurvivalDock

    with warnings.catch_warnings():  # napari warns plugins off private attributes
        warnings.simplefilter("ignore")
        main_window = getattr(viewer.window, "_qt_window", None)
    if main_window is None or qt_dock is None:
        return
    # napari hands plugins proxies of its Qt objects; Qt wants the objects.
    main_window = getattr(main_window, "__wrapped__", main_window)
    qt_dock = getattr(qt_dock, "__wrapped__", qt_dock)
    hila = next(
        (
            d
            for d in main_window.findChildren(QDockWidget)
            if d is not qt_dock and d.findChild(HilaSurvivalDock) is not None
        ),
        None,
    )
    if hila is None:
        return
    if main_window.width() >= SIDE_BY_SIDE_WIDTH:
        main_window.splitDockWidget(hila, qt_dock, Qt.Orientation.Horizontal)
        main_window.resizeDocks([hila, qt_dock], [DOCK_WIDTH, 440], Qt.Orientation.Horizontal)
    else:
        main_window.tabifyDockWidget(hila, qt_dock)
        main_window.resizeDocks([hila], [DOCK_WIDTH], Qt.Orientation.Horizontal)
        hila.raise_()


class KaplanMeierDock(QWidget):
    """Cohort Kaplan-Meier curves and the current patient's place among them."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result: PredictionResult | None = None
        self.card: ModelCard | None = None
        self.figure = Figure(figsize=(4.2, 4.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(420)
        self.canvas.setMinimumWidth(200)
        self.setMinimumWidth(DOCK_MIN_WIDTH)  # the numbers at risk and their labels fit
        self.message = QLabel(
            "Run a prediction in the HiLa survival dock to see the cohort here.", self
        )
        self.message.setWordWrap(True)
        content = QWidget(self)
        layout = QVBoxLayout(content)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.message)
        self.scroll = make_scrollable(self, content)
        _DOCKS[id(napari_viewer)] = weakref.ref(self)
        napari_viewer.events.theme.connect(self.redraw)
        self.destroyed.connect(lambda *_: napari_viewer.events.theme.disconnect(self.redraw))
        self._adopt_current_result()

    def _adopt_current_result(self) -> None:
        """Opened after a prediction (from the Plugins menu): show that prediction at once."""
        from napari_hila._qt.app import survival_dock_of

        survival = survival_dock_of(self.viewer) if hasattr(self.viewer, "window") else None
        if survival is not None and survival.result is not None:
            self.show_result(survival.result, survival.card)
        else:
            self.redraw()

    def show_result(
        self, result: PredictionResult | None, card: ModelCard | Mapping[str, Any] | None
    ) -> None:
        """Draw the cohort of ``card`` with ``result``'s patient over it."""
        self.result = result
        self.card = None if card is None else ModelCard.of(card)
        self.redraw()

    def redraw(self, *_: Any) -> None:
        self.figure.clear()
        if self.card is None or not len(self.card.cohort.risk):
            ax = self.figure.add_subplot(1, 1, 1)
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no cohort to show", ha="center", va="center")
            if self.card is not None:
                self.message.setText("This model's card stores no cohort; retrain to include one.")
            apply_theme(self.figure, self.viewer)
            self.canvas.draw_idle()
            return
        from napari_hila.plotting import plot_cohort_km

        km_ax, risk_ax = self.figure.subplots(2, 1, height_ratios=(3, 1))
        info = plot_cohort_km(self.card, ax=km_ax, patient_survival=self._patient_curve())
        self._make_room_for_numbers_at_risk(km_ax)
        self._draw_risk_position(risk_ax)
        apply_theme(self.figure, self.viewer)
        self.message.setText(self._caption(info))
        self.canvas.draw_idle()

    def _make_room_for_numbers_at_risk(self, ax: Any) -> None:
        """Move the x label below the numbers-at-risk rows written under the axis."""
        rows = [t for t in ax.texts if t.get_text().startswith("at risk")]
        if rows:
            height_pt = ax.get_window_extent().height * 72.0 / self.figure.dpi
            lowest = min(t.get_position()[1] for t in rows)  # axes fraction, negative
            ax.xaxis.labelpad = max(4.0, (-lowest - 0.08) * height_pt)

    def _patient_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.result is None:
            return None
        edges = np.asarray(self.result.time_bin_edges, float)
        survival = np.asarray(self.result.explanation.survival, float)
        return edges, survival

    def _draw_risk_position(self, ax: Any) -> None:
        """Histogram of the cohort's risks, the threshold and this patient's risk.

        Drawn on the final model's scale, the one the threshold and a new
        slide's risk are on (the KM curves above use out-of-fold groups).
        """
        from napari_hila.predict import cohort_reference_risks

        colors = theme_colors(self.viewer)
        cohort = cohort_reference_risks(self.card)
        ax.hist(
            cohort, bins=min(30, max(5, len(cohort) // 4)), color=colors["secondary"], alpha=0.8
        )
        threshold = self.card.risk_threshold
        if threshold is not None:
            ax.axvline(threshold, color=colors["foreground"], linestyle="--", linewidth=1)
        if self.result is not None:
            ax.axvline(self.result.risk, color="#e0524f", linewidth=2)
            pct = (
                self.result.risk_percentile
                if self.result.risk_percentile is not None
                else 100.0 * float(np.mean(cohort <= self.result.risk))
            )
            ax.set_title(f"this patient: {ordinal(pct)} percentile", fontsize=9)
        ax.set_xlabel("risk (higher = shorter survival)")
        ax.set_yticks([])

    def _caption(self, info: Any) -> str:
        """How the groups were formed, in the same words as the plot's title."""
        label = self.card.display_label
        info = info if isinstance(info, dict) else {}
        text = (
            f"Top: the cohort of {label} in two groups ({info.get('n_high', '?')} high, "
            f"{info.get('n_low', '?')} low risk), each patient grouped by "
            f"{info.get('split', 'the model')}; shaded: 95% confidence bands; numbers at risk "
            "under the axis."
        )
        if info.get("logrank_p") is not None:
            text += f" Log-rank p = {float(info['logrank_p']):.3g}."
        if self.result is not None:
            text += (
                " Dashed: this slide's predicted survival. Bottom: the final model's risks over "
                "the cohort, the dashed line its median, red this slide"
            )
            standing = risk_standing(self.result)
            text += f" ({standing})." if standing else "."
        return text
