"""Feature files: one HDF5 per slide and encoder, CLAM/TRIDENT compatible.

``extract_slide`` / ``load_or_extract`` make them (cached, resumable),
``load_features`` reads ours and CLAM/TRIDENT ``.h5``/``.pt`` files, and
``ensure_regions`` pools region features for files that have only patches.
"""

from napari_hila.features.extract import extract_slide, load_or_extract
from napari_hila.features.pooling import ensure_regions
from napari_hila.features.store import SlideFeatures, load_features, save_features

__all__ = [
    "SlideFeatures",
    "ensure_regions",
    "extract_slide",
    "load_features",
    "load_or_extract",
    "save_features",
]
