"""The cohort CSV: which slides belong to which patient, and their survival.

Columns: ``patient_id, slide_id, time, event`` (event 1 = death observed,
0 = censored) and optionally ``fold`` (an integer, to impose splits). A patient
may have several slides (one row each, same time and event). Every bad row is
collected and reported in one :class:`CohortError` with its line number, so a
user fixes the file once instead of once per row, before any training starts.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_hila.errors import CohortError
from napari_hila.features.cache import extracted_files_of

__all__ = ["CohortRow", "Cohort", "read_cohort", "feature_file_for", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("patient_id", "slide_id", "time", "event")
_MAX_REPORTED = 50


@dataclass(frozen=True)
class CohortRow:
    """One slide of one patient, with the CSV line it came from."""

    line: int
    patient_id: str
    slide_id: str
    time: float
    event: int
    fold: int | None = None


@dataclass
class Cohort:
    """Validated cohort rows plus per-patient views (patients in order of first row)."""

    path: Path
    rows: list[CohortRow]
    time_unit: str = "months"

    @property
    def patient_ids(self) -> list[str]:
        return list(dict.fromkeys(r.patient_id for r in self.rows))

    def _first_rows(self) -> list[CohortRow]:
        first: dict[str, CohortRow] = {}
        for row in self.rows:
            first.setdefault(row.patient_id, row)
        return list(first.values())

    @property
    def patient_times(self) -> np.ndarray:
        return np.array([r.time for r in self._first_rows()], float)

    @property
    def patient_events(self) -> np.ndarray:
        return np.array([r.event for r in self._first_rows()], int)

    @property
    def patient_folds(self) -> list[int | None]:
        return [r.fold for r in self._first_rows()]


def feature_file_for(features_dir: str | os.PathLike, slide_id: str) -> Path:
    """The feature file of ``slide_id`` in ``features_dir``.

    Looks for ``<slide_id>.h5``, then ``<stem>.h5`` for ids given with a file
    extension (``TCGA-XX.svs``), then the name ``napari-hila extract`` writes,
    ``<stem>-<fingerprint>-<encoder>.h5``. Several of the latter (two encoders
    in one folder) are ambiguous: :class:`CohortError` names them.
    """
    folder = Path(features_dir)
    if slide_id.endswith(".h5"):
        return folder / slide_id
    direct = folder / f"{slide_id}.h5"
    if direct.exists():
        return direct
    stem = Path(slide_id).stem.removesuffix(".ome") if Path(slide_id).suffix else slide_id
    if (folder / f"{stem}.h5").exists():
        return folder / f"{stem}.h5"
    found = extracted_files_of(folder, stem)
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise CohortError(
            f"slide {slide_id!r} has {len(found)} feature files in {folder} ({names}); "
            "keep the files of one encoder and grid per folder"
        )
    return found[0] if found else direct


def _parse_row(values: dict[str, str], has_fold: bool) -> tuple[dict, list[str]]:
    problems = []
    pid = (values.get("patient_id") or "").strip()
    sid = (values.get("slide_id") or "").strip()
    if not pid:
        problems.append("empty patient_id")
    if not sid:
        problems.append("empty slide_id")
    raw_time = (values.get("time") or "").strip()
    time = float("nan")
    try:
        time = float(raw_time)
    except ValueError:
        problems.append(f"time {raw_time!r} is not a number")
    else:
        if math.isnan(time) or math.isinf(time):
            problems.append(f"time {raw_time!r} is missing or not finite")
        elif time < 0:
            problems.append(f"time {raw_time} is negative")
    raw_event = (values.get("event") or "").strip()
    event = -1
    if raw_event in ("0", "1", "0.0", "1.0"):
        event = int(float(raw_event))
    else:
        problems.append(f"event {raw_event!r} is not 0 (censored) or 1 (death observed)")
    fold = None
    if has_fold:
        raw_fold = (values.get("fold") or "").strip()
        if not raw_fold:
            problems.append(
                "fold is empty; with a fold column every row needs one (or drop the column)"
            )
        else:
            try:
                fold = int(raw_fold)
                if fold < 0:
                    raise ValueError
            except ValueError:
                problems.append(f"fold {raw_fold!r} is not a non-negative integer")
    return {
        "patient_id": pid,
        "slide_id": sid,
        "time": time,
        "event": event,
        "fold": fold,
    }, problems


def _read_utf8(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is a CohortError with its line and offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise CohortError(
            f"{path}: line {line}: byte 0x{data[err.start]:02X} (offset {err.start}, column "
            f"{column}) is not UTF-8; save the file as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)"
        ) from None


def _header(reader, path: Path) -> list[str]:
    """The header row, checked for the required columns."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CohortError(
            f"{path}: the file is empty; it needs a header {', '.join(REQUIRED_COLUMNS)}"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CohortError(
            f"{path}: line 1: missing column(s) {', '.join(missing)}; the header must contain "
            f"{', '.join(REQUIRED_COLUMNS)} (optional: fold). Found: {', '.join(header) or 'nothing'}"
        )
    return header


