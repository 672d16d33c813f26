"""Choosing a model: the shipped demo by default, any model directory by dialog.

The card is read (JSON only, no weights) as soon as a model is chosen, so the
user sees what it is before running it, and which encoders it reads slides
with and whether their weights were found (with the fix when not).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_hila.errors import HilaError
from napari_hila.modelfile import ModelCard

NOT_CLINICAL = "not for clinical use"


def demo_model_path() -> Path | None:
    """The shipped demo model directory, or None when this install has none."""
    from napari_hila.resources import resource_path

    try:
        return resource_path("demo_model")
    except FileNotFoundError:
        return None


def cross_validated_cindex(metrics: Any) -> tuple[float, float | None] | None:
    """(mean, sd) of the C-index from a card's ``metrics``, whatever its nesting."""
    if not isinstance(metrics, dict):
        return None
    if isinstance(metrics.get("c_index_mean"), (int, float)):  # the trainer's metrics.json
        sd = metrics.get("c_index_std")
        return float(metrics["c_index_mean"]), (float(sd) if sd is not None else None)
    for key, value in metrics.items():
        name = str(key).lower().replace("-", "_")
        if "c_index" in name or "cindex" in name or name == "c":
            if isinstance(value, dict):
                if "mean" in value:
                    sd = value.get("std", value.get("sd"))
                    return float(value["mean"]), (float(sd) if sd is not None else None)
                inner = cross_validated_cindex(value)
                if inner:
                    return inner
            elif isinstance(value, (list, tuple)) and value:
                folds = np.asarray(value, float)
                return float(folds.mean()), float(folds.std(ddof=1)) if len(folds) > 1 else None
            elif isinstance(value, (int, float)):
                sd_key = next(
                    (k for k in metrics if str(k).lower() in (f"{name}_std", f"{name}_sd")), None
                )
                return float(value), (float(metrics[sd_key]) if sd_key else None)
    for value in metrics.values():
        inner = cross_validated_cindex(value) if isinstance(value, dict) else None
        if inner:
            return inner
    return None


def is_not_for_clinical_use(card: ModelCard | Mapping[str, Any]) -> bool:
    """True when the card marks the model as research/demo only."""
    card = ModelCard.of(card)
    notes = (card.extra.get("intended_use", ""), card.extra.get("note", ""))
    text = " ".join(str(v) for v in notes).lower()
    return card.is_synthetic or NOT_CLINICAL in text or card.extra.get("clinical_use") is False


def card_summary(card: ModelCard | Mapping[str, Any]) -> str:
    """The card as short rich text: name, cancer type, encoders, cohort, C-index."""
    card = ModelCard.of(card)
    enc_names = [
        f"{level}: {info.name} ({info.dim if info.dim is not None else '?'})"
        for level, info in (("patch", card.patch_encoder), ("region", card.region_encoder))
        if info.name
    ]
    size = len(card.cohort.risk)
    events = int(np.sum(card.cohort.event))
    cidx = cross_validated_cindex(card.metrics)
    lines = [
        f"<b>{html.escape(card.display_label or '?')}</b>",
        f"model: {html.escape(card.model or '?')}; "
        f"cancer type: {html.escape(str(card.cancer_type or 'unknown'))}",
        "encoders: " + html.escape("; ".join(enc_names) or "unknown"),
        f"cohort: {size} patients, {events} events" if size else "cohort: not stored",
    ]
    if cidx is not None:
        sd = f" &plusmn; {cidx[1]:.3f}" if cidx[1] is not None else ""
        lines.append(f"cross-validated C-index: {cidx[0]:.3f}{sd}")
    if is_not_for_clinical_use(card):
        lines.append("<span style='color:#e0524f'><b>Not for clinical use.</b></span>")
    return "<br>".join(lines)


def encoder_weights_status(card: ModelCard | Mapping[str, Any]) -> list[tuple[bool, str]]:
    """``(found, sentence)`` per encoder a prediction with ``card`` loads (patch, then a
    separate region encoder): where its weights are, or how to give them."""
    from napari_hila.encoders.registry import weights_status
    from napari_hila.predict import extraction_settings

    settings = extraction_settings(card)
    roles = [("patch", settings["encoder"])]
    if settings.get("region_encoder"):
        roles.append(("region", settings["region_encoder"]))
    lines = []
    for role, name in roles:
        try:
            found, sentence = weights_status(name)
        except HilaError as err:  # an unknown encoder, a malformed encoders config
            found, sentence = False, str(err)
        lines.append((found, f"{role} encoder {sentence}"))
    return lines


