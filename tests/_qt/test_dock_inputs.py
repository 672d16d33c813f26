"""Bad input and concurrency in the dock: notifications, never exceptions or frozen runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from napari_hila import overlays, prediction_job
from napari_hila._qt.survival_dock import HilaSurvivalDock
from napari_hila.errors import Cancelled

pytestmark = pytest.mark.gui


@pytest.fixture
def notes():
    """Messages napari notifications received during the test, as (severity, text)."""
    seen: list[tuple[str, str]] = []

    def record(event):
        note = getattr(event, "value", event)
        seen.append((str(note.severity), str(note.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def dock(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    widget = HilaSurvivalDock(viewer)
    widget.cache_dir = tmp_path / "cache"
    viewer.window.add_dock_widget(widget)
    return widget


def add_slide_layer(viewer, path):
    return viewer.add_image(
        np.full((64, 64, 3), 200, np.uint8),
        rgb=True,
        name="slide",
        metadata={"slide_path": str(path)},
    )


def test_bad_inputs_notify(dock, notes, tmp_path, sample_slide):
    """No slide layer, a non-slide image, a model without a card: one notification each."""
    assert dock.run() is False
    assert any("No slide layer" in text for _, text in notes)

    dock.viewer.add_image(np.zeros((10, 10)), name="cells")
    assert dock.settings.slide_combo.count() == 0
    assert dock.run() is False
    assert any("'cells' is not a whole-slide image" in text for _, text in notes)

    add_slide_layer(dock.viewer, sample_slide)
    assert (
        dock.settings.slide_combo.count() == 1
        and dock.settings.slide_combo.currentText() == "slide"
    )
    second = add_slide_layer(dock.viewer, sample_slide)
    second.name = "second slide"
    dock.settings.slide_combo.setCurrentText("second slide")
    dock.viewer.add_points([[0, 0]], name="probe")  # layer changes keep the user's choice
    assert (
        dock.settings.slide_combo.count() == 2
        and dock.settings.slide_combo.currentText() == "second slide"
    )
    dock.viewer.layers.remove("probe")
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    dock.settings.model_picker.set_model(empty)
    assert "no card.json" in dock.settings.model_picker.card_label.text()
    assert dock.run() is False
    assert any(sev == "error" and "no card.json" in text for sev, text in notes)
    assert dock.job is None  # nothing was started


@pytest.fixture
def card_only_model(tmp_path, dock):
    """A model directory with just a card: enough to pass the dock's checks."""
    import json

    folder = tmp_path / "model"
    folder.mkdir()
    card = {"model": "hila", "config": {}, "encoders": {}, "time_bin_edges": [0, 1], "label": "t"}
    (folder / "card.json").write_text(json.dumps(card))
    dock.settings.model_picker.set_model(folder)
    return folder


@pytest.fixture
def slow_predict(monkeypatch):
    """predict_slide replaced by one that reports progress for ~10 s unless cancelled."""
    calls = []

    def predict_slide(
        slide_path, model, cache_dir=None, device="auto", progress=None, cancel=None, mpp=None
    ):
        calls.append(threading.current_thread().name)
        for i in range(200):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            progress("features", i / 200)
            time.sleep(0.05)
        raise AssertionError("should have been cancelled")

    monkeypatch.setattr(prediction_job, "predict_slide", predict_slide)
    return calls


def test_cancel_stops_within_a_second_and_adds_nothing(
    dock, notes, qtbot, sample_slide, slow_predict, card_only_model
):
    add_slide_layer(dock.viewer, sample_slide)
    layers_before = len(dock.viewer.layers)
    assert dock.run() is True
    qtbot.waitUntil(lambda: dock.run_panel.progress.value() > 0, timeout=5000)
    assert "encoding regions (step 4 of 5)" in dock.run_panel.stage_label.text()
    assert slow_predict[0] != threading.main_thread().name  # ran off the GUI thread
    # the viewer stays usable while it runs
    dock.viewer.add_points([[1, 1]], name="probe")
    dock.viewer.layers.remove("probe")
    # a second run while one is going is refused with a notification
    assert dock.run() is False
    assert any("already running" in text for _, text in notes)
    started = time.perf_counter()
    dock.run_panel.cancel_button.click()
    qtbot.waitUntil(lambda: not dock.job.running, timeout=3000)
    assert time.perf_counter() - started < 3.0  # honoured mid-run, not after the 10 s job
    assert dock.run_panel.stage_label.text() == "cancelled"
    assert dock.run_panel.run_button.isEnabled() and not dock.run_panel.cancel_button.isEnabled()
    assert len(dock.viewer.layers) == layers_before
    assert not any(ly.metadata.get(overlays.OVERLAY_KEY) for ly in dock.viewer.layers)
    assert any("cancelled" in text for _, text in notes)


def test_failure_becomes_one_notification(
    dock, notes, qtbot, sample_slide, monkeypatch, card_only_model
):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(prediction_job, "predict_slide", broken)
    add_slide_layer(dock.viewer, sample_slide)
    assert dock.run() is True
    qtbot.waitUntil(lambda: not dock.job.running, timeout=5000)
    errors = [text for sev, text in notes if sev == "error"]
    assert len(errors) == 1 and "ZeroDivisionError: boom" in errors[0]
    assert str(sample_slide) in errors[0]
    assert dock.run_panel.stage_label.text() == "failed"


def test_closed_dock_leaves_the_viewer_working(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    dock = HilaSurvivalDock(viewer)
    viewer.window.add_dock_widget(dock, name="HiLa survival")
    callbacks = len(viewer.mouse_move_callbacks)
    viewer.window.remove_dock_widget(dock)
    dock.deleteLater()
    qtbot.waitUntil(lambda: len(viewer.mouse_move_callbacks) == callbacks - 1, timeout=3000)
    viewer.add_image(np.zeros((8, 8)), name="after")  # would call the deleted dock
    viewer.layers.remove("after")


def test_cancel_after_prediction_still_shows_nothing(monkeypatch, sample_slide):
    """A Cancel pressed after predict_slide returned (while the mask is computed) wins."""
    import threading as th

    from hila_fake_results import fake_result

    from napari_hila import prediction_job as job

    cancel = th.Event()
    monkeypatch.setattr(job, "predict_slide", lambda *a, **k: fake_result(str(sample_slide)))

    def tissue_while_cancelling(result):
        cancel.set()
        return None

    monkeypatch.setattr(job, "tissue_of", tissue_while_cancelling)
    outcome = job.run_prediction(sample_slide, "model", cancel=cancel)
    assert outcome.cancelled and outcome.result is None


def test_opening_the_dock_compiles_the_descriptor_once_in_the_background(dock, make_napari_viewer):
    from napari_hila._qt import survival_dock
    from napari_hila.encoders import _descriptor_kernels as kernels

    warm = survival_dock._warm_up_descriptor()  # the thread the dock started
    assert warm.name == "hila-warm-up" and warm.daemon
    assert HilaSurvivalDock(make_napari_viewer()) and survival_dock._warm_up_descriptor() is warm
    warm.join(timeout=120)
    assert not warm.is_alive() and kernels.describe.signatures
