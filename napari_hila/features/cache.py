"""Where extracted features live, how runs on one slide exclude each other, and resume.

A slide's features are cached as ``<stem>-<fingerprint[:12]>-<encoder>.h5`` in
the output folder (plus ``-<settings hash>`` when the grid or region encoder
differs from the defaults), so different settings never collide. The
fingerprint is of the slide's content: a moved slide hits its file, and a
renamed copy reuses the original's file (linked under its own name, which is
how cohort files find it). A complete file is read without a lock or a write,
so a read-only shared cache works. Only when something must be written does a
``.lock`` file beside it serialise processes that extract the same slide;
hidden ``.partial.f32``/``.partial.json`` files hold the patch features done so
far, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from napari_hila.errors import FeatureFileError
from napari_hila.io_utils import atomic_path, write_failure, write_json_atomic
from napari_hila.slides.grids import PATCH_PX, REGION_PX, TARGET_MPP

DEFAULT_SETTINGS = {
    "patch_px": PATCH_PX,
    "region_px": REGION_PX,
    "target_mpp": TARGET_MPP,
    "region_encoder": None,
    "region_mode": "view",
    "magnifications": None,
    "mpp": None,  # the slide's own (or assumed) pixel size; a user's value gets its own file
    "weights": None,  # weight-free encoders; other weights' digests get their own file
    "region_weights": None,  # likewise for a separate region encoder
}
LOCK_TIMEOUT_S = 6 * 3600.0  # another process may be extracting a very large slide


#: Characters of the slide's content fingerprint a feature file's name carries.
FINGERPRINT_CHARS = 12


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def _fingerprint_mark(fingerprint: str) -> str:
    return f"-{fingerprint[:FINGERPRINT_CHARS]}-"


# The one place the name ``<stem>-<fingerprint[:12]>-<encoder>[-<settings hash>].h5`` is
# written (cache_path) and read back (cached_copies, extracted_files_of, slide_stem_of).


def settings_key(settings: dict) -> str:
    """A short stable hash of the settings that change what is extracted."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def cache_path(
    out_dir: str | os.PathLike, slide_stem: str, fingerprint: str, encoder: str, settings: dict
) -> Path:
    """The feature file for one slide, encoder and set of settings."""
    name = f"{_safe(slide_stem)}{_fingerprint_mark(fingerprint)}{_safe(encoder)}"
    non_default = {k: v for k, v in settings.items() if DEFAULT_SETTINGS.get(k, "?") != v}
    if non_default:
        name += f"-{settings_key(non_default)}"
    return Path(out_dir) / f"{name}.h5"


