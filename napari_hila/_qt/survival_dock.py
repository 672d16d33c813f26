"""The "HiLa survival" dock: pick a slide and a model, run, and see why.

Runs the prediction in a thread worker (the viewer stays responsive), shows
progress by stage with a Cancel, then the risk, the overlays aligned to the
slide and the prompt panel. Every problem is a napari notification saying what
to do; nothing here lets an exception reach napari.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_hila import overlays
from napari_hila._qt.job import PredictionJob
from napari_hila._qt.km_dock import DOCK_MIN_WIDTH, km_dock_for
from napari_hila._qt.layers import ResultLayers, adopt_slide_units, slide_path_of
from napari_hila._qt.legend import MapLegend
from napari_hila._qt.model_picker import ModelPicker
from napari_hila._qt.prompt_panel import ContributionChart, TileGallery, read_thumbnail
from napari_hila._qt.scroll import make_scrollable
from napari_hila._qt.state import ShownResult
from napari_hila.devices import available_devices
from napari_hila.errors import HilaError
from napari_hila.modelfile import ModelCard, read_card
from napari_hila.predict import default_cache_dir
from napari_hila.prediction_job import JobOutcome, overall_fraction, stage_text
from napari_hila.results import PredictionResult, risk_standing, threshold_name
from napari_hila.slides.opener import MPP_RANGE, check_mpp
from napari_hila.tissue_type import TissueCheck, check_tissue_type

GALLERY_SIZE = 9
CHART_HEIGHT = (140, 260)  # px: the contribution chart's least and most height
CHART_SHARE = 0.21  # of the dock's height (about 143 px on a 1366 x 768 laptop)
WARNING_COLOUR = "#e8a33d"  # readable on napari's dark and light themes
log = logging.getLogger(__name__)


CASE_ID_KEYS = (
    "aperio.Barcode",
    "aperio.Filename",
    "hamamatsu.Reference",
    "mirax.GENERAL.SLIDE_ID",
)


def case_id_of(metadata: dict[str, Any]) -> str | None:
    """The case or slide id the file records (Aperio's barcode or filename), if any."""
    properties = metadata.get("properties") or {}
    for key in CASE_ID_KEYS:
        value = str(properties.get(key, "")).strip()
        if value:
            return value
    return None


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


class HilaSurvivalDock(QWidget):
    """Run a survival model on a slide layer and show its evidence as layers."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.cache_dir: Path | None = default_cache_dir()
        self.job: PredictionJob | None = None
        self.export_job: Any = None  # the running ExportJob, if any
        self.shown: ShownResult | None = None  # the result on screen, its slide, mask and card
        self.gallery_level: str | None = None
        self._slide = None  # opened lazily for thumbnails
        self.layers = ResultLayers(napari_viewer, on_hover=self._show_hover)
        self._build()
        self.setMinimumWidth(DOCK_MIN_WIDTH)  # result lines read without wrapping every word
        self._units_note_shown = False
        for event in ("inserted", "removed", "reordered", "renamed"):
            getattr(napari_viewer.layers.events, event).connect(self.refresh_slides)
        # napari runs its own handlers first (its EventEmitter orders core callbacks before
        # plugins'): its canvas draws the new layer and warns "Inconsistent units" once,
        # before this one gives the layer the slide's units; the note below says so
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.destroyed.connect(
            _forget_viewer(napari_viewer, self.refresh_slides, self._on_layer_inserted, self.layers)
        )
        self.refresh_slides()
        _warm_up_descriptor()

    # -- layout ---------------------------------------------------------------
    def _build(self) -> None:
        self.slide_combo = QComboBox(self)
        self.slide_combo.setToolTip("Slide layers opened with napari-hila's reader")
        _let_shrink(self.slide_combo)
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
        self.run_button = QPushButton("Run", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)  # the stage label says the one percentage
        self.stage_label = QLabel("idle", self)
        self.stage_label.setWordWrap(True)

        # The result first: what it is for, where the patient stands, survival, legend.
        self.result_box = QGroupBox("Result", self)
        self.result_slide_label = QLabel(self)
        self.result_slide_label.setWordWrap(True)
        self.stale_label = QLabel(self)
        self.stale_label.setWordWrap(True)
        self.stale_label.setStyleSheet(f"color: {WARNING_COLOUR};")
        self.stale_label.setVisible(False)
        self.risk_label = QLabel(self)
        self.risk_label.setWordWrap(True)
        self.risk_label.setTextFormat(Qt.TextFormat.RichText)
        self.warnings_label = QLabel(self)
        self.warnings_label.setWordWrap(True)
        self.warnings_label.setStyleSheet(f"color: {WARNING_COLOUR};")
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
        result_layout = QVBoxLayout(self.result_box)
        result_layout.setSpacing(4)
        for widget in (
            self.result_slide_label,
            self.stale_label,
            self.risk_label,
            self.warnings_label,
            self.legend,
        ):
            result_layout.addWidget(widget)
        result_layout.addLayout(threshold_row)
        self.result_box.setVisible(False)

        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("Model", self.model_picker)
        form.addRow("Device", self.device_combo)
        form.addRow("Pixel size", self.mpp_spin)
        form.addRow(self.mpp_note)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.progress, 1)

        self.prompt_combos: dict[str, QComboBox] = {}
        self.prompt_box = QGroupBox("Prompts", self)
        self.prompt_form = QFormLayout()
        self.prompt_text = QLabel(self)
        self.prompt_text.setWordWrap(True)
        self.chart = ContributionChart(self.viewer, self)
        self.gallery = TileGallery(self)
        self.gallery_title = QLabel(self)
        self.gallery_title.setWordWrap(True)
        # two lines held open (the layout does not jump as the cursor moves), never wider
        # than the dock; the tooltip has the long form
        self.hover_label = QLabel(self)
        self.hover_label.setWordWrap(True)
        self.hover_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.hover_label.setFixedHeight(2 * self.hover_label.fontMetrics().lineSpacing() + 2)
        self.export_button = QPushButton("Export…", self)
        self.export_button.setEnabled(False)
        self.export_button.setToolTip(
            "Annotated screenshot, region figure, GeoJSON and CSV of what is on screen"
        )
        self.export_cancel = QPushButton("Cancel export", self)
        self.export_cancel.setVisible(False)
        self.export_progress = QProgressBar(self)
        self.export_progress.setRange(0, 1000)
        self.export_progress.setVisible(False)
        export_row = QHBoxLayout()
        export_row.addWidget(self.export_button)
        export_row.addWidget(self.export_progress, 1)
        export_row.addWidget(self.export_cancel)
        prompt_layout = QVBoxLayout(self.prompt_box)
        prompt_layout.setSpacing(4)
        prompt_layout.addLayout(self.prompt_form)
        prompt_layout.addWidget(self.chart)
        prompt_layout.addWidget(self.hover_label)
        prompt_layout.addLayout(export_row)
        prompt_layout.addWidget(self.prompt_text)
        self.prompt_box.setVisible(False)
        self.run_box = QGroupBox("Run a model", self)
        run_layout = QVBoxLayout(self.run_box)
        run_layout.setSpacing(4)
        run_layout.addLayout(form)

        # The result first; the settings under it; the gallery last (it may scroll).
        content = QWidget(self)
        layout = QVBoxLayout(content)
        layout.setSpacing(4)
        layout.addWidget(self.result_box)
        layout.addWidget(self.prompt_box)
        layout.addWidget(self.run_box)
        layout.addWidget(self.gallery_title)
        layout.addWidget(self.gallery)
        layout.addStretch(1)
        self.scroll = make_scrollable(self, content)
        # Run, Cancel, progress and stage pinned under the scrolling part: always in view,
        # at any window height and whatever the result above them takes
        footer = QWidget(self)
        footer_layout = QVBoxLayout(footer)
        footer_layout.setContentsMargins(6, 2, 6, 4)
        footer_layout.setSpacing(2)
        footer_layout.addLayout(buttons)
        footer_layout.addWidget(self.stage_label)
        self.layout().addWidget(footer)

        self.run_button.clicked.connect(self.run)
        self.slide_combo.currentIndexChanged.connect(self._show_slide_mpp)
        self.slide_combo.currentIndexChanged.connect(self.check_result_slide)
        self.mpp_spin.valueChanged.connect(self._on_mpp_changed)
        self.cancel_button.clicked.connect(self.cancel)
        self.chart.prompt_clicked.connect(self.set_prompt)
        self.gallery.tile_clicked.connect(self.center_on_tile)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.export_cancel.clicked.connect(self.cancel_export)
        self.threshold_check.toggled.connect(self._on_threshold_changed)
        self.threshold_spin.valueChanged.connect(self._on_threshold_changed)

    # -- slide layers -----------------------------------------------------------
    def slide_layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if slide_path_of(layer)]

    def refresh_slides(self, *_: Any) -> None:
        current = self.slide_combo.currentText()  # keep the user's choice across layer changes
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        for layer in self.slide_layers():
            self.slide_combo.addItem(layer.name, layer)
        self.slide_combo.setCurrentIndex(max(self.slide_combo.findText(current), 0))
        self.slide_combo.blockSignals(False)
        self._show_slide_mpp()
        self.check_result_slide()

    def _on_layer_inserted(self, event: Any) -> None:
        """A plain layer without units gets the slide's, so the scale bar keeps its unit."""
        layer = event.value
        slides = [ly for ly in self.slide_layers() if ly is not layer]
        if not slides or not adopt_slide_units(layer, slides[0]):
            return
        if not self._units_note_shown:
            self._units_note_shown = True
            mpp = float(slides[0].scale[-1])
            show_info(
                f"Layer '{layer.name}' has no pixel size: napari-hila draws it in the slide's "
                f"pixels ({mpp:g} um/px), so units stay in use and the scale bar keeps its "
                "unit (napari's 'Inconsistent units' warning, given before this, no longer "
                "applies). If it has another pixel size, set its scale (layer.scale) to that. "
                "Said once per session."
            )

    # -- one result, one slide ------------------------------------------------------
    @property
    def result(self) -> PredictionResult | None:
        """The result on screen (from :attr:`shown`, the dock's one state)."""
        return self.shown.result if self.shown is not None else None

    @property
    def card(self) -> ModelCard | None:
        """The card of the model the shown result came from."""
        return self.shown.card if self.shown is not None else None

    @property
    def tissue(self) -> Any:
        """The shown result's tissue mask (redrawn when the pixel size changes)."""
        return self.shown.tissue if self.shown is not None else None

    def result_slide_layer(self) -> Any | None:
        """The open slide layer the shown result was computed on, or None when it is gone."""
        return self.shown.slide_layer(self.slide_layers()) if self.shown is not None else None

    def result_is_current(self) -> bool:
        """True when the result's slide is open and chosen in the Slide list."""
        layer = self.result_slide_layer()
        return layer is not None and layer is self.slide_combo.currentData()

    def check_result_slide(self, *_: Any) -> None:
        """Grey the result out and hide its layers when its slide is gone or not chosen."""
        if self.result is None:
            return
        name = Path(self.result.slide_path).name
        current = self.result_is_current()
        if current:
            self.stale_label.setVisible(False)
            self.layers.restore()
        else:
            if self.result_slide_layer() is None:
                why = f"Its slide {name} is no longer open"
                fix = "open it again to see this result, or press Run on the slide shown"
            else:
                chosen = self.slide_combo.currentText() or "another slide"
                why = f"This result is for {name}, not for {chosen}"
                fix = f"choose {name} in the Slide list again, or press Run"
            self.stale_label.setText(
                f"{why}: the result is greyed out and its layers hidden; {fix}."
            )
            self.stale_label.setVisible(True)
            self.layers.hide()
            self.scroll.ensureWidgetVisible(self.slide_combo)  # what to do next is at hand
        for widget in (self.risk_label, self.legend, self.prompt_box, self.warnings_label):
            widget.setEnabled(current)

    # -- pixel size -----------------------------------------------------------------
    def _show_slide_mpp(self, *_: Any) -> None:
        """Put the chosen slide's mpp in the spin box; warn when the file did not give one."""
        layer = self.slide_combo.currentData()
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

    def _on_mpp_changed(self, value: float) -> None:
        layer = self.slide_combo.currentData()
        if layer is not None and layer in self.viewer.layers:
            self.set_slide_mpp(value, layer)

    def set_slide_mpp(self, mpp: float, layer: Any = None) -> None:
        """Use ``mpp`` (um/px at level 0) for a slide layer: its scale, its overlays, its runs.

        The slide layer and the shown result's overlays are rescaled so the
        scale bar and lengths are true; the next Run extracts with this value.
        """
        mpp = check_mpp(mpp, "pixel size")
        layer = layer if layer is not None else self.slide_combo.currentData()
        if layer is None:
            raise HilaError("no slide layer to set the pixel size of; open a slide first")
        old = float(layer.metadata.get("mpp", layer.scale[-1]))
        layer.scale = (*layer.scale[:-2], mpp, mpp)
        layer.metadata = {
            **layer.metadata,
            "mpp": mpp,
            "mpp_is_assumed": False,
            "mpp_source": "user",
        }
        if layer is self.slide_combo.currentData():
            self._show_slide_mpp()
        shown = self.layers.result
        if shown is not None and shown.slide_path == slide_path_of(layer) and shown.mpp != mpp:
            # the overlays' grid is in level-0 px: only its scale follows the new mpp
            units = layer.units if str(layer.units[0]) != "pixel" else None
            self.layers.show(dataclasses.replace(shown, mpp=mpp), tissue=self.tissue, units=units)
            if self.result is not None and self.result.mpp != mpp:
                self.stage_label.setText(
                    f"pixel size now {mpp:g} um/px; the result shown used "
                    f"{self.result.mpp:g} um/px: press Run to predict with the new value"
                )
        if old != mpp:
            self.viewer.reset_view()

    def slide_mpp(self, layer: Any) -> float | None:
        """The mpp a run on ``layer`` passes to the prediction: the user's, else None (the file's)."""
        meta = layer.metadata
        return float(meta["mpp"]) if meta.get("mpp_source") == "user" else None

    # -- running ------------------------------------------------------------------
    def run(self) -> bool:
        """Start a prediction on the chosen slide; False (with a notification) if it cannot."""
        if self.job is not None and self.job.running:
            show_warning("A prediction is already running; wait for it to finish or press Cancel.")
            return False
        layer = self.slide_combo.currentData()
        if layer is None or layer not in self.viewer.layers:
            others = [ly.name for ly in self.viewer.layers if ly.__class__.__name__ == "Image"]
            if others:
                show_warning(
                    f"Layer '{others[0]}' is not a whole-slide image opened by napari-hila. "
                    "Open the slide file with File > Open (reader: napari-hila), then press Run."
                )
            else:
                show_warning(
                    "No slide layer: open a whole-slide image (File > Open) or the sample "
                    "(File > Open Sample > napari-hila), then press Run."
                )
            return False
        if self.model_picker.error or not self.model_picker.model_path:
            show_error(self.model_picker.error or "No model chosen: use Browse… to pick one.")
            return False
        self.job = PredictionJob(
            slide_path_of(layer),
            self.model_picker.model_path,
            self.device_combo.currentText(),
            self.cache_dir,
            mpp=self.slide_mpp(layer),
            parent=self,
            card=self.model_picker.card,  # the card of the model this run uses
        )
        self.job.progress.connect(self._on_progress)
        self.job.finished.connect(self._on_finished)
        self._set_running(True)
        self.job.start()
        return True

    def cancel(self) -> None:
        """Stop the running prediction; nothing it produced is shown."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.stage_label.setText("cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress.setValue(0)
            self.stage_label.setText("starting…")

    def _on_progress(self, stage: str, fraction: float) -> None:
        if self.job is None or self.job.cancel_event.is_set():
            return
        self.progress.setValue(int(1000 * overall_fraction(stage, fraction)))
        self.stage_label.setText(stage_text(stage, fraction))

    def _on_finished(self, outcome: JobOutcome) -> None:
        self._set_running(False)
        if outcome.cancelled:
            self.progress.setValue(0)
            self.stage_label.setText("cancelled")
            show_info("Prediction cancelled; no layers were added and the feature cache is intact.")
        elif outcome.error:
            self.progress.setValue(0)
            self.stage_label.setText("failed")
            show_error(outcome.error)
        elif outcome.result is not None:
            self.progress.setValue(1000)
            self.stage_label.setText(f"done in {outcome.seconds:.1f} s")
            try:
                self.show_result(outcome.result, outcome.tissue, card=self.job.card)
            except Exception as err:  # a display bug must not become a napari traceback
                log.exception("showing the result of %s failed", outcome.result.slide_path)
                show_error(
                    f"{outcome.result.slide_path}: the prediction finished but could not be shown "
                    f"({type(err).__name__}: {err}); please report it"
                )

    # -- showing a result ---------------------------------------------------------
    def show_result(
        self,
        result: PredictionResult,
        tissue: Any = None,
        card: ModelCard | dict[str, Any] | None = None,
    ) -> None:
        """Display a finished result: risk, layers, prompt panel, Kaplan-Meier dock.

        The result, its tissue mask and its card replace the dock's state
        (:attr:`shown`) at once; ``card`` defaults to the model directory's.
        """
        if card is None:
            same_model = (
                self.shown is not None and self.shown.result.model_path == result.model_path
            )
            card = self.shown.card if same_model else _card_of(result)
        self.shown = ShownResult(result, tissue, None if card is None else ModelCard.of(card))
        self._close_slide()
        layer = self.result_slide_layer()
        if (
            layer is not None
            and result.extra.get("mpp_source") == "user"
            and layer.metadata.get("mpp") != result.mpp
        ):
            self.set_slide_mpp(result.mpp, layer)  # made with a user's mpp: the slide takes it
        units = layer.units if layer is not None and str(layer.units[0]) != "pixel" else None
        if layer is not None and layer is not self.slide_combo.currentData():
            self.slide_combo.blockSignals(True)  # the result's slide is the chosen one
            self.slide_combo.setCurrentIndex(self.slide_combo.findData(layer))
            self.slide_combo.blockSignals(False)
            self._show_slide_mpp()
        self.layers.show(result, tissue=tissue, units=units, slide_size=_level0_size(layer))
        self.result_box.setVisible(True)
        tissue_check = tissue_check_of(self.card, layer)
        self.result_slide_label.setText(_slide_line(result, layer, tissue_check))
        self.risk_label.setText(describe_risk(result))
        if self.job is None:
            self.stage_label.setText("showing a saved result; Run predicts again")
        # in the dock, not as toasts: a toast that stays up covers the scale bar
        warnings = [*result.warnings, *filter(None, [tissue_check.warning()])]
        self.warnings_label.setText("<br>".join(html.escape(w) for w in warnings))
        self.warnings_label.setVisible(bool(warnings))
        self._build_prompt_rows()
        self.gallery_level = self.layers.finest_level()
        self._refresh_prompt_panel()
        self.export_button.setEnabled(True)
        self.check_result_slide()
        km = km_dock_for(self.viewer, create=self.card is not None)
        if km is not None:
            km.show_result(result, self.card)

    def _build_prompt_rows(self) -> None:
        while self.prompt_form.rowCount():
            self.prompt_form.removeRow(0)
        self.prompt_combos = {}
        levels = self.result.explanation.levels
        for name in sorted(levels, key=lambda n: levels[n].tile_size):
            if not levels[name].map_names:
                continue
            combo = QComboBox(self)
            combo.addItems(levels[name].map_names)
            _let_shrink(combo)
            combo.setCurrentIndex(self.layers.prompts.get(name, 0))
            combo.currentTextChanged.connect(lambda text, lv=name: self.set_prompt(lv, text))
            self.prompt_form.addRow(f"{name} prompt", combo)
            self.prompt_combos[name] = combo
        self.prompt_box.setVisible(bool(self.prompt_combos))

    def set_prompt(self, level: str, prompt: str) -> None:
        """Show ``prompt``'s heatmap at ``level`` (from the list, a bar or the API)."""
        if self.result is None or level not in self.prompt_combos:
            return
        combo = self.prompt_combos[level]
        if combo.currentText() != prompt:
            combo.setCurrentText(prompt)  # re-enters through currentTextChanged
            return
        self.layers.set_prompt(level, prompt)
        self.gallery_level = level
        self._refresh_prompt_panel()

    def _refresh_prompt_panel(self) -> None:
        level = self.gallery_level
        if self.result is None or level is None or level not in self.prompt_combos:
            return
        prompt = self.prompt_combos[level].currentText()
        self.prompt_text.setText(f"<b>{level} · {prompt}</b>: {self.layers.prompt_text(level)}")
        shown = {lv: combo.currentText() for lv, combo in self.prompt_combos.items()}
        self.chart.show_contributions(self.result, shown)
        heat = self.layers.heatmaps.get(level)
        if heat is not None:
            self.legend.show_layer(heat)
        self._fill_gallery(level, prompt)

    def _on_threshold_changed(self, *_: Any) -> None:
        threshold = self.threshold_spin.value() if self.threshold_check.isChecked() else None
        self.layers.set_threshold(threshold)
        heat = self.layers.heatmaps.get(self.gallery_level or "")
        if heat is not None:
            self.legend.show_layer(heat)

    def _fill_gallery(self, level_name: str, prompt: str) -> None:
        level = self.result.explanation.levels[level_name]
        indices = [int(i) for i in overlays.top_tokens(level, prompt, GALLERY_SIZE)]
        values = overlays.heatmap_values(level, prompt)
        try:
            slide = self._open_slide()
            thumbs = [read_thumbnail(slide, level.coords[i], level.tile_size) for i in indices]
        except (HilaError, OSError, ValueError) as err:  # the slide moved or changed
            self.gallery_title.setText(f"thumbnails unavailable: {err}")
            self.gallery.show_tiles(level_name, [], [], [])
            return
        captions = [
            f"{level_name} {i}: '{prompt}' {values[i]:.2f}x a uniform share" for i in indices
        ]
        self.gallery_title.setText(
            f"Top {len(indices)} {level_name} tiles for '{prompt}' (click one to zoom)"
        )
        self.gallery.show_tiles(level_name, indices, thumbs, captions)

    def center_on_tile(self, level: str, index: int) -> None:
        """Centre the viewer on a tile, at full resolution (one screen px per slide px)."""
        if self.result is None:
            return
        tile = self.result.explanation.levels[level]
        shown = self.layers.result or self.result  # its mpp follows the pixel size field
        center, zoom = overlays.camera_for_token(tile, index, shown.mpp)
        self.viewer.camera.center = center
        self.viewer.camera.zoom = zoom

    def _show_hover(self, text: str, full: str = "") -> None:
        self.hover_label.setText(text)
        self.hover_label.setToolTip(full or text)

    def _open_slide(self) -> Any:
        if self._slide is None:
            from napari_hila.slides import open_slide

            self._slide = open_slide(self.result.slide_path)
        return self._slide

    def _close_slide(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    # -- export -------------------------------------------------------------------
    def _export_request(self, path: str | Path) -> Any:
        """What Export writes, read from the screen now; refused when the result is not shown."""
        from napari_hila._qt.export import ExportRequest

        if self.result is None:
            raise HilaError("nothing to export yet: run the model first")
        if self.result_slide_layer() is None:
            raise HilaError(
                f"{self.result.slide_path}: this result's slide is no longer open, so the "
                "screen does not show it; open the slide again (or press Run on the slide "
                "shown) before exporting"
            )
        if not self.result_is_current():
            raise HilaError(
                f"{self.result.slide_path}: the Slide list shows "
                f"{self.slide_combo.currentText()}, not this result's slide; choose "
                f"{Path(self.result.slide_path).name} again (or press Run) before exporting"
            )
        return ExportRequest.from_viewer(self.viewer, self.result, path, slide=self._open_slide())

    def export(self, path: str | Path) -> dict[str, Path]:
        """Write the screenshot, region figure, GeoJSON and CSV beside ``path`` (blocking)."""
        return self._export_request(path).write()

    def start_export(self, path: str | Path) -> bool:
        """Export in a worker thread with progress and Cancel; False (and a message) if refused."""
        from napari_hila._qt.export import ExportJob

        if self.export_job is not None and self.export_job.running:
            show_warning("An export is already running; wait for it or press Cancel export.")
            return False
        try:
            request = self._export_request(path)
        except (HilaError, OSError) as err:
            show_error(f"Export refused: {err}")
            return False
        self.export_job = ExportJob(request, parent=self)
        self.export_job.progress.connect(self._on_export_progress)
        self.export_job.finished.connect(self._on_export_finished)
        self.export_button.setEnabled(False)
        self.export_progress.setValue(0)
        self.export_progress.setVisible(True)
        self.export_cancel.setVisible(True)
        self.export_job.start()
        return True

    def cancel_export(self) -> None:
        if self.export_job is not None and self.export_job.running:
            self.export_job.cancel()

    def _on_export_progress(self, text: str, fraction: float) -> None:
        self.export_progress.setValue(int(1000 * fraction))
        self.export_progress.setFormat(text)

    def _on_export_finished(self, outcome: Any) -> None:
        self.export_button.setEnabled(True)
        self.export_progress.setVisible(False)
        self.export_cancel.setVisible(False)
        if outcome.cancelled:
            show_info("Export cancelled; no partial files were left.")
        elif outcome.error:
            show_error(f"Export failed: {outcome.error}")
        else:
            show_info("Exported " + ", ".join(str(p) for p in outcome.written.values()))

    def _on_export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export", "hila.png", "PNG image (*.png)")
        if path:
            self.start_export(path)

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        """The chart takes what a short window leaves, so the result and Export stay in view."""
        super().resizeEvent(event)
        height = int(CHART_SHARE * self.height())
        self.chart.setFixedHeight(min(max(height, CHART_HEIGHT[0]), CHART_HEIGHT[1]))

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.cancel()
        self.cancel_export()
        self._close_slide()
        super().closeEvent(event)


@functools.cache
def _warm_up_descriptor() -> threading.Thread:
    """Compile the default encoder in the background, once per session, while the user
    is still choosing a slide: on a new installation that takes 10-20 s."""

    def warm() -> None:
        try:
            from napari_hila.encoders.descriptor import warm_up

            warm_up()
        except Exception:  # the first run compiles it instead, and reports any error
            log.debug("descriptor warm-up failed", exc_info=True)

    thread = threading.Thread(target=warm, name="hila-warm-up", daemon=True)
    thread.start()
    return thread


def _forget_viewer(viewer: Any, refresh: Any, on_inserted: Any, layers: ResultLayers) -> Any:
    """A callback for ``destroyed``: stop the viewer calling into a deleted dock.

    It must not touch the dock itself (Qt has already deleted it), only the
    viewer's event connections and the mouse callback.
    """

    def forget(*_: Any) -> None:
        for event in ("inserted", "removed", "reordered", "renamed"):
            getattr(viewer.layers.events, event).disconnect(refresh)
        viewer.layers.events.inserted.disconnect(on_inserted)
        layers.detach()

    return forget


def _let_shrink(combo: QComboBox) -> None:
    """Let a combo box narrower than its longest item, so the dock fits a narrow column."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(8)


def _level0_size(layer: Any) -> tuple[int, int] | None:
    """A slide layer's level-0 (width, height) in pixels, or None without a layer."""
    if layer is None:
        return None
    data = layer.data[0] if layer.multiscale else layer.data
    height, width = data.shape[:2]
    return int(width), int(height)


def tissue_check_of(card: ModelCard | None, layer: Any) -> TissueCheck:
    """The model's tissue type (card) beside the organ the slide layer's file records."""
    properties = (layer.metadata.get("properties") or {}) if layer is not None else {}
    cancer_type = card.cancer_type if card is not None else None
    prompt_set = card.prompts.get("set") if card is not None else None
    return check_tissue_type(cancer_type, prompt_set, properties)


def _slide_line(result: PredictionResult, layer: Any, tissue: TissueCheck) -> str:
    """Slide name and case id, then the tissue type the model and its prompts are for."""
    case = case_id_of(layer.metadata) if layer is not None else None
    name = html.escape(Path(result.slide_path).name)
    case_text = f" &middot; case {html.escape(case)}" if case else ""
    return f"<b>Slide:</b> {name}{case_text}<br>{tissue.html()}"


def _card_of(result: PredictionResult) -> ModelCard | None:
    """The card of the model a result came from, when its directory is still there."""
    if not result.model_path:
        return None
    try:
        return read_card(result.model_path)
    except HilaError:
        return None
