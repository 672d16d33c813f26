"""Running work off the GUI thread, with progress and a Cancel.

The work itself is Qt-free (:func:`napari_hila.prediction_job.run_prediction`
for a prediction, ``ExportRequest.write`` for an export) and never raises;
:class:`BackgroundJob` runs it in a napari thread worker and relays progress
to the GUI thread through a Qt signal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal

from napari_hila.prediction_job import JobOutcome, run_prediction


def _import_display_modules() -> None:
    """Import what showing a result needs, in the worker, off the GUI thread (lifelines ~2 s)."""
    import lifelines.statistics  # noqa: F401

    import napari_hila.plotting  # noqa: F401


class BackgroundJob(QObject):
    """A function run in a napari thread worker with progress and Cancel.

    ``function`` takes ``(*args, progress, cancel)`` and returns an outcome
    (it never raises); ``bug_outcome`` turns an exception that escapes it
    anyway (a bug) into an outcome. Signals arrive on the GUI thread.
    """

    progress = Signal(str, float)  # what is being done, fraction done
    finished = Signal(object)  # the outcome

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        bug_outcome: Callable[[BaseException], Any],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.cancel_event = threading.Event()
        self.outcome: Any = None
        self._worker = None
        self._function = function
        self._args = args
        self._bug_outcome = bug_outcome

    @property
    def running(self) -> bool:
        return self._worker is not None and self.outcome is None

    def start(self) -> None:
        from napari.qt.threading import create_worker

        self._worker = create_worker(
            self._function, *self._args, self.progress.emit, self.cancel_event, _ignore_errors=True
        )
        self._worker.returned.connect(self._on_returned)
        self._worker.errored.connect(lambda err: self._on_returned(self._bug_outcome(err)))
        self._worker.start()

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self.cancel_event.set()

    def _on_returned(self, outcome: Any) -> None:
        self.outcome = outcome
        self.finished.emit(outcome)


class PredictionJob(BackgroundJob):
    """One prediction in a napari thread worker; signals arrive on the GUI thread."""

    def __init__(
        self,
        slide_path: str | Path,
        model: Any,
        device: str = "auto",
        cache_dir: str | Path | None = None,
        parent: QObject | None = None,
        mpp: float | None = None,
        card: Any = None,
    ) -> None:
        def run(slide, model, device, cache_dir, mpp, progress, cancel):
            outcome = run_prediction(slide, model, device, cache_dir, progress, cancel, mpp)
            if outcome.result is not None:
                _import_display_modules()
                if cancel.is_set():  # pressed meanwhile: still nothing is shown
                    return JobOutcome(cancelled=True, seconds=outcome.seconds)
            return outcome

        args = (str(slide_path), model, device, cache_dir, mpp)
        super().__init__(run, args, _prediction_bug, parent)
        self.slide_path = str(slide_path)
        self.model = model
        self.device = device
        self.cache_dir = cache_dir
        self.mpp = mpp  # the user's pixel size, or None for the file's
        self.card = card  # the model's card (a ModelCard), shown with the result


def _prediction_bug(err: BaseException) -> JobOutcome:
    """Only on a bug in run_prediction, which turns every expected failure into an outcome."""
    return JobOutcome(error=f"prediction failed: {type(err).__name__}: {err}")
