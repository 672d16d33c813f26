"""Old import path of :mod:`napari_hila.modelfile`, kept while callers move over.

``scripts/verify_explanations.py`` and the viewer (``_qt``) still import from
here; new code imports ``napari_hila.modelfile``.
"""

from napari_hila.modelfile import *  # noqa: F403
from napari_hila.modelfile import __all__  # noqa: F401
