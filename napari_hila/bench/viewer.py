"""The viewer's run: cold and cached prediction, cancel latency, result display.

Times the function the HiLa dock runs in its worker thread
(:func:`napari_hila.prediction_job.run_prediction`: prediction plus the tissue mask);
a bare :func:`napari_hila.predict.predict_slide` on the same cache is reported
beside it as the part the worker wraps (no other tool runs these models, so
the prediction has no peer). Cancel latency is the time from setting the
cancel event 0, 0.3 and 0.6 s into patch encoding to the run returning, on a
generated 20,000 x 20,000 px slide (1424 patches: encoding takes longer than
the last cancel; an 8000 px slide finished first in 3 of 3 runs).

With ``--gui`` (needs a display) it also times, in a real napari viewer:

- open to first drawn canvas of a generated 20,000 px slide, against the
  peer the field uses without a plugin: napari's own multiscale image layer
  over tifffile's zarr store of the file's pyramid (napari's documented way to
  show a pyramidal TIFF; napari-wsi, when installed, is timed too). The two
  take turns (A, B, A, B) in the same viewer;
- showing a result (the first time, layers added, and again, updated in
  place): napari-hila's own, no peer draws HiLa maps;
- the dock's Export on the 20,000 px slide, whole slide and one tile in view:
  in its worker against the same export on the GUI thread, interleaved, with
  the longest time the window froze.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slide", default=None, help="slide to run on (default: the sample)")
    parser.add_argument("--model", default=None, help="model directory (default: the demo model)")
    parser.add_argument("--device", default="cpu", help="auto, cuda, mps or cpu")
    parser.add_argument("--repeats", type=int, default=3, help="cached runs to time")
    parser.add_argument("--gui", action="store_true", help="also time the display in napari")
    parser.add_argument(
        "--cancel-slide",
        default=None,
        help="slide to cancel on (default: generated 20,000 px, large enough to cancel in time)",
    )
    parser.add_argument(
        "--export-slide",
        default=None,
        help="slide to time Export on with --gui (default: generated 20,000 px)",
    )


def _seconds(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _cancel_latency(slide: str, model: str, device: str, cache: Path, delay: float) -> float | None:
    """Seconds from a Cancel pressed ``delay`` s into patch encoding to the run returning.

    None when the run finished before the Cancel came (encoding was quicker than ``delay``).
    """
    from napari_hila.prediction_job import run_prediction

    cancel = threading.Event()
    marks: dict[str, float] = {}

    def press_cancel() -> None:
        marks["cancel"] = time.perf_counter()
        cancel.set()

    def progress(stage: str, fraction: float) -> None:
        if stage == "tiles" and "timer" not in marks:
            marks["timer"] = time.perf_counter()
            threading.Timer(delay, press_cancel).start()

    outcome = run_prediction(slide, model, device, cache, progress, cancel)
    if not outcome.cancelled or "cancel" not in marks:
        return None
    return time.perf_counter() - marks["cancel"]


#: Generated slide side (px, at 0.5 um/px) for the cancel and display timings.
BIG_SLIDE_PX = 20_000


def _rendered(viewer: Any, timeout_s: float = 120.0) -> bool:
    """Process events until the canvas shows something (not blank), or the timeout."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        QApplication.processEvents()
        if viewer.screenshot(canvas_only=True)[..., :3].std() > 10:
            return True
    return False


def _add_tifffile_zarr_pyramid(viewer: Any, path: str) -> None:
    """The peer: napari's multiscale image layer over tifffile's zarr store of the file."""
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0)
    group = zarr.open(store, mode="r")
    levels = [group[key] for key in sorted(group.array_keys(), key=int)]
    viewer.add_image(levels, multiscale=True, rgb=True, name="tifffile+zarr")


def _display_openers(path: str) -> dict[str, Any]:
    """The ways to show a slide in napari, by name: ours, the plain-napari peer, napari-wsi."""
    import importlib.util

    openers = {
        "napari_hila_reader": lambda viewer: viewer.open(path, plugin="napari-hila"),
        "napari_image_layer_tifffile_zarr": lambda viewer: _add_tifffile_zarr_pyramid(viewer, path),
    }
    if importlib.util.find_spec("napari_wsi") is not None:
        openers["napari_wsi_reader"] = lambda viewer: viewer.open(path, plugin="napari-wsi")
    return openers


