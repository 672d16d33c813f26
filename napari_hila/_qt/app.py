"""Opening napari with a slide, the HiLa dock and (optionally) a finished result.

:func:`launch_viewer` is what ``napari-hila view`` and ``napari-hila demo``
call; its name and arguments are kept stable for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari_hila.results import PredictionResult

PLUGIN = "napari-hila"


def launch_viewer(
    slide_path: str | os.PathLike | None = None,
    result: PredictionResult | str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    viewer: Any = None,
    show: bool = True,
    mpp: float | None = None,
) -> Any:
    """A napari viewer showing ``slide_path`` with the HiLa and Kaplan-Meier docks.

    ``result`` is a :class:`PredictionResult` or a folder written by
    ``PredictionResult.save`` (e.g. by ``napari-hila predict``); its overlays
    are drawn at once. ``model`` preselects a model directory in the dock.
    ``mpp`` (um/px at level 0) overrides or supplies the slide's pixel size,
    through the dock's pixel size field (the layer's scale and later runs).
    The slide is opened with napari-hila's reader, so it is the same layer a
    user gets from File > Open. Call ``napari.run()`` afterwards to block.
    """
    import napari

    if isinstance(result, (str, os.PathLike)):
        result = PredictionResult.load(result)
    if slide_path is None and result is not None:
        slide_path = result.slide_path
    if viewer is None:
        viewer = napari.Viewer(show=show, title="napari-hila")
    if slide_path is not None:
        viewer.open(str(Path(slide_path)), plugin=PLUGIN)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "HiLa survival")
    if model is not None:
        dock.settings.model_picker.set_model(model)
    if mpp is not None and slide_path is not None:
        from napari_hila._qt.layers import slide_path_of

        opened = Path(slide_path).expanduser().resolve()
        for layer in viewer.layers:
            path = slide_path_of(layer)
            if path and Path(path).resolve() == opened:
                dock.set_slide_mpp(mpp, layer)
    if result is not None:
        dock.show_result(result, tissue=_tissue_or_none(result))
    return viewer


def _tissue_or_none(result: PredictionResult) -> Any:
    """The slide's tissue mask for the overlay, or None if the slide cannot be read now."""
    from napari_hila.errors import HilaError
    from napari_hila.prediction_job import tissue_of

    try:
        return tissue_of(result)
    except (HilaError, OSError):
        return None


def survival_dock_of(viewer: Any) -> Any | None:
    """The viewer's HiLa survival dock widget, or None when it is not open."""
    from napari_hila._qt.survival_dock import HilaSurvivalDock

    for widget in viewer.window.dock_widgets.values():
        if isinstance(widget, HilaSurvivalDock):
            return widget
    return None
