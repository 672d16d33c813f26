"""npe2 reader: whole-slide images as multiscale RGB layers in micrometres.

``get_reader`` claims slide files only: any OpenSlide format, DICOM WSI
(a folder of instances or any one of them), and TIFFs that are tiled or
pyramidal 8-bit RGB. Other TIFFs (16-bit, grey, small flat RGB) go to
napari's own readers. A file that is ours but broken gives one error
notification naming the file and the fix, and no layer, never a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from napari_hila.errors import HilaError

logger = logging.getLogger(__name__)

#: The sentinel napari's reader protocol accepts for "handled, no layers".
NO_LAYERS = [(None,)]


def _is_slide_like_tiff(path: Path) -> bool:
    """An 8-bit RGB(A) TIFF that is tiled or pyramidal: ours. Anything else: napari's.

    Judged from the directory walk (a few small reads per page), so the file
    is parsed by tifffile once, when it is opened, not also to be claimed.
    """
    from napari_hila.slides.tiff_checks import Directory, walk_directories

    try:
        walk = walk_directories(path)
    except (OSError, ValueError):
        return False
    if walk is None:  # a classic TIFF past 4 GiB (NDPI): tifffile knows its offsets
        return _is_slide_like_tiff_parsed(path)
    if not walk.directories:
        return False

    def pixels(directory: Directory) -> tuple:
        bits = tuple(directory.values.get(258, (1,)))
        return directory.number(277, 1), bits[:1], directory.number(262, -1)

    first, *others = walk.directories
    samples, bits, photometric = pixels(first)
    size = (first.number(256, 0), first.number(257, 0))
    pyramid = 330 in first.values or any(
        pixels(d) == (samples, bits, photometric)
        and d.number(256, 0) < size[0]
        and d.number(257, 0) < size[1]
        for d in others
    )
    return (
        bits == (8,)
        and first.number(339, 1) == 1  # unsigned integers
        and samples in (3, 4)
        and photometric in (2, 6)  # RGB, YCbCr
        and (322 in first.values or pyramid)
    )


def _is_slide_like_tiff_parsed(path: Path) -> bool:
    """:func:`_is_slide_like_tiff` from tifffile's parse, for files the walk cannot read."""
    import tifffile

    from napari_hila.slides.tiff_checks import tifffile_log

    try:
        with tifffile_log(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.keyframe
            return (
                series.dtype == "uint8"
                and page.samplesperpixel in (3, 4)
                and page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
                and (page.is_tiled or len(series.levels) > 1)
            )
    except Exception:  # not a readable TIFF: leave it to other readers
        return False


def get_reader(path: str | list[str]):
    """Return a reader for a slide file or DICOM WSI folder, or None for what is not ours.

    The suffixes are the opener's (``SLIDE_SUFFIXES``), the one list napari.yaml
    also follows; generic TIFF suffixes are claimed only for slide-like TIFFs.
    Several ``.dcm`` files of one folder are that folder's series.
    """
    from napari_hila.slides.dicom import DICOM_SUFFIXES, dicom_instances
    from napari_hila.slides.opener import GENERIC_TIFF_SUFFIXES, SLIDE_SUFFIXES

    if isinstance(path, list):
        parents = {Path(p).parent for p in path}
        same_series = len(parents) == 1 and all(
            Path(p).suffix.lower() in DICOM_SUFFIXES for p in path
        )
        if len(path) != 1 and not same_series:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        return read_slide if dicom_instances(p) else None
    suffix = p.suffix.lower()
    if suffix in GENERIC_TIFF_SUFFIXES:
        return read_slide if p.is_file() and _is_slide_like_tiff(p) else None
    return read_slide if suffix in SLIDE_SUFFIXES else None


def _notify(level: str, message: str) -> None:
    """A napari notification of ``level`` ("error", "warning", "info"); a log line without napari."""
    try:
        from napari.utils import notifications
    except ImportError:  # used without napari: log instead
        getattr(logger, level)(message)
        return
    getattr(notifications, f"show_{level}")(message)


def _notify_error(message: str) -> None:
    _notify("error", message)


def _notify_warning(message: str) -> None:
    _notify("warning", message)


def _notify_info(message: str) -> None:
    _notify("info", message)


def compute_overview_with_progress(slide) -> None:
    """Compute a pyramid-less slide's overview before napari asks for it, with a progress bar.

    napari reads the coarsest level whole when the layer is added; for a slide
    without a pyramid that means decoding every tile once (seconds), so it is
    done here on every core, announced and shown as napari progress, and kept
    in the overview cache so the next open of the slide skips it.
    """
    if not slide.overview_pending():
        return
    _notify_info(
        f"{slide.path.name}: the file has no pyramid; computing its overview once "
        "(kept on disk, so the next open is instant)"
    )
    try:
        from napari.utils import progress
    except ImportError:
        slide.compute_overview()
        return
    with progress(desc=f"Overview of {slide.path.name}", total=0) as bar:

        def report(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        slide.compute_overview(report)


def show_scale_bar() -> None:
    """Turn on the scale bar of the current viewer, if there is one."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no napari or no viewer: nothing to do
        return
    if viewer is None:
        return
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    scale_bar = getattr(overlays, "scale_bar", None) or viewer.scale_bar
    scale_bar.visible = True


def fit_to_napari(layer: tuple) -> tuple:
    """Drop layer options this napari does not know (``units`` came in napari 0.6)."""
    data, kwargs, kind = layer
    try:
        import inspect

        from napari.layers import Image

        if "units" not in inspect.signature(Image.__init__).parameters:
            kwargs = {k: v for k, v in kwargs.items() if k != "units"}
    except ImportError:
        pass
    return (data, kwargs, kind)


def read_slide(path: str | list[str], **_: Any) -> list:
    """Open one slide as napari layer data; a broken slide becomes a notification."""
    from napari_hila.slides import open_slide
    from napari_hila.slides.layers import mpp_warning, slide_layer_data

    if isinstance(path, list):
        path = path[0]
    name = Path(path).name if Path(path).is_dir() else None  # a DICOM folder: its name
    try:
        slide = open_slide(path)
        compute_overview_with_progress(slide)
        layer = slide_layer_data(slide, name=name, notify=_notify_error)
    except HilaError as err:
        _notify_error(str(err))
        return NO_LAYERS
    for warning in [*slide.open_warnings, mpp_warning(slide)]:
        if warning:
            _notify_warning(warning)
    show_scale_bar()
    return [fit_to_napari(layer)]
