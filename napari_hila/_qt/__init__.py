"""The napari layer: dock widgets, result layers and screenshot export (Qt only here)."""
