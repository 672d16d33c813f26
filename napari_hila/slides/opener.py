"""``open_slide``: the one way to open a slide, whatever its format.

Checks the file first (exists, is a file, is not empty, is what its name says,
is whole, holds 8-bit brightfield pixels) so every bad input gives one message
naming the file and the real cause. A TIFF's directories are read once; what
the check learns goes on to the backend. A plain pyramid of JPEG tiles (Aperio
SVS, or a tiled TIFF whose pages are its levels) is opened from that walk
alone (``walked_tiff.py``: within OpenSlide's open time), anything else
through one tifffile parse. Then picks the backend per file: tifffile
(tile-by-tile decoding) for Aperio and generic tiled TIFFs, where it reads
regions faster than OpenSlide (see ``napari-hila bench io``), and for TIFF
pyramids OpenSlide sees as one level (OME SubIFDs, unflagged pages); OpenSlide
for everything else it reads (vendor formats, DICOM, non-tiled layouts, and
TIFFs whose compression tifffile cannot decode).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import openslide

from napari_hila.errors import SlideError
from napari_hila.slides.base import MPP_RANGE, Slide, assumed_mpp_message
from napari_hila.slides.dicom import (
    DICOM_SUFFIXES,
    dicom_instances,
    dicom_problem,
    is_dicom_file,
    is_dicom_path,
)

if TYPE_CHECKING:
    from napari_hila.slides.tifffile_backend import OpenedTiff

BACKENDS = ("openslide", "tifffile")
#: TIFF extensions other programs use for any image: napari-hila's reader claims
#: these files in napari only when they look like a slide (tiled or pyramidal RGB).
GENERIC_TIFF_SUFFIXES = {".tif", ".tiff", ".btf"}
#: Extensions whose files must be TIFFs; a text file named .svs is caught early.
TIFF_SUFFIXES = GENERIC_TIFF_SUFFIXES | {".svs", ".ndpi", ".bif", ".scn", ".svslide", ".qptiff"}
#: Every extension napari-hila opens: the one list the opener, the napari reader
#: and napari.yaml's filename patterns use (a test keeps the manifest in step).
SLIDE_SUFFIXES = TIFF_SUFFIXES | DICOM_SUFFIXES | {".mrxs", ".vms", ".vmu"}
#: OpenSlide formats whose pyramid tifffile reads the same way; for these the
#: tifffile tile path is used first when every level is tiled RGB, because it
#: reads 256 px regions faster (``napari-hila bench io``). Vendor layouts that
#: need stitching (Ventana BIF overlaps, Leica SCN, Hamamatsu NDPI) stay with OpenSlide.
TIFFFILE_FIRST_FORMATS = {"aperio", "generic-tiff"}
#: Aperio's JPEG 2000 variants carry their own colour handling: left to OpenSlide.
_APERIO_JPEG2000 = {33003, 33005}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Every opened slide's warnings (``open_warnings``, an assumed pixel size) go here:
#: the command line prints them once (:func:`slide_warnings_printed`); napari's reader
#: shows them as notifications itself. Silent unless someone listens.
WARNINGS_LOG = logging.getLogger("napari_hila.slides.warnings")
WARNINGS_LOG.addHandler(logging.NullHandler())


def check_mpp(mpp: float | str, what: str = "mpp") -> float:
    """``mpp`` as a float, or SlideError when it is not a plausible pixel size in um/px."""
    low, high = MPP_RANGE
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise SlideError(
            f"{what} {mpp!r} is not a plausible pixel size: give microns per pixel at level 0 "
            f"between {low:g} and {high:g} (0.25 for 40x, 0.5 for 20x scans)"
        )
    return value


def is_tiff_file(path: Path) -> bool:
    """True when the file starts with a TIFF or BigTIFF header."""
    with open(path, "rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


def check_slide_path(path: str | os.PathLike) -> Path:
    """The slide file to open, or SlideError if it is missing, empty or a folder of no slide.

    A folder of DICOM instances (a DICOM WSI export) stands for its series:
    its largest instance is opened, and OpenSlide finds the others beside it.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SlideError(f"{path}: file not found; check the path and the spelling")
    if path.is_dir() and (instances := dicom_instances(path)):
        return instances[0]
    if path.is_dir():
        raise SlideError(
            f"{path}: is a folder, not a slide file; give the slide file itself "
            "(for MIRAX give the .mrxs file beside the folder)"
        )
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: the file is empty (0 bytes); copy or download it again")
    return path


