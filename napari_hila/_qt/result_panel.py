"""The dock's result panels: the result in words (:class:`ResultPanel`) and its prompts
(:class:`PromptsPanel`: the lists, the contribution chart and the hover line).

They show what the dock hands them and emit what the user picks; the dock keeps
the one state (:class:`~napari_hila._qt.state.ShownResult`) and the layers.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_hila import overlays
from napari_hila._qt.legend import MapLegend
from napari_hila._qt.prompt_panel import ContributionChart
from napari_hila.modelfile import ModelCard
from napari_hila.results import PredictionResult, risk_standing, threshold_name
from napari_hila.tissue_type import TissueCheck, check_tissue_type

WARNING_COLOUR = "#e8a33d"  # readable on napari's dark and light themes
CASE_ID_KEYS = (
    "aperio.Barcode",
    "aperio.Filename",
    "hamamatsu.Reference",
    "mirax.GENERAL.SLIDE_ID",
)
WRAP_AFTER = "_-.)]"  # a long file name may break after these (and every 24 characters)


def case_id_of(metadata: dict[str, Any]) -> str | None:
    """The case or slide id the file records (Aperio's barcode or filename), if any."""
    properties = metadata.get("properties") or {}
    for key in CASE_ID_KEYS:
        value = str(properties.get(key, "")).strip()
        if value:
            return value
    return None


def breakable(text: str, longest: int = 24) -> str:
    """``text`` with zero-width break points in words longer than ``longest`` characters
    (after ``_-.)]``, and at least every ``longest``), so a label wraps a long file name
    instead of widening the dock; shorter words are left as they are."""

    def split(word: str) -> str:
        if len(word) <= longest:
            return word
        out, run = [], 0
        for char in word:
            out.append(char)
            run += 1
            if char in WRAP_AFTER or run >= longest:
                out.append("\u200b")
                run = 0
        return "".join(out)

    return " ".join(split(word) for word in text.split(" "))


def describe_risk(result: PredictionResult) -> str:
    """Rich text, result first: the group in words, survival at 1/3/5 years, the score."""
    standing = risk_standing(result)
    lines = [f"<b>{html.escape(standing[:1].upper() + standing[1:])}</b>"] if standing else []
    report = [(label, s) for label, _, s in result.survival_report() if np.isfinite(s)]
    if report:
        lines.append(
            "Predicted survival: "
            + ", ".join(f"{label} <b>{100 * s:.0f}%</b>" for label, s in report)
        )
    score = f"Risk score {result.risk:.3f}"
    if result.risk_threshold is not None:
        cut = threshold_name(result).removeprefix("the ")
        score += f" ({cut} {result.risk_threshold:.3f})"
    lines.append(f"<span style='color:gray'>{score}</span>")
    return "<br>".join(lines)


def tissue_check_of(card: ModelCard | None, layer: Any) -> TissueCheck:
    """The model's tissue type (card) beside the organ the slide layer's file records."""
    properties = (layer.metadata.get("properties") or {}) if layer is not None else {}
    cancer_type = card.cancer_type if card is not None else None
    prompt_set = card.prompts.get("set") if card is not None else None
    return check_tissue_type(cancer_type, prompt_set, properties)


def slide_line(result: PredictionResult, layer: Any, tissue: TissueCheck) -> str:
    """Slide name and case id, then the tissue type the model and its prompts are for."""
    case = case_id_of(layer.metadata) if layer is not None else None
    name = html.escape(breakable(Path(result.slide_path).name))
    case_text = f" &middot; case {html.escape(breakable(case))}" if case else ""
    return f"<b>Slide:</b> {name}{case_text}<br>{tissue.html()}"


def _wrapping_label(parent: QWidget, colour: str | None = None) -> QLabel:
    label = QLabel(parent)
    label.setWordWrap(True)
    if colour is not None:
        label.setStyleSheet(f"color: {colour};")
    return label


def let_shrink(combo: QComboBox) -> None:
    """Let a combo box narrower than its longest item, so the dock fits a narrow column."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(8)


class ResultPanel(QGroupBox):
    """The result first: its slide, where the patient stands, survival, warnings, legend."""

    threshold_changed = Signal(object)  # the threshold (x a uniform share), or None: all drawn

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Result", parent)
        self.slide_label = _wrapping_label(self)
        self.stale_label = _wrapping_label(self, WARNING_COLOUR)
        self.stale_label.setVisible(False)
        self.risk_label = _wrapping_label(self)
        self.risk_label.setTextFormat(Qt.TextFormat.RichText)
        self.warnings_label = _wrapping_label(self, WARNING_COLOUR)
        self.legend = MapLegend(self)
        self.threshold_check = QCheckBox("Only tiles at or above", self)
        self.threshold_check.setToolTip(
            "Draw only the tiles whose share is at least this many times a uniform share; "
            "the others become transparent (exports follow)"
        )
        self.threshold_spin = QDoubleSpinBox(self)
        self.threshold_spin.setRange(0.0, overlays.MAP_LIMITS[1])
        self.threshold_spin.setSingleStep(0.1)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(1.5)
        self.threshold_spin.setSuffix(" x")
        self.threshold_spin.setKeyboardTracking(False)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.threshold_check)
        threshold_row.addWidget(self.threshold_spin, 1)
        layout = QVBoxLayout(self)
        layout.setSpacing(4)
        for widget in (
            self.slide_label,
            self.stale_label,
            self.risk_label,
            self.warnings_label,
            self.legend,
        ):
            layout.addWidget(widget)
        layout.addLayout(threshold_row)
        self.setVisible(False)
        self.threshold_check.toggled.connect(self._emit_threshold)
        self.threshold_spin.valueChanged.connect(self._emit_threshold)

    def threshold(self) -> float | None:
        return self.threshold_spin.value() if self.threshold_check.isChecked() else None

    def _emit_threshold(self, *_: Any) -> None:
        self.threshold_changed.emit(self.threshold())

    def show_result(self, slide_text: str, risk_text: str, warnings: list[str]) -> None:
        """The slide line, the risk in words and the warnings (in the panel, not as toasts:
        a toast that stays up covers the scale bar)."""
        self.setVisible(True)
        self.slide_label.setText(slide_text)
        self.risk_label.setText(risk_text)
        self.warnings_label.setText("<br>".join(html.escape(w) for w in warnings))
        self.warnings_label.setVisible(bool(warnings))

    def set_stale(self, why: str | None) -> None:
        """Grey the result out saying ``why`` (None: the result is current again)."""
        self.stale_label.setText(why or "")
        self.stale_label.setVisible(why is not None)
        for widget in (self.risk_label, self.legend, self.warnings_label):
            widget.setEnabled(why is None)


class PromptsPanel(QGroupBox):
    """One prompt list per level, the contribution chart, the hover line and the prompt's text."""

    prompt_chosen = Signal(str, str)  # level, prompt: from a list or a bar of the chart

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__("Prompts", parent)
        self.combos: dict[str, QComboBox] = {}
        self.form = QFormLayout()
        self.text = _wrapping_label(self)
        self.chart = ContributionChart(viewer, self)
        # two lines held open (the layout does not jump as the cursor moves), never wider
        # than the dock; the tooltip has the long form
        self.hover_label = _wrapping_label(self)
        self.hover_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.hover_label.setFixedHeight(2 * self.hover_label.fontMetrics().lineSpacing() + 2)
        layout = QVBoxLayout(self)
        layout.setSpacing(4)
        layout.addLayout(self.form)
        layout.addWidget(self.chart)
        layout.addWidget(self.hover_label)
        layout.addWidget(self.text)
        self.setVisible(False)
        self.chart.prompt_clicked.connect(self.prompt_chosen)

    def build(self, result: PredictionResult, current: dict[str, int]) -> None:
        """A list per level that has maps, finest first, at the prompt ``current`` shows."""
        while self.form.rowCount():
            self.form.removeRow(0)
        self.combos = {}
        levels = result.explanation.levels
        for name in sorted(levels, key=lambda n: levels[n].tile_size):
            if not levels[name].map_names:
                continue
            combo = QComboBox(self)
            combo.addItems(levels[name].map_names)
            let_shrink(combo)
            combo.setCurrentIndex(current.get(name, 0))
            combo.currentTextChanged.connect(
                lambda text, lv=name: self.prompt_chosen.emit(lv, text)
            )
            self.form.addRow(f"{name} prompt", combo)
            self.combos[name] = combo
        self.setVisible(bool(self.combos))

    def choose(self, level: str, prompt: str) -> bool:
        """Put ``prompt`` in ``level``'s list; False when it was there already."""
        combo = self.combos[level]
        if combo.currentText() == prompt:
            return False
        combo.setCurrentText(prompt)  # emits prompt_chosen again
        return True

    def shown(self) -> dict[str, str]:
        return {level: combo.currentText() for level, combo in self.combos.items()}

    def show_prompt(self, result: PredictionResult, level: str, description: str) -> None:
        prompt = self.combos[level].currentText()
        self.text.setText(f"<b>{level} · {prompt}</b>: {description}")
        self.chart.show_contributions(result, self.shown())

    def show_hover(self, text: str, full: str = "") -> None:
        self.hover_label.setText(text)
        self.hover_label.setToolTip(full or text)