class _AcrossRows:
    """What one row is checked against from the rows before it: slides listed once, and
    one time, event and fold per patient."""

    def __init__(self) -> None:
        self.slide_line: dict[str, int] = {}
        self.outcome: dict[str, tuple[int, float, int, int | None]] = {}

    def problems(self, parsed: dict, line: int, row_is_valid: bool) -> list[str]:
        problems = []
        sid, pid = parsed["slide_id"], parsed["patient_id"]
        if sid and sid in self.slide_line:
            problems.append(f"slide {sid!r} already listed on line {self.slide_line[sid]}")
        elif sid:
            self.slide_line[sid] = line
        if not (row_is_valid and not problems):
            return problems
        if pid not in self.outcome:
            self.outcome[pid] = (line, parsed["time"], parsed["event"], parsed["fold"])
            return problems
        first_line, t, e, f = self.outcome[pid]
        if (t, e) != (parsed["time"], parsed["event"]):
            problems.append(
                f"patient {pid!r} has time/event {parsed['time']:g}/{parsed['event']} here "
                f"but {t:g}/{e} on line {first_line}"
            )
        if f != parsed["fold"]:
            problems.append(
                f"patient {pid!r} has fold {parsed['fold']} here but {f} on line {first_line}"
            )
        return problems


def _feature_file_problems(features_dir: str | os.PathLike, slide_id: str) -> list[str]:
    try:
        feature_path = feature_file_for(features_dir, slide_id)
    except CohortError as err:
        return [str(err)]
    if not feature_path.exists():
        return [f"no feature file {feature_path} for slide {slide_id!r}"]
    return []


def _report(path: Path, errors: list[str], features_dir) -> CohortError:
    """One error listing the first :data:`_MAX_REPORTED` bad rows and how many more."""
    shown = errors[:_MAX_REPORTED]
    more = f"\n  ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
    hint = " (run `napari-hila extract` for slides without features)" if features_dir else ""
    return CohortError(
        f"{path}: {len(errors)} bad row(s); fix them and run again{hint}:\n  "
        + "\n  ".join(shown)
        + more
    )


def read_cohort(
    csv_path: str | os.PathLike,
    features_dir: str | os.PathLike | None = None,
    time_unit: str = "months",
) -> Cohort:
    """Read and validate a cohort CSV; raise :class:`CohortError` listing every bad row.

    With ``features_dir``, also checks that every slide has a feature file.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise CohortError(f"{path}: cohort CSV not found; give the path of an existing file")
    with io.StringIO(_read_utf8(path), newline="") as fh:
        reader = csv.reader(fh)
        header = _header(reader, path)
        has_fold = "fold" in header
        errors: list[str] = []
        rows: list[CohortRow] = []
        across = _AcrossRows()
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                errors.append(f"line {line}: {len(values)} fields, the header has {len(header)}")
                continue
            parsed, problems = _parse_row(dict(zip(header, values, strict=True)), has_fold)
            problems += across.problems(parsed, line, row_is_valid=not problems)
            if features_dir is not None and parsed["slide_id"]:
                problems += _feature_file_problems(features_dir, parsed["slide_id"])
            if problems:
                errors.append(f"line {line}: " + "; ".join(problems))
            else:
                rows.append(CohortRow(line=line, **parsed))
    if not errors and not rows:
        errors.append("no data rows after the header")
    if errors:
        raise _report(path, errors, features_dir)
    return Cohort(path=path, rows=rows, time_unit=time_unit)