def display_benchmark(path: str, rounds: int, viewer: Any = None) -> dict[str, Any]:
    """Seconds from opening ``path`` to a drawn canvas, ours and the peers', A, B, A, B.

    One viewer for all (``viewer``, shown, or a new one closed at the end); its
    layers are cleared between opens. Each opener runs once untimed first
    (imports, first-use costs), then ``rounds`` times in turn.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_hila.bench.timing import head_to_head, spread

    openers = _display_openers(path)
    own_viewer = viewer is None
    if own_viewer:
        viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    times: dict[str, list[float]] = {name: [] for name in openers}
    failed: list[str] = []
    for round_index in range(rounds + 1):
        for name, add in openers.items():
            viewer.layers.clear()
            QApplication.processEvents()
            start = time.perf_counter()
            add(viewer)
            viewer.reset_view()
            if not _rendered(viewer):
                failed.append(f"{name}: nothing drawn within 120 s in round {round_index}")
            if round_index:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    if own_viewer:
        viewer.close()
    peer = "napari_image_layer_tifffile_zarr"
    report: dict[str, Any] = {
        "slide": path,
        "rounds": rounds,
        "peer": f"{peer}: napari's own multiscale image layer over tifffile's zarr store",
        "open_to_first_render_s": {name: spread(values) for name, values in times.items()},
        "ours_vs_peer": head_to_head("napari_hila_reader", peer, times),
        "failed": failed,
    }
    if "napari_wsi_reader" in times:
        report["ours_vs_napari_wsi"] = head_to_head(
            "napari_hila_reader", "napari_wsi_reader", times
        )
    else:
        report["napari_wsi_reader"] = {"skipped": "napari-wsi not installed"}
    return report


def _gui_timings(result: Any, tissue: Any) -> dict[str, float]:
    from qtpy.QtWidgets import QApplication

    from napari_hila._qt.app import launch_viewer, survival_dock_of

    viewer = launch_viewer(result.slide_path)
    dock = survival_dock_of(viewer)
    first, _ = _seconds(lambda: dock.show_result(result, tissue))
    QApplication.processEvents()
    again, _ = _seconds(lambda: dock.show_result(result, tissue))
    QApplication.processEvents()
    viewer.close()
    return {"show_result_first_s": round(first, 3), "show_result_update_s": round(again, 3)}


class _EventLoopWatch:
    """The longest the Qt event loop went without running a 10 ms timer: how long it froze."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.last = time.perf_counter()
        self.longest = 0.0
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now

    def __enter__(self) -> _EventLoopWatch:
        self.last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._tick()
        self.timer.stop()


def _export_once(dock: Any, path: Path, in_worker: bool) -> dict[str, float]:
    """Seconds an Export takes and the longest the window froze, worker or GUI thread."""
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    with _EventLoopWatch() as watch:
        start = time.perf_counter()
        if in_worker:
            if not dock.start_export(path):
                raise RuntimeError("the export was refused")
            loop = QEventLoop()  # the window's own event loop, as a user has it
            dock.export_job.finished.connect(lambda *_: loop.quit())
            if dock.export_job.outcome is None:
                loop.exec()
            if dock.export_job.outcome.error:
                raise RuntimeError(dock.export_job.outcome.error)
        else:
            dock.export(path)
            QApplication.processEvents()
        total = time.perf_counter() - start
    return {"total_s": total, "longest_freeze_s": watch.longest}


