"""The reader computes a pyramid-less slide's overview up front, once per slide."""

from __future__ import annotations

import numpy as np

from napari_hila import _reader
from napari_hila.slides import base, tiff_tile_reads
from napari_hila.slides.synthetic import write_test_slide


def test_flat_slide_overview_announced_once_then_read_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HILA_OVERVIEW_CACHE", str(tmp_path / "overviews"))
    monkeypatch.setattr(base, "MAX_COARSEST_SIDE", 300)  # 1200 px -> 600 -> 300 computed
    path = write_test_slide(tmp_path / "flat.tif", 1200, 900, layout="flat", mpp=0.25)
    infos: list[str] = []
    monkeypatch.setattr(_reader, "_notify_info", infos.append)
    monkeypatch.setattr(_reader, "show_scale_bar", lambda: None)

    ((data, _, kind),) = _reader.read_slide(str(path))
    assert kind == "image" and data[-1].shape == (225, 300, 3)
    assert len(infos) == 1 and "no pyramid" in infos[0] and "flat.tif" in infos[0]
    first = np.asarray(data[-1])
    assert len(list((tmp_path / "overviews").glob("*.npy"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the re-open decoded tiles for the overview")

    monkeypatch.setattr(tiff_tile_reads.TiledLevel, "_decode_reduced_tile", no_decoding)
    ((again, _, _),) = _reader.read_slide(str(path))
    assert len(infos) == 1  # nothing to announce: the overview is on disk
    np.testing.assert_array_equal(np.asarray(again[-1]), first)
