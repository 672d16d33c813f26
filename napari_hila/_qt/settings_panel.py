"""The dock's run settings: the slide, the model and its card, the device, the pixel size."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QWidget

from napari_hila._qt.model_picker import ModelPicker
from napari_hila._qt.result_panel import WARNING_COLOUR, let_shrink
from napari_hila.devices import available_devices
from napari_hila.slides.opener import MPP_RANGE


class SettingsPanel(QGroupBox):
    """What the next Run uses. Emits :attr:`slide_changed` and :attr:`mpp_changed` (um/px)."""

    slide_changed = Signal()
    mpp_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Run a model", parent)
        self.slide_combo = QComboBox(self)
        self.slide_combo.setToolTip("Slide layers opened with napari-hila's reader")
        let_shrink(self.slide_combo)
        self.model_picker = ModelPicker(self)
        self.device_combo = QComboBox(self)
        self.device_combo.addItems(["auto", *available_devices()])
        self.device_combo.setToolTip("Where the model runs; only devices present are listed")
        self.mpp_spin = QDoubleSpinBox(self)
        self.mpp_spin.setRange(*MPP_RANGE)
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setSingleStep(0.01)
        self.mpp_spin.setSuffix(" um/px")
        self.mpp_spin.setKeyboardTracking(False)  # one change per typed value, not per digit
        self.mpp_spin.setToolTip(
            "Microns per pixel at level 0 (0.25 for 40x, 0.5 for 20x scans). It sizes the "
            "patches and the scale bar; change it when the file lacks it or has it wrong."
        )
        self.mpp_note = QLabel(self)
        self.mpp_note.setWordWrap(True)
        self.mpp_note.setStyleSheet(f"color: {WARNING_COLOUR};")
        self.mpp_note.setVisible(False)
        form = QFormLayout(self)
        # a field too wide beside its label goes under it: a larger font never widens the dock
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.addRow("Slide", self.slide_combo)
        form.addRow("Model", self.model_picker)
        form.addRow("Device", self.device_combo)
        form.addRow("Pixel size", self.mpp_spin)
        form.addRow(self.mpp_note)
        self.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        self.mpp_spin.valueChanged.connect(self.mpp_changed)

    def chosen_layer(self) -> Any | None:
        """The slide layer chosen in the Slide list, or None."""
        return self.slide_combo.currentData()

    def list_slides(self, layers: list[Any]) -> None:
        """List ``layers``, keeping the user's choice across layer changes (no signal)."""
        current = self.slide_combo.currentText()
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        for layer in layers:
            self.slide_combo.addItem(layer.name, layer)
        self.slide_combo.setCurrentIndex(max(self.slide_combo.findText(current), 0))
        self.slide_combo.blockSignals(False)
        self.show_slide_mpp()

    def choose(self, layer: Any) -> None:
        """Choose ``layer`` in the Slide list without a :attr:`slide_changed`."""
        if layer is self.chosen_layer():
            return
        self.slide_combo.blockSignals(True)
        self.slide_combo.setCurrentIndex(self.slide_combo.findData(layer))
        self.slide_combo.blockSignals(False)
        self.show_slide_mpp()

    def _on_slide_changed(self, *_: Any) -> None:
        self.show_slide_mpp()
        self.slide_changed.emit()

    def show_slide_mpp(self) -> None:
        """Put the chosen slide's mpp in the spin box; warn when the file did not give one."""
        layer = self.chosen_layer()
        meta = layer.metadata if layer is not None else {}
        mpp = meta.get("mpp")
        self.mpp_spin.setEnabled(mpp is not None)
        if mpp is not None:
            self.mpp_spin.blockSignals(True)
            self.mpp_spin.setValue(float(mpp))
            self.mpp_spin.blockSignals(False)
        assumed = meta.get("mpp_source") == "assumed" or (
            "mpp_source" not in meta and bool(meta.get("mpp_is_assumed"))
        )
        if assumed:
            self.mpp_note.setText(
                f"This slide has no pixel size; {float(mpp):g} um/px assumed — set the "
                f"scanner's value. Why: {meta.get('mpp_note', 'the file does not say')}."
            )
        self.mpp_note.setVisible(assumed)