@contextlib.contextmanager
def slide_lock(target: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock for ``target`` (other processes wait, then see the result)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock", timeout=timeout)
    try:
        with lock:
            yield
    except Timeout as err:
        raise FeatureFileError(
            f"{target}: another process has been extracting this slide for over "
            f"{timeout / 3600:.1f} h; if it died, delete {target}.lock and retry"
        ) from err


def cached_copies(target: Path, fingerprint: str) -> Iterator[Path]:
    """``target``, then (searched only when asked for) the feature files beside it of
    renamed copies of the slide: same content fingerprint, encoder and settings,
    another file stem."""
    yield target
    marker = _fingerprint_mark(fingerprint)
    if marker in target.name:
        rest = target.name.split(marker, 1)[1]
        yield from sorted(p for p in target.parent.glob(f"*{marker}{rest}") if p != target)


def extracted_files_of(folder: str | os.PathLike, slide_stem: str) -> list[Path]:
    """The feature files :func:`cache_path` names for ``slide_stem`` in ``folder`` (any encoder)."""
    folder, safe = Path(folder), _safe(slide_stem)
    pattern = re.compile(rf"{re.escape(safe)}-[0-9a-f]{{{FINGERPRINT_CHARS}}}-.+\.h5")
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{safe}-*.h5") if pattern.fullmatch(p.name))


def slide_stem_of(file_stem: str, fingerprint: str) -> str:
    """The slide's stem in a feature file's stem: what precedes the fingerprint :func:`cache_path`
    put there, when the file's recorded ``fingerprint`` confirms it; else ``file_stem``."""
    mark = _fingerprint_mark(fingerprint)
    if len(fingerprint) >= FINGERPRINT_CHARS and mark in file_stem:
        return file_stem[: file_stem.rindex(mark)]
    return file_stem


def adopt_cached(found: Path, target: Path) -> Path:
    """Give a renamed copy's feature file the slide's own name (a hard link, else a
    copy) so cohort lookups by file stem find it; in a folder that cannot be
    written, the file as found."""
    if found == target:
        return target
    try:
        os.link(found, target)
    except FileExistsError:
        return target
    except OSError:
        try:
            with atomic_path(target) as tmp:
                shutil.copyfile(found, tmp)
        except OSError:
            return found
    return target


def partial_path(target: Path) -> Path:
    """The raw float32 rows of an unfinished extraction (``partial_header`` describes them)."""
    return target.with_name(f".{target.stem}.partial.f32")


def partial_header(target: Path) -> Path:
    return target.with_name(f".{target.stem}.partial.json")


class PartialFeatures:
    """Patch features written as they are computed, so a rerun can skip them.

    The rows go to a plain binary file whose whole size is reserved on disk up
    front (a full disk fails here, before any patch is encoded, instead of inside
    HDF5, whose close then crashes); a small JSON header records the settings
    key, the shape, a digest of the patch coordinates and how many rows are
    done. A rerun with a different grid or encoder starts over. Any write error
    removes both files and becomes one FeatureFileError naming the folder.
    """

    def __init__(self, target: Path, coords: np.ndarray, dim: int, key: str) -> None:
        self.target = target
        self.path = partial_path(target)
        self.header = partial_header(target)
        self.shape = (len(coords), int(dim))
        self.identity = {
            "key": key,
            "shape": list(self.shape),
            "coords": hashlib.sha1(np.ascontiguousarray(coords, np.int64).tobytes()).hexdigest(),
        }
        self.done = self._resumable_rows()
        self._file = None
        try:
            if self.done == 0:
                self.discard(target)
                self._file = open(self.path, "w+b")  # noqa: SIM115 (closed by close())
                nbytes = self.shape[0] * self.shape[1] * 4
                if nbytes and hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(self._file.fileno(), 0, nbytes)
                else:
                    self._file.truncate(nbytes)
                self._write_header(0)
            else:
                self._file = open(self.path, "r+b")  # noqa: SIM115 (closed by close())
        except OSError as err:
            self._fail(err)

    def _resumable_rows(self) -> int:
        try:
            saved = json.loads(self.header.read_text())
            size = self.path.stat().st_size
        except (OSError, ValueError):
            return 0  # none, or torn by a crash: start again
        same = {k: saved.get(k) for k in self.identity} == self.identity
        if not same or size != self.shape[0] * self.shape[1] * 4:
            return 0
        return int(saved.get("done", 0))

    def _write_header(self, done: int) -> None:
        write_json_atomic(self.header, {**self.identity, "done": int(done)})

    def _fail(self, err: OSError) -> None:
        self.close()
        self.discard(self.target)
        raise write_failure(self.target.parent, err, "the unfinished patch features") from err

    def read_done(self) -> np.ndarray:
        self._file.seek(0)
        count = self.done * self.shape[1]
        rows = np.fromfile(self._file, dtype="<f4", count=count)
        return rows.reshape(self.done, self.shape[1]).astype(np.float32, copy=False)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Store rows [start, start + len(rows)); they count as done once checkpointed."""
        data = np.ascontiguousarray(rows, dtype="<f4")
        try:
            self._file.seek(start * self.shape[1] * 4)
            self._file.write(data.tobytes())
        except OSError as err:
            self._fail(err)

    def checkpoint(self, done: int) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._write_header(done)
        except OSError as err:
            self._fail(err)
        self.done = int(done)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    @staticmethod
    def discard(target: Path) -> None:
        """Delete the partial files of ``target`` (after the final file is saved, or on failure)."""
        for path in (partial_path(target), partial_header(target)):
            path.unlink(missing_ok=True)
        # the HDF5 partial file of earlier versions
        target.with_name(f".{target.stem}.partial.h5").unlink(missing_ok=True)
