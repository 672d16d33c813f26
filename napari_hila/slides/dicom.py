"""DICOM whole-slide images: which file of a series to open, and why one cannot be read.

A DICOM WSI is a folder of instances (one per level, plus label and
overview), each a ``.dcm`` file of one series; OpenSlide opens the whole
series from any one of them. A folder given to :func:`open_slide` opens
through its first instance by name, and the slide's fingerprint is the
series' (every instance's name and size, the first one's bytes), so the
folder and each of its files are one slide to the feature cache. When OpenSlide refuses a
file, its reason is often a missing attribute; the header then tells the
real cause (16-bit, monochrome, not a slide at all), read with pydicom when
it is installed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: The suffix DICOM exports give their instances (files without one are found by content).
DICOM_SUFFIXES = {".dcm"}
_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def is_dicom_file(path: Path) -> bool:
    """True when the file has DICOM's preamble and "DICM" prefix."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_path(path: Path) -> bool:
    """A ``.dcm`` file, or a file without a suffix that starts like DICOM (some exports)."""
    return path.suffix.lower() in DICOM_SUFFIXES or (not path.suffix and is_dicom_file(path))


def dicom_instances(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder``, sorted by name.

    ``.dcm`` files, and files without a suffix (as some exports name them)
    that start like DICOM; other files are not read, so a big folder costs a listing.
    """
    return sorted(p for p in folder.iterdir() if is_dicom_path(p) and p.is_file())


def one_per_dicom_series(paths: Iterable[Path]) -> list[Path]:
    """``paths`` with the DICOM instances of each series in one folder made one slide.

    The instances of a series are its levels and associated images, not
    slides: a folder whose DICOM files are all of one series stands for them
    (``open_slide`` opens a folder through its series), in the place of its
    first instance. With pydicom installed, a folder holding several series
    keeps the first instance of each (OpenSlide opens a series from any one).
    Other paths pass through in order.
    """
    paths = list(paths)
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        if is_dicom_path(path):
            by_folder.setdefault(path.parent, []).append(path)
    stands_for: dict[Path, Path | None] = {}  # instance -> what it becomes (None: dropped)
    for folder, instances in by_folder.items():
        series: dict[str, list[Path]] = {}
        for instance in instances:
            series.setdefault(_series_uid(instance), []).append(instance)
        whole = len(series) == 1 and len(instances) > 1
        for members in series.values():
            stands_for.update(dict.fromkeys(members))
            stands_for[members[0]] = folder if whole else members[0]
    out = []
    for path in paths:
        target = stands_for.get(path, path)
        if target is not None:
            out.append(target)
    return out


def _series_uid(path: Path) -> str:
    """The instance's SeriesInstanceUID, or "" when pydicom is missing or the header unreadable."""
    try:
        import pydicom
    except ImportError:
        return ""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:  # a damaged header: its own slide, to fail with its own message
        return f"unreadable:{path}"
    return str(header.get("SeriesInstanceUID", ""))


def dicom_problem(path: Path) -> str | None:
    """Why napari-hila cannot read this DICOM file as a brightfield slide, from its header.

    None when the header looks like an 8-bit RGB whole-slide image, or when
    pydicom is not installed to read it.
    """
    try:
        import pydicom
    except ImportError:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises many kinds on damaged headers
        return f"its DICOM header cannot be read ({err}); the file is corrupt"
    sop = str(ds.get("SOPClassUID", ""))
    if sop != _WSI_SOP_CLASS:
        name = getattr(ds.get("SOPClassUID"), "name", "") or sop or "no SOP class"
        return f"a DICOM {name} file, not a whole-slide image (VL Whole Slide Microscopy)"
    bits = int(ds.get("BitsAllocated", 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "unknown"))
    dtype = f"{'int' if signed else 'uint'}{bits}"
    if bits != 8 or signed or samples != 3:
        return (
            f"{dtype} pixels, {samples} sample{'s' if samples != 1 else ''} per pixel, "
            f"photometric {photometric}; napari-hila reads 8-bit (uint8) RGB brightfield slides"
        )
    return None
