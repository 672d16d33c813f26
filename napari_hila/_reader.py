"""npe2 reader: whole-slide images as multiscale RGB layers in micrometres.

``get_reader`` claims slide files only: any OpenSlide format, and TIFFs that
are tiled or pyramidal 8-bit RGB. Other TIFFs (16-bit, grey, small flat RGB)
go to napari's own readers. A file that is ours but broken gives one error
notification naming the file and the fix, and no layer, never a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from napari_hila.errors import HilaError

logger = logging.getLogger(__name__)

# file types that are always slides; .tif/.tiff are claimed only when they look like one
_ALWAYS_OURS = {".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".btf"}
#: The sentinel napari's reader protocol accepts for "handled, no layers".
NO_LAYERS = [(None,)]


def _is_slide_like_tiff(path: Path) -> bool:
    """An 8-bit RGB TIFF that is tiled or pyramidal: ours. Anything else: napari's."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.keyframe
            return (
                series.dtype == "uint8"
                and page.samplesperpixel == 3
                and (page.is_tiled or len(series.levels) > 1)
            )
    except Exception:  # not a readable TIFF: leave it to other readers
        return False


def get_reader(path: str | list[str]):
    """Return a reader for a slide file, or None for files napari-hila does not handle."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _ALWAYS_OURS:
        return read_slide
    if suffix in _TIFF_SUFFIXES and p.is_file() and _is_slide_like_tiff(p):
        return read_slide
    return None


def _notify_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # used without napari: log instead
        logger.error(message)
        return
    show_error(message)


def _notify_warning(message: str) -> None:
    try:
        from napari.utils.notifications import show_warning
    except ImportError:
        logger.warning(message)
        return
    show_warning(message)


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
    try:
        slide = open_slide(path)
        layer = slide_layer_data(slide, notify=_notify_error)
    except HilaError as err:
        _notify_error(str(err))
        return NO_LAYERS
    warning = mpp_warning(slide)
    if warning:
        _notify_warning(warning)
    show_scale_bar()
    return [fit_to_napari(layer)]
