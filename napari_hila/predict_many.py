"""Prediction over many slides: a folder, a list file or a cohort CSV (external validation).

The model is loaded once; each slide gets ``OUT/<slide id>/`` with the same
files as a single ``predict``. After every slide the tables are rewritten
(atomically), so an interrupted run shows what it did:

- ``summary.csv``: slide, status ("done", "cached", "failed"), patches, seconds, error;
- ``predictions.csv``: slide, risk, group, percentile, and patient_id, time, event
  when the input is a cohort CSV;
- ``metrics.json`` (cohort CSV only): the patient-level C-index of the risks
  against the CSV's outcomes (a patient's risk: the mean over their slides).

A re-run skips slides whose folder holds a result of the same model from the
same input file (size and modification time unchanged): it resumes. One
failing slide is a row with its error; the others go on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_hila.errors import Cancelled, CohortError, FeatureFileError, HilaError
from napari_hila.export import write_prediction_folder
from napari_hila.io_utils import atomic_path, write_json_atomic
from napari_hila.predict import (
    FEATURE_SUFFIXES,
    _load_model,
    feature_files_in,
    predict_features,
    predict_slide,
    slide_id_for,
)

__all__ = [
    "PredictionItem",
    "ManyPrediction",
    "items_in_folder",
    "items_in_list",
    "items_in_cohort",
    "predict_folder",
    "predict_many",
]

INPUT_RECORD = ".prediction-input.json"  # in each slide's folder: what its result came from
LIST_SUFFIXES = (".txt", ".lst")


@dataclass
class PredictionItem:
    """One slide (or feature file) to predict, with its outcome when the input has one."""

    slide_id: str
    path: Path
    patient_id: str | None = None
    time: float | None = None
    event: int | None = None


@dataclass
class ManyPrediction:
    """What :func:`predict_many` did."""

    results: dict[str, dict[str, Any]]  # slide id -> its result.json summary
    failures: dict[str, str]  # input file -> one-line reason
    rows: list[dict[str, Any]]  # summary.csv's rows
    table: Path  # predictions.csv
    summary: Path  # summary.csv
    metrics: dict[str, Any] | None = None  # with outcomes: C-index and counts
    cached: list[str] = field(default_factory=list)


def _slide_suffix(path: Path) -> str | None:
    from napari_hila.slides import SLIDE_SUFFIXES

    name = path.name.lower()
    return next((s for s in SLIDE_SUFFIXES if name.endswith(s)), None)


def _slide_id(path: Path) -> str:
    suffix = _slide_suffix(path)
    if suffix:
        return path.name[: -len(suffix)].removesuffix(".ome")
    return slide_id_for(path)


def items_in_folder(
    folder: str | os.PathLike,
    log: Callable[[str], None] | None = None,
    recursive: bool = False,
    pattern: str | None = None,
) -> list[PredictionItem]:
    """The slides and feature files of ``folder`` (sub-folders too with ``recursive``).

    ``pattern`` (a glob such as ``*.svs``) keeps only matching file names. A
    slide and its feature file would be one slide twice: the feature file wins.
    """
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    root = Path(folder)
    folders = [root]
    if recursive:
        folders += sorted(p for p in root.rglob("*") if p.is_dir() and not p.name.startswith("."))
    items: dict[str, PredictionItem] = {}
    for place in folders:
        files, notes = feature_files_in(place)
        for note in notes:
            say(note)
        slides = [p for p in sorted(place.iterdir()) if p.is_file() and _slide_suffix(p)]
        for path in [*slides, *files]:
            if path.name.startswith(".") or (pattern and not path.match(pattern)):
                continue
            slide_id = _slide_id(path)
            if slide_id in items and items[slide_id].path.parent == path.parent:
                items[slide_id] = PredictionItem(slide_id, path)  # its features: no pixels read
                continue
            if slide_id in items:
                raise HilaError(
                    f"{path}: slide id {slide_id!r} also names {items[slide_id].path}; "
                    "each slide needs its own file name (a sub-folder per slide is one folder)"
                )
            items[slide_id] = PredictionItem(slide_id, path)
    return list(items.values())


def items_in_list(list_file: str | os.PathLike) -> list[PredictionItem]:
    """A text file with one slide or feature file per line (relative to the list; # comments)."""
    list_file = Path(list_file)
    items = []
    for number, raw in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        path = Path(line).expanduser()
        path = path if path.is_absolute() else list_file.parent / path
        if not path.exists():
            raise HilaError(f"{list_file}: line {number}: {path} does not exist; fix the path")
        items.append(PredictionItem(_slide_id(path), path))
    return items


def _slide_file(folder: Path, slide_id: str) -> Path | None:
    from napari_hila.slides import SLIDE_SUFFIXES
    from napari_hila.survival.cohort_csv import feature_file_for

    if (folder / slide_id).is_file() and _slide_suffix(folder / slide_id):
        return folder / slide_id
    for suffix in SLIDE_SUFFIXES:
        if (folder / f"{slide_id}{suffix}").is_file():
            return folder / f"{slide_id}{suffix}"
    features = feature_file_for(folder, slide_id)
    return features if features.is_file() else None


def items_in_cohort(
    csv_path: str | os.PathLike, slides_dir: str | os.PathLike | None = None
) -> list[PredictionItem]:
    """A cohort CSV (patient_id, slide_id, time, event), its slides or feature files in
    ``slides_dir`` (default: the CSV's folder). Every slide not found is listed in one error."""
    from napari_hila.survival.cohort_csv import read_cohort

    cohort = read_cohort(csv_path)
    folder = Path(slides_dir) if slides_dir else Path(csv_path).parent
    items, missing = [], []
    for row in cohort.rows:
        path = _slide_file(folder, row.slide_id)
        if path is None:
            missing.append(f"line {row.line}: {row.slide_id!r}")
            continue
        items.append(
            PredictionItem(_slide_id(path), path, row.patient_id, float(row.time), int(row.event))
        )
    if missing:
        shown = "; ".join(missing[:10]) + (
            f"; and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise CohortError(
            f"{csv_path}: {len(missing)} slides have no slide or feature file in {folder} "
            f"({shown}); give the folder that holds them with --slides DIR"
        )
    return items


def _input_record(item: PredictionItem, model_path: Path, mpp: float | None) -> dict[str, Any]:
    stat = item.path.stat()
    card = model_path / "card.json"
    return {
        "source": str(item.path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "model": str(model_path.resolve()),
        "model_card": hashlib.sha1(card.read_bytes()).hexdigest() if card.exists() else "",
        "mpp": mpp,
    }


def _cached_result(folder: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    try:
        if json.loads((folder / INPUT_RECORD).read_text()) != record:
            return None
        return json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_tables(out_dir: Path, items, results, rows, with_outcomes: bool) -> tuple[Path, Path]:
    summary = _write_csv(
        out_dir / "summary.csv",
        ["slide", "status", "patches", "seconds", "error"],
        [[r["slide"], r["status"], r["patches"], r["seconds"], r["error"]] for r in rows],
    )
    header = ["slide", "risk", "group", "percentile"]
    if with_outcomes:
        header += ["patient_id", "time", "event"]
    lines = []
    for item in items:
        if item.slide_id not in results:
            continue
        info = results[item.slide_id]
        pct = info.get("risk_percentile")
        line = [item.slide_id, repr(float(info["risk"])), info.get("risk_group") or ""]
        line.append("" if pct is None else pct)
        if with_outcomes:
            line += [item.patient_id, item.time, item.event]
        lines.append(line)
    return _write_csv(out_dir / "predictions.csv", header, lines), summary


def _outcome_metrics(items, results) -> dict[str, Any] | None:
    import numpy as np

    from napari_hila.survival.metrics import concordance_index

    by_patient: dict[str, list[float]] = {}
    outcome: dict[str, tuple[float, int]] = {}
    for item in items:
        if item.slide_id in results and item.patient_id is not None:
            by_patient.setdefault(item.patient_id, []).append(float(results[item.slide_id]["risk"]))
            outcome[item.patient_id] = (float(item.time), int(item.event))
    patients = sorted(by_patient)
    if not patients:
        return None
    times = np.array([outcome[p][0] for p in patients])
    events = np.array([outcome[p][1] for p in patients])
    risks = np.array([np.mean(by_patient[p]) for p in patients])
    metrics: dict[str, Any] = {
        "n_patients": len(patients),
        "n_events": int(events.sum()),
        "n_slides": sum(len(v) for v in by_patient.values()),
        "patient_risk": "the mean of the risks of the patient's slides",
    }
    try:
        metrics["c_index"] = concordance_index(times, events, risks)
    except (ValueError, HilaError) as err:  # no comparable pair (e.g. no events)
        metrics["c_index"] = None
        metrics["c_index_note"] = str(err)
    return metrics


def predict_item(
    item: PredictionItem,
    loaded,
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    mpp: float | None = None,
    cancel: threading.Event | None = None,
    weights: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Predict one item into ``out_dir/<slide id>/`` (or find it done); never raises but
    :class:`Cancelled`. Returns its summary row and its result's summary (None if failed).
    ``weights``: the patch encoder's local weights, as for :func:`predict_slide`."""
    folder = Path(out_dir) / item.slide_id
    row = {"slide": item.slide_id, "status": "failed", "patches": 0, "seconds": 0.0, "error": ""}
    started = time.perf_counter()
    summary = None
    try:
        record = _input_record(item, Path(loaded.path), mpp)
        summary = _cached_result(folder, record)
        if summary is not None:
            row["status"] = "cached"
        else:
            from_features = item.path.suffix.lower() in FEATURE_SUFFIXES
            if from_features:
                result = predict_features(item.path, loaded, device, cancel=cancel)
            else:
                result = predict_slide(
                    item.path, loaded, cache_dir, device, cancel=cancel, mpp=mpp, weights=weights
                )
            write_prediction_folder(
                result, folder, loaded.card, read_slide=not from_features, cancel=cancel
            )
            write_json_atomic(folder / INPUT_RECORD, record)
            summary = result.summary()
            row["status"] = "done"
        row["patches"] = summary.get("extra", {}).get("patches", "")
    except Cancelled:
        raise
    except Exception as err:  # one bad slide must not stop the others
        summary = None
        row["error"] = (
            str(err) if isinstance(err, HilaError) else f"{item.path}: {type(err).__name__}: {err}"
        )
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row, summary


_WORKER_MODELS: dict[tuple[str, str], Any] = {}


def _predict_on_worker(
    item, model_path: str, out_dir, cache_dir, device, mpp, threads: int, weights=None
):
    """A cluster task: the model is loaded once per worker process, then as locally."""
    from napari_hila.devices import configure_torch_threads
    from napari_hila.modelfile import load_model

    configure_torch_threads(threads)
    key = (model_path, device)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = load_model(model_path, device)
    return predict_item(item, _WORKER_MODELS[key], out_dir, cache_dir, device, mpp, weights=weights)


def _rows_on_cluster(items, loaded, out_dir, cache_dir, device, mpp, client, threads, weights):
    """(row, summary) per item in input order, one task each; Ctrl-C cancels the rest."""
    from distributed import as_completed

    futures = {
        client.submit(
            _predict_on_worker,
            item,
            str(Path(loaded.path).resolve()),
            str(Path(out_dir).resolve()),
            None if cache_dir is None else str(Path(cache_dir).resolve()),
            device,
            mpp,
            threads,
            None if weights is None else str(Path(weights).resolve()),
            pure=False,
        ): i
        for i, item in enumerate(items)
    }
    try:
        for future in as_completed(list(futures)):
            i = futures[future]
            try:
                yield i, future.result()
            except Exception as err:  # the worker itself died
                row = {"slide": items[i].slide_id, "status": "failed", "patches": 0}
                row.update(seconds=0.0, error=f"worker failed: {type(err).__name__}: {err}")
                yield i, (row, None)
    except KeyboardInterrupt:
        pending = [f for f in futures if not f.done()]
        client.cancel(pending, force=True)
        print(
            f"interrupted: cancelled {len(pending)} unfinished slide tasks on the cluster",
            file=sys.stderr,
        )
        raise


def predict_many(
    items: list[PredictionItem],
    model,
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    mpp: float | None = None,
    cancel: threading.Event | None = None,
    log: Callable[[str], None] | None = None,
    client=None,
    threads: int = 1,
    weights: str | os.PathLike | None = None,
) -> ManyPrediction:
    """Predict every item into ``out_dir/<slide id>/``; write the tables after each one.

    With a ``distributed.Client`` each slide is one task on the cluster (the
    same :func:`predict_item`, so the files are the same); ``threads`` is the
    torch thread count of each task. ``weights``: the patch encoder's local weights
    (``predict --weights``; default: the encoders config), for every slide.
    """
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = _load_model(model, device, lambda stage, fraction: None, cancel)
    with_outcomes = any(item.time is not None for item in items)
    if client is None:
        outcomes = (
            (i, predict_item(item, loaded, out_dir, cache_dir, device, mpp, cancel, weights))
            for i, item in enumerate(items)
        )
    else:
        outcomes = _rows_on_cluster(
            items, loaded, out_dir, cache_dir, device, mpp, client, threads, weights
        )
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    rows: list[dict[str, Any] | None] = [None] * len(items)
    cached: list[str] = []
    for done, (i, (row, summary)) in enumerate(outcomes, 1):
        item = items[i]
        rows[i] = row
        if summary is None:
            failures[str(item.path)] = row["error"]
            say(f"[{done}/{len(items)}] {item.slide_id}: failed: {row['error']}")
        else:
            results[item.slide_id] = summary
            if row["status"] == "cached":
                cached.append(item.slide_id)
            note = " (already done)" if row["status"] == "cached" else ""
            say(
                f"[{done}/{len(items)}] {item.slide_id}: risk {float(summary['risk']):.4f} "
                f"({summary.get('risk_group') or 'n/a'}){note}"
            )
        _write_tables(out_dir, items, results, [r for r in rows if r], with_outcomes)
        if cancel is not None and cancel.is_set() and done < len(items):
            raise Cancelled(f"prediction cancelled after {done} of {len(items)} slides")
    table, summary_csv = _write_tables(
        out_dir, items, results, [r for r in rows if r], with_outcomes
    )
    metrics = _outcome_metrics(items, results) if with_outcomes else None
    if metrics is not None:
        write_json_atomic(out_dir / "metrics.json", metrics)
    return ManyPrediction(
        results, failures, [r for r in rows if r], table, summary_csv, metrics, cached
    )


def predict_folder(
    folder: str | os.PathLike,
    model,
    out_dir: str | os.PathLike,
    device: str = "auto",
    cancel: threading.Event | None = None,
    log: Callable[[str], None] | None = None,
) -> ManyPrediction:
    """Predict every slide and feature file of ``folder`` into ``out_dir/<slide id>/``.

    The model is loaded once; a file that cannot be used is a failed row and the
    others go on; see :func:`predict_many` (tables, resume).
    """
    items = items_in_folder(folder, log)
    if not items:
        raise FeatureFileError(
            f"{folder}: no slides or feature files ({', '.join(FEATURE_SUFFIXES)}) here; give "
            "a folder of slides, or run `napari-hila extract SLIDES --out DIR` and give DIR"
        )
    return predict_many(items, model, out_dir, device=device, cancel=cancel, log=log)