def _describe_start(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    text = head.decode("utf-8", errors="replace")
    if all(c.isprintable() or c.isspace() for c in text):
        return f"it is a text file starting {text.strip()[:16]!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def open_slide(
    path: str | os.PathLike, backend: str | None = None, mpp: float | None = None
) -> Slide:
    """Open a whole-slide image read-only.

    ``backend`` forces ``"openslide"`` or ``"tifffile"``; by default the faster
    one that sees the whole pyramid is used. ``mpp`` (um/px at level 0)
    overrides the file's pixel size or supplies a missing one (``mpp_source``
    "user"); it must lie in ``MPP_RANGE``. Raises :class:`SlideError` naming
    the file and the fix for anything that cannot be read.
    """
    if mpp is not None:
        mpp = check_mpp(mpp, f"{Path(path)}: mpp")
    slide = _open(path, backend)
    # lengths, tile sizes and layer scales all follow slide.mpp; say where it came from
    slide.mpp_source = "assumed" if slide.mpp_is_assumed else "file"
    if mpp is not None:
        slide.mpp, slide.mpp_is_assumed, slide.mpp_source = mpp, False, "user"
        slide.mpp_note = "given by the user"
    for warning in slide.open_warnings:
        WARNINGS_LOG.warning(warning)
    assumed = assumed_mpp_message(slide, "give the scanner's value with --mpp")
    if assumed:
        WARNINGS_LOG.warning(assumed)
    return slide


class _OncePerMessage(logging.Handler):
    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.write = write
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.seen:
            self.seen.add(message)
            self.write(f"warning: {message}")


@contextlib.contextmanager
def slide_warnings_printed(write: Callable[[str], None] | None = None) -> Iterator[None]:
    """Inside the block (or the decorated command), each distinct slide warning is printed once.

    For the command line: a slide opened many times over a run (tissue,
    features, exports) says what is wrong with it once, as ``warning: ...``
    (default: a line on stderr; ``write`` e.g. ``tqdm.write`` beside progress bars).
    """
    import sys

    handler = _OncePerMessage(write or (lambda line: print(line, file=sys.stderr, flush=True)))
    WARNINGS_LOG.addHandler(handler)
    try:
        yield
    finally:
        WARNINGS_LOG.removeHandler(handler)