def _export_timings(result: Any, out: Path, repeats: int) -> dict[str, Any]:
    """Export on the whole slide and on a tile at full resolution, worker vs GUI thread (A,B,A,B)."""
    from qtpy.QtWidgets import QApplication

    from napari_hila._qt.app import launch_viewer, survival_dock_of

    viewer = launch_viewer(result.slide_path)
    viewer.window._qt_window.resize(1920, 1080)
    dock = survival_dock_of(viewer)
    dock.show_result(result)
    for _ in range(5):
        QApplication.processEvents()
    report: dict[str, Any] = {}
    views = {
        "whole_slide": viewer.reset_view,
        "one_tile_full_resolution": lambda: dock.center_on_tile(
            dock.layers.finest_level(), len(result.explanation.levels["patch"].coords) // 2
        ),
    }
    for name, set_view in views.items():
        set_view()
        QApplication.processEvents()
        runs: dict[str, list[dict[str, float]]] = {"worker": [], "gui_thread": []}
        for i in range(max(repeats, 1)):
            for mode in ("worker", "gui_thread"):  # interleaved A, B, A, B
                runs[mode].append(
                    _export_once(dock, out / f"{name}_{mode}_{i}.png", mode == "worker")
                )
        report[name] = {
            mode: {
                "total_s_min": round(min(r["total_s"] for r in values), 3),
                "total_s": [round(r["total_s"], 3) for r in values],
                "longest_freeze_s_max": round(max(r["longest_freeze_s"] for r in values), 3),
            }
            for mode, values in runs.items()
        }
    viewer.close()
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    from napari_hila.predict import predict_slide
    from napari_hila.prediction_job import run_prediction
    from napari_hila.resources import resource_path, sample_slide_path

    slide = str(args.slide or sample_slide_path())
    model = str(args.model or resource_path("demo_model"))
    with tempfile.TemporaryDirectory(prefix="hila-bench-viewer-") as tmp:
        cache = Path(tmp) / "cache"
        cold, outcome = _seconds(lambda: run_prediction(slide, model, args.device, cache))
        if outcome.error:
            raise RuntimeError(outcome.error)
        cached, bare = [], []
        for _ in range(max(args.repeats, 1)):  # interleaved A, B, A, B
            cached.append(_seconds(lambda: run_prediction(slide, model, args.device, cache))[0])
            bare.append(
                _seconds(lambda: predict_slide(slide, model, cache_dir=cache, device=args.device))[
                    0
                ]
            )
        from napari_hila.slides.synthetic import cached_test_slide

        # the sample (and an 8000 px slide) encode before a 0.6 s cancel: cancel on a bigger one
        big = str(args.cancel_slide or cached_test_slide(BIG_SLIDE_PX, BIG_SLIDE_PX, mpp=0.5))
        delays = (0.0, 0.3, 0.6)
        latency = [
            _cancel_latency(big, model, args.device, Path(tmp) / f"c{i}", delay)
            for i, delay in enumerate(delays)
        ]
        cancelled = sum(t is not None for t in latency)
        report: dict[str, Any] = {
            "slide": slide,
            "model": model,
            "cancel_slide": big,
            "tokens": {k: len(v.coords) for k, v in outcome.result.explanation.levels.items()},
            "ours": {
                "cold_run_s": round(cold, 3),
                "cached_run_s_min": round(min(cached), 3),
                "cached_run_s": [round(t, 3) for t in cached],
                "cancel_latency_s_at_0_0.3_0.6s_into_patches": [
                    None if t is None else round(t, 4) for t in latency
                ],
                "cancelled_before_finishing": f"{cancelled} of {len(delays)}",
            },
            "part_bare_predict_slide": {
                "cached_run_s_min": round(min(bare), 3),
                "cached_run_s": [round(t, 3) for t in bare],
            },
            "note": "ours = predict_slide + tissue mask, as the dock's worker runs it; "
            "part_bare_predict_slide is the predict_slide call inside it, not a peer "
            "(no other tool runs these models)",
        }
        if cancelled < len(delays):
            report["cancel_warning"] = (
                f"{len(delays) - cancelled} run(s) finished before the cancel: "
                "pass a bigger --cancel-slide"
            )
        if args.gui:
            report["ours"].update(_gui_timings(outcome.result, outcome.tissue))
            export_slide = str(
                args.export_slide or cached_test_slide(BIG_SLIDE_PX, BIG_SLIDE_PX, mpp=0.5)
            )
            with contextlib.redirect_stdout(sys.stderr):  # napari's notices, not the JSON
                report["display"] = display_benchmark(export_slide, max(args.repeats, 1))
            export_result = predict_slide(
                export_slide, model, cache_dir=Path(tmp) / "export", device=args.device
            )
            with contextlib.redirect_stdout(sys.stderr):  # napari's notices, not the JSON
                timings = _export_timings(export_result, Path(tmp), args.repeats)
            report["export"] = {
                "slide": export_slide,
                "tokens": {k: len(v.coords) for k, v in export_result.explanation.levels.items()},
                "note": "worker = the dock's Export (ExportJob); gui_thread = the same "
                "export run on the GUI thread (what the window did before). "
                "longest_freeze_s: longest the Qt event loop went without a 10 ms tick",
                **timings,
            }
    return report
