"""Where extracted features live, how runs on one slide exclude each other, and resume.

A slide's features are cached as ``<stem>-<fingerprint[:12]>-<encoder>.h5`` in
the output folder (plus ``-<settings hash>`` when the grid or region encoder
differs from the defaults), so a renamed or moved slide still hits its cache
and different settings never collide. A lock file beside it serialises
processes that extract the same slide; a hidden ``.partial.h5`` file holds the
patch features done so far, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from filelock import FileLock, Timeout

from napari_hila.errors import FeatureFileError

DEFAULT_SETTINGS = {
    "patch_px": 256,
    "region_px": 4096,
    "target_mpp": 0.5,
    "region_encoder": None,
    "region_mode": "view",
    "magnifications": None,
    "mpp": None,  # the slide's own (or assumed) pixel size; a user's value gets its own file
}
LOCK_TIMEOUT_S = 6 * 3600.0  # another process may be extracting a very large slide


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def settings_key(settings: dict) -> str:
    """A short stable hash of the settings that change what is extracted."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def cache_path(
    out_dir: str | os.PathLike, slide_stem: str, fingerprint: str, encoder: str, settings: dict
) -> Path:
    """The feature file for one slide, encoder and set of settings."""
    name = f"{_safe(slide_stem)}-{fingerprint[:12]}-{_safe(encoder)}"
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


def partial_path(target: Path) -> Path:
    return target.with_name(f".{target.stem}.partial.h5")


class PartialFeatures:
    """Patch features written as they are computed, so a rerun can skip them.

    The file records the patch coordinates and a settings key; a rerun with a
    different grid or encoder starts over. ``done`` rows are valid.
    """

    def __init__(self, target: Path, coords: np.ndarray, dim: int, key: str) -> None:
        self.path = partial_path(target)
        self.done = 0
        self._h5: h5py.File | None = None
        if self.path.exists():
            self.done = self._reopen(coords, dim, key)
        if self._h5 is None:
            self.path.unlink(missing_ok=True)
            self._h5 = h5py.File(self.path, "w")
            self._h5.create_dataset("coords", data=np.asarray(coords, np.int64))
            self._h5.create_dataset("features", shape=(len(coords), dim), dtype=np.float32)
            self._h5.attrs["key"] = key
            self._h5.attrs["done"] = 0
            self._h5.flush()

    def _reopen(self, coords: np.ndarray, dim: int, key: str) -> int:
        try:
            h5 = h5py.File(self.path, "r+")
        except OSError:
            return 0  # torn by a crash: start again
        ok = (
            h5.attrs.get("key") == key
            and h5["features"].shape == (len(coords), dim)
            and np.array_equal(h5["coords"][()], coords)
        )
        if not ok:
            h5.close()
            return 0
        self._h5 = h5
        return int(h5.attrs["done"])

    def read_done(self) -> np.ndarray:
        return np.asarray(self._h5["features"][: self.done], np.float32)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Store rows [start, start + len(rows)); they count as done once flushed."""
        self._h5["features"][start : start + len(rows)] = rows

    def checkpoint(self, done: int) -> None:
        self._h5.attrs["done"] = int(done)
        self._h5.flush()
        self.done = int(done)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    @staticmethod
    def discard(target: Path) -> None:
        """Delete the partial file of ``target`` (after the final file is saved)."""
        partial_path(target).unlink(missing_ok=True)
