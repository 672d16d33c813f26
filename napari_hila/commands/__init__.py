"""Command-line sub-commands; see :mod:`napari_hila.cli`."""
