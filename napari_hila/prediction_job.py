"""A prediction as the viewer runs it, without Qt: progress by stage, Cancel, no exceptions.

:func:`run_prediction` is plain Python that never raises: it returns a
:class:`JobOutcome` saying what happened (a result and the slide's tissue mask,
a cancellation, or a one-line message), so no traceback ever reaches napari.
The dock runs it in a thread worker (``napari_hila._qt.job.PredictionJob``);
``napari-hila bench viewer`` times it without loading Qt. The progress bar and
its label read one number from :func:`overall_fraction`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_hila.devices import apply_torch_threads
from napari_hila.errors import Cancelled, HilaError
from napari_hila.predict import predict_slide
from napari_hila.results import PredictionResult
from napari_hila.slides import detect_tissue, open_slide

log = logging.getLogger(__name__)

# The stages predict_slide reports, in order, and how the progress bar names them.
STAGES = ("model", "tissue", "tiles", "features", "explain")
STAGE_LABELS = {
    "model": "loading model",
    "tissue": "finding tissue",
    "tiles": "encoding patches",
    "features": "encoding regions",
    "explain": "running the model",
}


@dataclass
class JobOutcome:
    """What a prediction run ended with: a result, a cancellation or a message."""

    result: PredictionResult | None = None
    tissue: Any = None  # TissueMask
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0


def overall_fraction(stage: str, fraction: float) -> float:
    """Progress over the whole run when ``stage`` is ``fraction`` done."""
    shown = STAGES
    order = shown.index(stage) if stage in shown else len(shown) - 1
    fraction = min(max(float(fraction), 0.0), 1.0)
    return min((order + fraction) / len(shown), 1.0)


def stage_text(stage: str, fraction: float) -> str:
    """What the progress label says: the stage and the bar's own percentage.

    One number, the same as the bar's (:func:`overall_fraction`), e.g.
    "encoding patches (step 3 of 5): 47% done", never a stage's 0% beside a 40% bar.
    """
    shown = STAGES
    step = shown.index(stage) + 1 if stage in shown else len(shown)
    label = STAGE_LABELS.get(stage, stage)
    overall = 100 * overall_fraction(stage, fraction)
    return f"{label} (step {step} of {len(shown)}): {overall:.0f}% done"


_TISSUE_CACHE: dict[tuple[str, int, int, float | None], Any] = {}


def tissue_of(result: PredictionResult) -> Any:
    """The tissue mask of the result's slide (a ``TissueMask``), computed once per file version.

    Tissue detection reads a thumbnail (a few tenths of a second); a re-run on
    the same unchanged file reuses the mask.
    """
    path = Path(result.slide_path).resolve()
    stat = path.stat()
    # the tissue view is taken at a physical scale: a user's mpp changes it
    mpp = result.mpp if result.extra.get("mpp_source") == "user" else None
    key = (str(path), stat.st_mtime_ns, stat.st_size, mpp)
    if key not in _TISSUE_CACHE:
        with open_slide(path, mpp=mpp) as slide:
            _TISSUE_CACHE.clear()  # one slide's mask at a time is all the viewer needs
            _TISSUE_CACHE[key] = detect_tissue(slide)
    return _TISSUE_CACHE[key]


def run_prediction(
    slide_path: str | Path,
    model: Any,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    progress: Callable[[str, float], None] | None = None,
    cancel: threading.Event | None = None,
    mpp: float | None = None,
) -> JobOutcome:
    """Predict one slide; every failure becomes a message, never an exception.

    The progress callback also checks ``cancel`` so a cancel lands at the next
    progress report even inside a long stage. ``mpp`` is the user's pixel size
    (None: the file's), passed to ``predict_slide``.
    """
    apply_torch_threads()  # in the job's own thread: `view --threads N`, else the default
    cancel = cancel or threading.Event()
    started = time.perf_counter()

    def stop_if_cancelled() -> None:
        if cancel.is_set():
            raise Cancelled("cancelled by the user")

    def report(stage: str, fraction: float) -> None:
        stop_if_cancelled()
        if progress is not None:
            progress(stage, fraction)

    try:
        result = predict_slide(
            str(slide_path),
            model,
            cache_dir=cache_dir,
            device=device,
            progress=report,
            cancel=cancel,
            mpp=mpp,
        )
        stop_if_cancelled()
        tissue = tissue_of(result)
        stop_if_cancelled()  # pressed while the mask was computed: still nothing is shown
        return JobOutcome(result=result, tissue=tissue, seconds=time.perf_counter() - started)
    except Cancelled:
        return JobOutcome(cancelled=True, seconds=time.perf_counter() - started)
    except HilaError as err:
        return JobOutcome(error=str(err), seconds=time.perf_counter() - started)
    except MemoryError:
        return JobOutcome(
            error=f"{slide_path}: out of memory; close other programs or use a smaller cache",
            seconds=time.perf_counter() - started,
        )
    except Exception as err:  # a bug: log it in full, tell the user in one line
        log.exception("prediction failed on %s", slide_path)
        return JobOutcome(
            error=f"{slide_path}: prediction failed ({type(err).__name__}: {err}); "
            "see the log and report it with the slide's format",
            seconds=time.perf_counter() - started,
        )