def _open(path: str | os.PathLike, backend: str | None) -> Slide:
    """The slide with the backend :func:`open_slide` picks, pixel size as the file says.

    A TIFF is parsed once: the opener's survey (completeness, levels, pixel
    layout) and the open TiffFile go on to the tifffile backend.
    """
    if backend is not None and backend not in BACKENDS:
        raise SlideError(f"unknown slide backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = check_slide_path(path)
    suffix = path.suffix.lower()
    is_tiff = is_tiff_file(path)
    if suffix in TIFF_SUFFIXES and not is_tiff:
        raise SlideError(
            f"{path}: not a {suffix} slide: {_describe_start(path)}, not a TIFF header; "
            "check that this is the slide file and that it was copied completely"
        )
    try:
        osr_format = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        osr_format = None
    if not is_tiff:
        if backend == "tifffile":
            raise SlideError(
                f"{path}: the tifffile backend reads TIFF files only; use backend='openslide'"
            )
        dicom = is_dicom_path(path) or is_dicom_file(path)
        try:
            if osr_format is None:
                what = "a DICOM file OpenSlide does not read" if dicom else _describe_start(path)
                raise SlideError(
                    f"{path}: unsupported slide format ({what}); napari-hila opens "
                    f"{', '.join(sorted(SLIDE_SUFFIXES))} files and folders of DICOM WSI instances"
                )
            return _probed(_openslide(path))
        except SlideError:
            # OpenSlide's reason for a DICOM file is often a missing attribute: say the real one
            problem = dicom_problem(path) if dicom else None
            if problem:
                raise SlideError(f"{path}: {problem}") from None
            raise
    from napari_hila.slides.tiff_checks import walk_directories
    from napari_hila.slides.tifffile_backend import TifffileSlide, open_tiff, walked_survey

    walk = walk_directories(path)
    if backend != "openslide":
        quick = walked_survey(path, walk, osr_format)  # a plain pyramid: the walk is enough
        if quick is not None:
            return _probed(TifffileSlide(path, *quick))
    opened = open_tiff(path, walk)
    try:
        return _open_tiff(path, opened, osr_format, backend)
    except BaseException:
        opened.close()
        raise


def _open_tiff(
    path: Path, opened: OpenedTiff, osr_format: str | None, backend: str | None
) -> Slide:
    """A TIFF-family slide: tifffile where it is faster or sees more, OpenSlide otherwise."""
    from napari_hila.slides.tifffile_backend import TifffileSlide, survey_tiff

    survey = survey_tiff(path, opened)
    # vendor layouts (NDPI, BIF, SCN) keep their main image where OpenSlide
    # knows to look; their pixels are OpenSlide's to judge
    layout = survey.layout
    judged_here = osr_format in (None, "generic-tiff") or backend == "tifffile"
    if judged_here and isinstance(layout, SlideError):
        raise layout
    if backend == "openslide" and survey.levels_lost:
        cut = next(
            (w for w in survey.warnings if "truncated" in w),
            f"{path}: the file is truncated inside its pyramid",
        )
        raise SlideError(
            f"{cut}. OpenSlide cannot read a cut pyramid: open it with the tifffile backend "
            "(the default), which reads its whole levels"
        )
    if backend == "openslide" and not isinstance(layout, SlideError) and layout.openslide_misreads:
        raise SlideError(
            f"{path}: OpenSlide misreads grey+alpha TIFFs (libtiff's RGBA reader returns "
            "wrong pixels); open it with the tifffile backend (the default)"
        )
    if backend == "tifffile" or (backend is None and osr_format is None):
        return _probed(TifffileSlide(path, opened, survey))
    if osr_format is None:  # backend == "openslide"
        raise SlideError(f"{path}: OpenSlide does not recognise this file's format")
    compressions = {s.keyframe.compression for s in survey.levels}
    tifffile_first = survey.levels_lost or (  # OpenSlide would read past the cut
        backend is None
        and osr_format in TIFFFILE_FIRST_FORMATS
        and survey.fast
        and not compressions & _APERIO_JPEG2000
    )
    if tifffile_first:
        return _probed(TifffileSlide(path, opened, survey))
    try:
        slide = _openslide(path, survey.warnings)
    except SlideError:
        if backend == "openslide" or survey.decode_problem:
            raise
        return _probed(TifffileSlide(path, opened, survey))  # e.g. old-style JPEG: tifffile only
    if backend == "openslide" or survey.decode_problem or slide.level_count >= len(survey.levels):
        opened.close()
        return _probed(slide)
    slide.close()  # tifffile sees levels OpenSlide misses (OME SubIFDs, unflagged pages)
    return _probed(TifffileSlide(path, opened, survey))


def _openslide(path: Path, warnings: Sequence[str] = ()) -> Slide:
    """An OpenSlide-backed slide carrying the warnings the TIFF checks found."""
    from napari_hila.slides.openslide_backend import OpenSlideSlide

    slide = OpenSlideSlide(path)
    slide.open_warnings = list(warnings)
    return slide


def _probed(slide: Slide) -> Slide:
    """Read one small block of the coarsest level so a corrupt file fails now, not in napari."""
    level = slide.level_count - 1
    w, h = slide.level_dimensions[level]
    try:
        slide.read_region((0, 0), level, (min(w, 64), min(h, 64)))
    except SlideError:
        slide.close()
        raise
    except Exception as err:
        slide.close()
        raise SlideError(
            f"{slide.path}: the image data cannot be decoded ({err}); the file is corrupt"
        ) from err
    return slide
