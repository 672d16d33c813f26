"""npe2 sample data: the bundled H&E slide (CMU-1-Small-Region, Aperio, CC0)."""

from __future__ import annotations

from napari_hila.resources import sample_slide_path


def sample_slide() -> list:
    """The sample slide as the same multiscale layer the reader gives."""
    from napari_hila._reader import fit_to_napari, show_scale_bar
    from napari_hila.slides import open_slide
    from napari_hila.slides.layers import slide_layer_data

    layer = slide_layer_data(open_slide(sample_slide_path()), name="CMU-1-Small-Region")
    show_scale_bar()
    return [fit_to_napari(layer)]
