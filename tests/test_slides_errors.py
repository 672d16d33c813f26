"""Every bad input gives one SlideError naming the file and what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_hila.errors import SlideError
from napari_hila.slides import open_slide


def _tiled(path, data, **kwargs):
    tifffile.imwrite(path, data, tile=(64, 64), **kwargs)
    return path


@pytest.fixture
def bad_files(tmp_path, sample_slide):
    raw = sample_slide.read_bytes()
    files = {}
    files["empty"] = tmp_path / "empty.svs"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "notes.svs"
    files["text"].write_text("patient notes, not a slide\n")
    files["truncated"] = tmp_path / "truncated.svs"
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["corrupt_header"] = tmp_path / "corrupt.svs"
    files["corrupt_header"].write_bytes(raw[:4] + b"\xff\xff\xff\x7f" + raw[8:])
    files["uint16"] = _tiled(
        tmp_path / "deep.tif", np.zeros((128, 128, 3), np.uint16), photometric="rgb"
    )
    files["int8"] = _tiled(tmp_path / "signed.tif", np.zeros((128, 128, 3), np.int8))
    files["fluorescence"] = _tiled(
        tmp_path / "fluo.tif", np.zeros((3, 128, 128), np.uint8), photometric="minisblack"
    )
    files["cmyk"] = _tiled(
        tmp_path / "cmyk.tif", np.zeros((128, 128, 4), np.uint8), photometric="separated"
    )
    files["folder"] = tmp_path / "folder.svs"
    files["folder"].mkdir()
    files["missing"] = tmp_path / "nowhere.svs"
    return files


EXPECTED = {
    "empty": "empty (0 bytes)",
    "text": "text file",
    "truncated": "truncated",
    "corrupt_header": "corrupt",
    "uint16": "uint16 pixels (uint16, 3 samples per pixel, photometric RGB)",
    "int8": "int8 pixels (int8, 3 samples per pixel, photometric RGB)",
    "fluorescence": "fluorescence or multi-channel image with 3 channels",
    "cmyk": "photometric SEPARATED",
    "folder": "folder",
    "missing": "not found",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("backend", [None, "tifffile", "openslide"])
def test_bad_input_gives_one_clear_slide_error(bad_files, kind, backend):
    path = bad_files[kind]
    with pytest.raises(SlideError) as info:
        open_slide(path, backend=backend)
    message = str(info.value)
    assert str(path) in message, "the message names the file"
    assert EXPECTED[kind] in message
    assert "\n" not in message and "Traceback" not in message


def test_corrupt_tile_data_raises_slide_error_on_read(tmp_path, sample_slide):
    raw = bytearray(sample_slide.read_bytes())
    with tifffile.TiffFile(sample_slide) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[40], page.databytecounts[40]
    raw[offset : offset + count] = b"\x00" * count  # tile 40 is no longer a JPEG
    broken = tmp_path / "broken_tile.svs"
    broken.write_bytes(bytes(raw))
    tile_w = 240
    columns = -(-2220 // tile_w)
    x, y = (40 % columns) * tile_w, (40 // columns) * tile_w
    for backend in ("openslide", "tifffile"):
        with (
            open_slide(broken, backend=backend) as slide,
            pytest.raises(SlideError, match="corrupt"),
        ):
            slide.read_region((x, y), 0, (64, 64))


def test_unknown_backend_is_named(sample_slide):
    with pytest.raises(SlideError, match="unknown slide backend 'vips'"):
        open_slide(sample_slide, backend="vips")
