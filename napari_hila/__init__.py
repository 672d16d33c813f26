"""napari-hila: explainable survival prediction on whole-slide images.

The core (``slides``, ``encoders``, ``features``, ``models``, ``survival``,
``training``, ``results``) imports no Qt, so scripts and cluster jobs can use
it without a display. The napari layer lives in ``_qt`` and the npe2 entry
points (``_reader``, ``_sample_data``).
"""

__version__ = "0.1.0"
