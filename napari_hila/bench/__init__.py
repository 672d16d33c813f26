"""Benchmark implementations for `napari-hila bench`."""