class ModelPicker(QWidget):
    """Combo of known models plus a Browse button; shows the chosen model's card."""

    model_changed = Signal(str)  # model directory ("" when none)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox(self)
        self.combo.setToolTip("The survival model to run; its card is shown below")
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.setMinimumContentsLength(8)
        self.browse = QPushButton("Browse…", self)
        self.browse.setToolTip("Choose a model directory written by `napari-hila train`")
        self.card_label = QLabel(self)
        self.card_label.setWordWrap(True)
        self.card_label.setVisible(False)  # collapsed: the result comes first
        self.card_toggle = QToolButton(self)
        self.card_toggle.setText("Model card")
        self.card_toggle.setCheckable(True)
        self.card_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.card_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.card_toggle.setAutoRaise(True)
        self.card_toggle.toggled.connect(self.show_card)
        self.clinical_flag = QLabel(
            "<span style='color:#e0524f'><b>Not for clinical use.</b></span>"
        )
        self.clinical_flag.setVisible(False)
        self.clinical_flag.setWordWrap(True)
        # outside the collapsed card: missing weights are seen before Run
        self.weights_label = QLabel(self)
        self.weights_label.setWordWrap(True)
        self.weights_label.setVisible(False)
        self.weights_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.weights_missing = False
        row = QHBoxLayout()
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse)
        card_row = QHBoxLayout()
        card_row.addWidget(self.card_toggle)
        card_row.addWidget(self.clinical_flag, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(row)
        layout.addLayout(card_row)
        layout.addWidget(self.weights_label)
        layout.addWidget(self.card_label)
        self.card: ModelCard | None = None
        self.error: str | None = None
        demo = demo_model_path()
        if demo is not None:
            self.combo.addItem("Demo model (shipped)", str(demo))
        self.combo.currentIndexChanged.connect(self._on_index)
        self.browse.clicked.connect(self._on_browse)
        self._on_index(self.combo.currentIndex())

    def show_card(self, shown: bool) -> None:
        """Expand or collapse the model card under the model list."""
        self.card_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.card_label.setVisible(shown)

    @property
    def model_path(self) -> str:
        return str(self.combo.currentData() or "")

    def set_model(self, path: str | Path) -> None:
        """Select ``path`` (adding it to the list if new) and read its card."""
        path = str(Path(path).expanduser())
        index = self.combo.findData(path)
        if index < 0:
            self.combo.addItem(Path(path).name or path, path)
            index = self.combo.count() - 1
        if index == self.combo.currentIndex():
            self._on_index(index)
        else:
            self.combo.setCurrentIndex(index)

    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model directory")
        if folder:
            self.set_model(folder)

    def _on_index(self, _index: int) -> None:
        from napari_hila.modelfile import prompt_statistics, read_card
        from napari_hila.results import collapse_warning

        path = self.model_path
        self.card, self.error = None, None
        if not path:
            self.error = "no model chosen: use Browse… to pick a model directory"
            self.card_label.setText(self.error)
        else:
            try:
                self.card = read_card(path)
                text = card_summary(self.card)
                try:
                    warning = collapse_warning(prompt_statistics(path))
                except HilaError as err:  # weights unreadable: the card still shows
                    warning = f"prompt statistics unavailable: {err}"
                if warning:
                    text += f"<br><span style='color:#e0524f'>{html.escape(warning)}</span>"
                self.card_label.setText(text)
            except HilaError as err:
                self.error = str(err)
                self.card_label.setText(
                    f"<span style='color:#e0524f'>{html.escape(self.error)}</span>"
                )
        self._show_weights()
        flagged = self.card is not None and is_not_for_clinical_use(self.card)
        self.clinical_flag.setVisible(flagged)
        if self.error:  # a problem with the model is never hidden behind the toggle
            self.card_toggle.setChecked(True)
        self.model_changed.emit(path)

    def _show_weights(self) -> None:
        """The model's encoders and their weights, red with the fix when some are missing."""
        lines = encoder_weights_status(self.card) if self.card is not None else []
        self.weights_missing = not all(found for found, _ in lines)
        parts = []
        for found, sentence in lines:
            text = html.escape(sentence)
            parts.append(text if found else f"<span style='color:#e0524f'>{text}</span>")
        if self.weights_missing:
            parts.append("(slides whose features of these weights are cached run without them)")
        self.weights_label.setText("<br>".join(parts))
        self.weights_label.setVisible(bool(lines))
