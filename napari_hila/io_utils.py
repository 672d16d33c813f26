"""Atomic file writes: a reader sees the old file or the new one, never half.

Also the one translation of a failed write (disk full, read-only, no
permission) into a message naming the folder and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The root of napari-hila's caches (``features/``, ``overviews/`` inside); see :func:`cache_folder`.
CACHE_ENV = "NAPARI_HILA_CACHE"


def cache_folder(kind: str) -> Path:
    """napari-hila's cache folder for ``kind`` ("features", "overviews"): ``<root>/<kind>``.

    The root is ``$NAPARI_HILA_CACHE``, else ``$XDG_CACHE_HOME/napari-hila``, else
    ``~/.cache/napari-hila``: one variable, one meaning, every cache beneath it.
    """
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-hila"
    return root / kind


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    The temporary name keeps the target's suffix so libraries that dispatch on
    it (h5py, PIL, matplotlib) still do the right thing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.",
        suffix=suffix if suffix is not None else target.suffix,
        dir=target.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the file the mode a plain open() would
        # (feature caches and exports are often shared within a lab).
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if err.filename is None:  # a failed flush or close names no file: name the target
            raise OSError(err.errno, err.strerror, str(target)) from err
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(target: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(target)


# errno -> (what happened, what to do)
_WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", "free disk space or choose another folder"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or choose another folder"),
    errno.EFBIG: ("the file size limit was reached", "choose another folder"),
    errno.EROFS: ("the folder is on a read-only file system", "choose a writable folder"),
    errno.EACCES: ("no permission to write there", "choose a folder you can write to"),
    errno.EPERM: ("no permission to write there", "choose a folder you can write to"),
}


def is_write_failure(err: BaseException) -> bool:
    """True for the OSErrors a full, read-only or forbidden folder gives."""
    return isinstance(err, OSError) and err.errno in _WRITE_FAILURES


def write_failure(folder: str | os.PathLike | None, err: OSError, what: str = "files"):
    """One HilaError for a failed write of ``what`` into ``folder`` (the caller raises it)."""
    from napari_hila.errors import HilaError

    reason, fix = _WRITE_FAILURES.get(
        err.errno, (err.strerror or str(err), "choose another folder")
    )
    where = f"{folder}: " if folder is not None else ""
    return HilaError(f"{where}cannot write {what} ({reason}); {fix}")


def check_free_space(folder: str | os.PathLike, nbytes: int, what: str = "files") -> None:
    """Refuse a write of about ``nbytes`` that cannot fit in ``folder`` (5% + 1 MB margin)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < nbytes * 1.05 + 2**20:
        from napari_hila.errors import HilaError

        raise HilaError(
            f"{folder}: not enough disk space for {what} ({nbytes / 2**20:.1f} MB needed, "
            f"{free / 2**20:.1f} MB free); free disk space or choose another folder"
        )


OUTPUTS_MANIFEST = ".napari-hila-outputs.json"


def check_writable_folder(folder: str | os.PathLike, what: str = "outputs") -> Path:
    """Create ``folder`` and prove it can be written, before any work is done for it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise write_failure(folder, err, what) from err
    return folder


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike, stale: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``folder``; on success its files replace ours.

    A run's outputs appear together or not at all: on any exception the staging
    folder is removed and ``folder`` is untouched. On success the files an
    earlier run recorded in ``folder``'s manifest (and names matching ``stale``,
    for folders written before manifests) are removed first, so no output of
    another model is left beside the new ones; files we did not write stay.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    except OSError as err:
        raise write_failure(folder.parent, err, f"a staging folder for {folder.name}") from err
    try:
        yield staging
        manifest = folder / OUTPUTS_MANIFEST
        earlier: list[str] = []
        with contextlib.suppress(OSError, ValueError):
            earlier = list(json.loads(manifest.read_text()).get("files", []))
        for pattern in stale:
            earlier.extend(p.name for p in folder.glob(pattern))
        for name in set(earlier):
            if Path(name).name == name:  # never a path outside the folder
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
        written = sorted(p.name for p in staging.iterdir())
        for name in written:
            os.replace(staging / name, folder / name)
        write_json_atomic(manifest, {"files": written})
    except OSError as err:
        if is_write_failure(err):  # name the folder the user gave, not the staging one
            raise write_failure(folder, err, "the outputs") from err
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
