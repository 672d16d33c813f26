"""The "HiLa survival" dock: pick a slide and a model, run, and see why.

Runs the prediction in a thread worker (the viewer stays responsive), shows
progress by stage with a Cancel, then the risk, the overlays aligned to the
slide and the prompt panel. Every problem is a napari notification saying what
to do; nothing here lets an exception reach napari.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QLabel, QVBoxLayout, QWidget

from napari_hila import overlays
from napari_hila._qt.job import PredictionJob
from napari_hila._qt.km_dock import DOCK_MIN_WIDTH, km_dock_for
from napari_hila._qt.layers import ResultLayers, adopt_slide_units, slide_path_of
from napari_hila._qt.prompt_panel import TileGallery, read_thumbnail
from napari_hila._qt.result_panel import (
    PromptsPanel,
    ResultPanel,
    breakable,
    describe_risk,
    slide_line,
    tissue_check_of,
)
from napari_hila._qt.run_panel import RunPanel
from napari_hila._qt.scroll import make_scrollable
from napari_hila._qt.settings_panel import SettingsPanel
from napari_hila._qt.state import ShownResult
from napari_hila.errors import HilaError
from napari_hila.modelfile import ModelCard, read_card
from napari_hila.predict import default_cache_dir
from napari_hila.prediction_job import JobOutcome, overall_fraction, stage_text
from napari_hila.results import PredictionResult
from napari_hila.slides.opener import check_mpp

GALLERY_SIZE = 9
CHART_HEIGHT = (140, 260)  # px: the contribution chart's least and most height
CHART_SHARE = 0.21  # of the dock's height (about 143 px on a 1366 x 768 laptop)
log = logging.getLogger(__name__)


class HilaSurvivalDock(QWidget):
    """Run a survival model on a slide layer and show its evidence as layers.

    Its panels: :class:`ResultPanel` (the result in words) and :class:`PromptsPanel`
    first, then the run settings (:class:`SettingsPanel`) and the top-tile
    gallery, which may scroll; :class:`RunPanel` (Run and Export) pinned under them.
    """

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
        self.result_panel = ResultPanel(self)
        self.prompts = PromptsPanel(self.viewer, self)
        self.settings = SettingsPanel(self)
        self.gallery = TileGallery(self)
        self.gallery_title = QLabel(self)
        self.gallery_title.setWordWrap(True)
        self.run_panel = RunPanel(self)
        # The result first; the settings under it; the gallery last (it may scroll).
        content = QWidget(self)
        layout = QVBoxLayout(content)
        layout.setSpacing(4)
        for widget in (
            self.result_panel,
            self.prompts,
            self.settings,
            self.gallery_title,
            self.gallery,
        ):
            layout.addWidget(widget)
        layout.addStretch(1)
        self.scroll = make_scrollable(self, content)
        self.layout().addWidget(self.run_panel)  # pinned under the scrolling part

        self.settings.slide_changed.connect(self.check_result_slide)
        self.settings.mpp_changed.connect(self._on_mpp_changed)
        self.result_panel.threshold_changed.connect(self._on_threshold_changed)
        self.prompts.prompt_chosen.connect(self.set_prompt)
        self.gallery.tile_clicked.connect(self.center_on_tile)
        self.run_panel.run_button.clicked.connect(self.run)
        self.run_panel.cancel_button.clicked.connect(self.cancel)
        self.run_panel.export_button.clicked.connect(self._on_export_clicked)
        self.run_panel.export_cancel.clicked.connect(self.cancel_export)

    # -- slide layers -----------------------------------------------------------
    def slide_layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if slide_path_of(layer)]

    def refresh_slides(self, *_: Any) -> None:
        self.settings.list_slides(self.slide_layers())
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
        return layer is not None and layer is self.settings.chosen_layer()

    def check_result_slide(self, *_: Any) -> None:
        """Grey the result out and hide its layers when its slide is gone or not chosen."""
        if self.result is None:
            return
        name = breakable(Path(self.result.slide_path).name)
        current = self.result_is_current()
        if current:
            self.result_panel.set_stale(None)
            self.layers.restore()
        else:
            if self.result_slide_layer() is None:
                why = f"Its slide {name} is no longer open"
                fix = "open it again to see this result, or press Run on the slide shown"
            else:
                chosen = breakable(self.settings.slide_combo.currentText()) or "another slide"
                why = f"This result is for {name}, not for {chosen}"
                fix = f"choose {name} in the Slide list again, or press Run"
            self.result_panel.set_stale(
                f"{why}: the result is greyed out and its layers hidden; {fix}."
            )
            self.layers.hide()
            self.scroll.ensureWidgetVisible(self.settings.slide_combo)  # what to do next
        self.prompts.setEnabled(current)

    # -- pixel size -----------------------------------------------------------------
    def _on_mpp_changed(self, value: float) -> None:
        layer = self.settings.chosen_layer()
        if layer is not None and layer in self.viewer.layers:
            self.set_slide_mpp(value, layer)

    def set_slide_mpp(self, mpp: float, layer: Any = None) -> None:
        """Use ``mpp`` (um/px at level 0) for a slide layer: its scale, its overlays, its runs.

        The slide layer and the shown result's overlays are rescaled so the
        scale bar and lengths are true; the next Run extracts with this value.
        """
        mpp = check_mpp(mpp, "pixel size")
        layer = layer if layer is not None else self.settings.chosen_layer()
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
        if layer is self.settings.chosen_layer():
            self.settings.show_slide_mpp()
        shown = self.layers.result
        if shown is not None and shown.slide_path == slide_path_of(layer) and shown.mpp != mpp:
            # the overlays' grid is in level-0 px: only its scale follows the new mpp
            units = layer.units if str(layer.units[0]) != "pixel" else None
            self.layers.show(dataclasses.replace(shown, mpp=mpp), tissue=self.tissue, units=units)
            if self.result is not None and self.result.mpp != mpp:
                self.run_panel.show_stage(
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
        layer = self.settings.chosen_layer()
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
        picker = self.settings.model_picker
        if picker.error or not picker.model_path:
            show_error(picker.error or "No model chosen: use Browse… to pick one.")
            return False
        self.job = PredictionJob(
            slide_path_of(layer),
            picker.model_path,
            self.settings.device_combo.currentText(),
            self.cache_dir,
            mpp=self.slide_mpp(layer),
            parent=self,
            card=picker.card,  # the card of the model this run uses
        )
        self.job.progress.connect(self._on_progress)
        self.job.finished.connect(self._on_finished)
        self.run_panel.set_running(True)
        self.job.start()
        return True

    def cancel(self) -> None:
        """Stop the running prediction; nothing it produced is shown."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.run_panel.show_stage("cancelling…")

    def _on_progress(self, stage: str, fraction: float) -> None:
        if self.job is None or self.job.cancel_event.is_set():
            return
        self.run_panel.show_stage(stage_text(stage, fraction), overall_fraction(stage, fraction))

    def _on_finished(self, outcome: JobOutcome) -> None:
        self.run_panel.set_running(False)
        if outcome.cancelled:
            self.run_panel.show_stage("cancelled", 0.0)
            show_info("Prediction cancelled; no layers were added and the feature cache is intact.")
        elif outcome.error:
            self.run_panel.show_stage("failed", 0.0)
            show_error(outcome.error)
        elif outcome.result is not None:
            self.run_panel.show_stage(f"done in {outcome.seconds:.1f} s", 1.0)
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
        if layer is not None:
            self.settings.choose(layer)  # the result's slide is the chosen one
        self.layers.show(result, tissue=tissue, units=units, slide_size=_level0_size(layer))
        tissue_check = tissue_check_of(self.card, layer)
        self.result_panel.show_result(
            slide_line(result, layer, tissue_check),
            describe_risk(result),
            [*result.warnings, *filter(None, [tissue_check.warning()])],
        )
        if self.job is None:
            self.run_panel.show_stage("showing a saved result; Run predicts again")
        self.prompts.build(result, self.layers.prompts)
        self.gallery_level = self.layers.finest_level()
        self._refresh_prompt_panel()
        self.run_panel.export_button.setEnabled(True)
        self.check_result_slide()
        km = km_dock_for(self.viewer, create=self.card is not None)
        if km is not None:
            km.show_result(result, self.card)

    def set_prompt(self, level: str, prompt: str) -> None:
        """Show ``prompt``'s heatmap at ``level`` (from the list, a bar or the API)."""
        if self.result is None or level not in self.prompts.combos:
            return
        if self.prompts.choose(level, prompt):
            return  # re-enters through the list's prompt_chosen
        self.layers.set_prompt(level, prompt)
        self.gallery_level = level
        self._refresh_prompt_panel()

    def _refresh_prompt_panel(self) -> None:
        level = self.gallery_level
        if self.result is None or level is None or level not in self.prompts.combos:
            return
        self.prompts.show_prompt(self.result, level, self.layers.prompt_text(level))
        heat = self.layers.heatmaps.get(level)
        if heat is not None:
            self.result_panel.legend.show_layer(heat)
        self._fill_gallery(level, self.prompts.combos[level].currentText())

    def _on_threshold_changed(self, threshold: float | None) -> None:
        self.layers.set_threshold(threshold)
        heat = self.layers.heatmaps.get(self.gallery_level or "")
        if heat is not None:
            self.result_panel.legend.show_layer(heat)

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
        self.prompts.show_hover(text, full)

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
                f"{self.settings.slide_combo.currentText()}, not this result's slide; choose "
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
        self.export_job.progress.connect(self.run_panel.show_export_progress)
        self.export_job.finished.connect(self._on_export_finished)
        self.run_panel.set_exporting(True)
        self.export_job.start()
        return True

    def cancel_export(self) -> None:
        if self.export_job is not None and self.export_job.running:
            self.export_job.cancel()

    def _on_export_finished(self, outcome: Any) -> None:
        self.run_panel.set_exporting(False)
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
        self.prompts.chart.setFixedHeight(min(max(height, CHART_HEIGHT[0]), CHART_HEIGHT[1]))

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


def _level0_size(layer: Any) -> tuple[int, int] | None:
    """A slide layer's level-0 (width, height) in pixels, or None without a layer."""
    if layer is None:
        return None
    data = layer.data[0] if layer.multiscale else layer.data
    height, width = data.shape[:2]
    return int(width), int(height)


def _card_of(result: PredictionResult) -> ModelCard | None:
    """The card of the model a result came from, when its directory is still there."""
    if not result.model_path:
        return None
    try:
        return read_card(result.model_path)
    except HilaError:
        return None
