"""Feature files: one HDF5 per slide and encoder, CLAM/TRIDENT compatible.

Import the submodules directly: ``features.extract`` (``extract_slide``,
``load_or_extract``: cached, resumable), ``features.store`` (``SlideFeatures``,
``load_features`` for ours and CLAM/TRIDENT ``.h5``/``.pt`` files, ``save_features``),
``features.pooling`` (``ensure_regions`` for files that have only patches),
``features.cache`` (the cache's file names), ``features.extract_many`` (many slides),
``features.tile_reader`` and ``features.tile_bags`` (tiles). The package itself
imports nothing, so ``features.cache`` and the cohort CSV load without torch
(1.8 s here).
"""
