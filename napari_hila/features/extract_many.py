"""Cohort-scale extraction: many slides, locally or on a Dask cluster.

Each slide is one job that never raises: it returns a summary row (status
"done", "cached" or "failed" with the message), so one bad slide does not stop
the others. On a cluster every slide is one task running the same
:func:`extract_slide` as a local run, so the files are identical.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py

from napari_hila.errors import HilaError, SlideError
from napari_hila.features.extract import Progress, extract_slide
from napari_hila.features.qc import write_qc_thumbnail
from napari_hila.io_utils import atomic_path
from napari_hila.slides import SLIDE_SUFFIXES
from napari_hila.slides.dicom import one_per_dicom_series

# distributed is optional (the cluster extra): imported only for a cluster run.

Row = dict[str, Any]


def find_slides(
    inputs: Iterable[str | os.PathLike], recursive: bool = False, pattern: str | None = None
) -> list[Path]:
    """Slide files named directly or found in named folders (and their sub-folders
    with ``recursive``), keeping only names matching the glob ``pattern`` if given.

    A named file is kept even when it does not exist or has an odd suffix, so
    it gets its own clear error row instead of vanishing silently.
    """

    def is_slide(p: Path) -> bool:
        name = p.name.lower()
        return (
            p.is_file()
            and not p.name.startswith(".")
            and any(name.endswith(s) for s in SLIDE_SUFFIXES)
            and (pattern is None or p.match(pattern))
        )

    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            found.extend(one_per_dicom_series(p for p in sorted(candidates) if is_slide(p)))
        else:
            found.append(path)
    seen, unique = set(), []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def write_summary_csv(path: str | os.PathLike, rows: Sequence[Row]) -> Path:
    """``summary.csv``: one row per slide (slide, status, patches, regions, seconds, file, error)."""
    columns = ("slide", "status", "patches", "regions", "seconds", "file", "error")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([r.get(c, "") for c in columns] for r in rows)
    return Path(path)


def extract_one(
    slide: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: dict,
    progress: Progress | None = None,
) -> Row:
    """Extract one slide and describe the outcome as a summary row (never raises).

    ``options`` are :func:`extract_slide`'s keyword arguments, plus ``qc_dir``:
    where to write the slide's QC thumbnail (``features.qc``), if anywhere.
    """
    t0 = time.perf_counter()
    stages: set[str] = set()

    def track(stage: str, fraction: float) -> None:
        stages.add(stage)
        if progress is not None:
            progress(stage, fraction)

    row: Row = {
        "slide": str(slide),
        "status": "failed",
        "patches": 0,
        "regions": 0,
        "seconds": 0.0,
        "file": "",
        "error": "",
    }
    try:
        if not Path(slide).exists():
            raise SlideError(f"{slide}: file not found; check the path")
        settings = dict(options)
        qc_dir = settings.pop("qc_dir", None)  # not an extraction setting: where QC PNGs go
        path = extract_slide(slide, out_dir, progress=track, **settings)
        if qc_dir:
            qc_png = Path(qc_dir) / f"{Path(path).stem}.png"
            row["qc"] = str(write_qc_thumbnail(slide, path, qc_png, mpp=settings.get("mpp")))
        with h5py.File(path, "r") as h5:
            row.update(
                patches=int(h5["features"].shape[0]), regions=int(h5["region_features"].shape[0])
            )
        row.update(status="cached" if "tissue" not in stages else "done", file=str(path))
    except HilaError as err:
        row["error"] = str(err)
    except Exception as err:  # a bug or an unreadable file: report it, keep going
        row["error"] = f"{slide}: {type(err).__name__}: {err}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def extract_many(
    slides: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: dict,
    on_row: Callable[[Row], None] | None = None,
    progress_for: Callable[[Path], Progress | None] | None = None,
) -> list[Row]:
    """Extract slides one after another in this process; rows in input order."""
    rows = []
    for slide in slides:
        progress = progress_for(Path(slide)) if progress_for else None
        row = extract_one(slide, out_dir, options, progress)
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def extract_on_cluster(
    slides: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: dict,
    client,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """One task per slide on a ``distributed.Client``; rows in input order.

    Slide and output paths must be visible to the workers (a shared disk).
    """
    out_dir = str(Path(out_dir).resolve())
    futures = {
        client.submit(extract_one, str(Path(s).resolve()), out_dir, options, pure=False): i
        for i, s in enumerate(slides)
    }
    rows: list[Row | None] = [None] * len(slides)
    try:
        _collect(futures, slides, rows, on_row)
    except KeyboardInterrupt:
        # the cluster would go on extracting for nobody: cancel what has not finished
        pending = [f for f in futures if not f.done()]
        client.cancel(pending, force=True)
        print(
            f"interrupted: cancelled {len(pending)} unfinished slide tasks on the cluster "
            f"({sum(r is not None for r in rows)} of {len(slides)} slides were done)",
            file=sys.stderr,
        )
        raise
    return [r for r in rows if r is not None]


def _collect(futures: dict, slides, rows: list, on_row) -> None:
    from distributed import as_completed

    for future in as_completed(list(futures)):
        i = futures[future]
        try:
            row = future.result()
        except Exception as err:  # the worker itself died
            row = {
                "slide": str(slides[i]),
                "status": "failed",
                "patches": 0,
                "regions": 0,
                "seconds": 0.0,
                "file": "",
                "error": f"worker failed: {type(err).__name__}: {err}",
            }
        rows[i] = row
        if on_row:
            on_row(row)


def format_summary(rows: Sequence[Row]) -> str:
    """A plain-text table: slide, status, patches, regions, seconds, file or error."""
    header = ("slide", "status", "patches", "regions", "seconds", "file / error")
    lines = [
        (
            Path(r["slide"]).name,
            r["status"],
            str(r["patches"]),
            str(r["regions"]),
            f"{r['seconds']:.1f}",
            r["file"] or r["error"],
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
        for i, h in enumerate(header[:-1])
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths), "-" * 12)]
    out += [fmt.format(*line) for line in lines]
    failed = sum(r["status"] == "failed" for r in rows)
    out.append(f"{len(rows) - failed} of {len(rows)} slides extracted, {failed} failed")
    return "\n".join(out)
