"""On-disk cache of the computed overview of slides without a pyramid.

A flat slide's coarsest computed level needs every tile decoded once (seconds
for a 50,000 px slide); it is small (at most 2048 px a side), so it is kept as
a ``.npy`` file keyed by the slide's fingerprint and the way it was computed,
and a second open reads it at once. The folder sits beside the feature cache:
``overviews/`` in napari-hila's cache root (``$NAPARI_HILA_CACHE/overviews``, else
``~/.cache/napari-hila/overviews``);
``NAPARI_HILA_OVERVIEW_CACHE`` names another folder, or ``off`` disables it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from napari_hila.io_utils import atomic_path, cache_folder

logger = logging.getLogger(__name__)
#: Bumped when the way overviews are computed changes, so old files are not read.
CACHE_VERSION = 1


def overview_cache_dir() -> Path | None:
    """The folder overviews are kept in, or None when caching is off."""
    setting = os.environ.get("NAPARI_HILA_OVERVIEW_CACHE", "").strip()
    if setting.lower() in ("off", "0", "no", "false"):
        return None
    if setting:
        return Path(setting).expanduser()
    return cache_folder("overviews")


def overview_key(fingerprint: str, index: int, shape: tuple[int, ...], method: str) -> str:
    """File name of one overview: what it is of and how it was computed."""
    return f"{fingerprint}-level{index}-{shape[1]}x{shape[0]}-{method}-v{CACHE_VERSION}.npy"


def load_overview(key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached overview, or None if absent, unreadable or not of ``shape`` uint8."""
    folder = overview_cache_dir()
    if folder is None or not (folder / key).is_file():
        return None
    try:
        image = np.load(folder / key, allow_pickle=False)
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable cached overview (%s); computing it again", key, err)
        return None
    if image.shape != tuple(shape) or image.dtype != np.uint8:
        return None
    return image


def save_overview(key: str, image: np.ndarray) -> None:
    """Keep ``image`` for the next open; a cache that cannot be written is only logged."""
    folder = overview_cache_dir()
    if folder is None:
        return
    try:
        with atomic_path(folder / key) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(image), allow_pickle=False)
    except OSError as err:  # atomic_path left no partial file
        logger.warning("%s: cannot cache the overview (%s)", folder, err)
