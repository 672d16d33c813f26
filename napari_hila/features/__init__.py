"""Feature files: one HDF5 per slide and encoder, CLAM/TRIDENT compatible."""

from napari_hila.features.store import SlideFeatures, load_features, save_features

__all__ = ["SlideFeatures", "load_features", "save_features"]
