"""The HiLa dock's one state: the result shown, the slide it belongs to, and what came with it.

As napari-animation keeps a viewer's state in one ``ViewerState``, the dock keeps
what it shows in one frozen :class:`ShownResult`, replaced whole by
:meth:`~napari_hila._qt.survival_dock.HilaSurvivalDock.show_result`: the
result, its slide file, its tissue mask and its model's card never come from
two different runs. Whether that slide is still open and chosen is asked of the
viewer each time (:meth:`ShownResult.slide_layer`), never stored, so removing
or switching the slide cannot leave a stale answer behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from napari_hila._qt.layers import slide_path_of
from napari_hila.modelfile import ModelCard
from napari_hila.results import PredictionResult


@dataclass(frozen=True)
class ShownResult:
    """One result on screen with its slide, tissue mask and card (immutable: replaced whole)."""

    result: PredictionResult
    tissue: Any = None  # the slide's TissueMask, redrawn with the overlays
    card: ModelCard | None = None

    def slide_layer(self, layers: Iterable[Any]) -> Any | None:
        """The layer among ``layers`` showing this result's slide file, or None when none does."""
        return next((ly for ly in layers if slide_path_of(ly) == self.result.slide_path), None)
