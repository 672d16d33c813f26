"""Slides as real scanners and pipelines write them: pixel sizes, cut files, pixel types.

Every file is written here (tifffile, byte cuts of the sample); OpenSlide is
the reference for pixels and for which cut files are unreadable.
"""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from napari_hila.errors import SlideError
from napari_hila.slides import ASSUMED_MPP, open_slide
from napari_hila.slides.layers import mpp_warning
from napari_hila.slides.pixels import rgba_over_white

BACKENDS = ["tifffile", "openslide"]


@pytest.fixture(scope="module")
def tissue(sample_slide):
    """512 x 512 px of the sample's tissue."""
    with open_slide(sample_slide) as slide:
        return slide.read_region((700, 900), 0, (512, 512))


def _tiff(path, data, **options):
    tifffile.imwrite(path, data, tile=(256, 256), metadata=None, **options)
    return path


# -- pixel sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolution", "unit", "note"),
    [
        ((72, 72), "INCH", "352.8 um/px (72 dpi)"),  # an image writer's default
        ((28.35, 28.35), "CENTIMETER", "352.7 um/px (72.01 dpi)"),
        ((300, 300), "INCH", "84.67 um/px (300 dpi)"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_writer_default_resolution_is_no_pixel_size(
    tmp_path, tissue, resolution, unit, note, backend
):
    path = _tiff(
        tmp_path / "export.tif",
        tissue,
        photometric="rgb",
        resolution=resolution,
        resolutionunit=unit,
    )
    assert float(openslide.OpenSlide(str(path)).properties["openslide.mpp-x"]) > 80  # as read
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp == ASSUMED_MPP and slide.mpp_is_assumed and slide.mpp_source == "assumed"
        assert note in slide.mpp_note and "TIFF resolution tags" in slide.mpp_note
        warning = mpp_warning(slide)
        assert note in warning and "assuming 0.5 um/px" in warning


@pytest.mark.parametrize("backend", BACKENDS)
def test_resolution_tags_count_only_with_a_unit(tmp_path, tissue, backend):
    microscope = dict(resolution=(40_000, 40_000), photometric="rgb")  # 0.25 um/px in cm
    cm = _tiff(tmp_path / "cm.tif", tissue, resolutionunit="CENTIMETER", **microscope)
    none = _tiff(tmp_path / "none.tif", tissue, resolutionunit="NONE", **microscope)
    with open_slide(cm, backend=backend) as slide:
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "file"
        assert slide.mpp_note == "from the file's TIFF resolution tags"
    with open_slide(none, backend=backend) as slide:
        assert slide.mpp_is_assumed and slide.mpp_note == "the file does not record its pixel size"


def test_vendor_pixel_size_wins_over_writer_default_tags(tmp_path, tissue):
    """Aperio MPP and OME PhysicalSizeX come first; the 72 dpi tags beside them do not count."""
    svs = tmp_path / "scan.svs"
    tifffile.imwrite(
        svs,
        tissue,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(72, 72),
        resolutionunit="INCH",
        description="Aperio Image Library v12.0.0\r\n512x512 [0,0 512x512] (256x256) JPEG|MPP = 0.2520",
        metadata=None,
    )
    ome = tmp_path / "scan.ome.tif"
    tifffile.imwrite(
        ome,
        tissue,
        tile=(256, 256),
        photometric="rgb",
        resolution=(72, 72),
        resolutionunit="INCH",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.125, "PhysicalSizeY": 0.125},
    )
    for backend in BACKENDS:
        with open_slide(svs, backend=backend) as slide:
            assert slide.vendor == "aperio" and slide.mpp == pytest.approx(0.252)
            assert slide.mpp_note == "from the file's Aperio MPP"
    with open_slide(ome) as slide:
        assert slide.vendor == "ome-tiff" and slide.mpp == pytest.approx(0.125)
        assert slide.mpp_note == "from the file's OME PhysicalSizeX"


def test_writer_default_resolution_gives_a_normal_grid(tmp_path, tissue):
    """The 72 dpi export of a 300 x 250 crop: one 256 px patch cell, not 36,893 1 px ones."""
    from napari_hila.commands.info import describe_slide

    path = _tiff(
        tmp_path / "crop.tif",
        tissue[:250, :300],
        photometric="rgb",
        resolution=(72, 72),
        resolutionunit="INCH",
    )
    info = describe_slide(str(path))
    assert info["mpp"] == 0.5 and info["mpp_source"] == "assumed" and "72 dpi" in info["mpp_note"]
    assert info["grid"]["patch_size_level0"] == 256 and info["grid"]["patches"] <= 1


# -- cut files -----------------------------------------------------------------------


def _page_offsets(path):
    with tifffile.TiffFile(path) as tif:
        return [page.offset for page in tif.pages]


@pytest.fixture(scope="module")
def cut_sample(sample_slide, tmp_path_factory):
    """Byte cuts of the sample: (name, path) for each place a copy can stop."""
    raw = sample_slide.read_bytes()
    pages = _page_offsets(sample_slide)  # level 0's IFD comes after its tiles, then thumbnail...
    folder = tmp_path_factory.mktemp("cuts")
    cuts = {
        "inside level 0's tiles": len(raw) // 3,
        "1.3 MB, after level 0 (the issue's file)": 1_300_000,
        "inside the thumbnail's directory": pages[1] + 20,
        "just before the macro's directory": pages[3] - 1,
    }
    files = {}
    for name, size in cuts.items():
        path = folder / f"cut_{size}.svs"
        path.write_bytes(raw[:size])
        files[name] = path
    return files


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_cut_sample_is_refused_as_truncated_like_openslide(cut_sample, backend):
    for name, path in cut_sample.items():
        with pytest.raises(openslide.OpenSlideError):
            openslide.OpenSlide(str(path))  # the peer refuses every one of them
        with pytest.raises(SlideError, match="truncated") as info:
            open_slide(path, backend=backend)
        message = str(info.value)
        assert str(path) in message and f"({path.stat().st_size} bytes" in message, name
        assert "\n" not in message


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_cut_inside_tile_data_after_the_directories_is_truncated(tmp_path, backend):
    """tifffile and many converters write the IFD first: the chain is whole, the tiles are not."""
    path = tmp_path / "export.tif"
    noise = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    tifffile.imwrite(path, noise, tile=(256, 256), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.offset < min(page.dataoffsets)
        end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True))
    path.write_bytes(path.read_bytes()[: end // 2])
    with pytest.raises(SlideError, match=f"but its tiles reach byte {end}\\); copy"):
        open_slide(path, backend=backend)


def test_cut_in_the_last_image_keeps_the_slide_and_names_the_loss(sample_slide, tmp_path):
    """The last bytes hold the macro's JPEG tables: the levels are whole, the macro is gone."""
    raw = sample_slide.read_bytes()
    path = tmp_path / "almost.svs"
    path.write_bytes(raw[:-100])
    openslide.OpenSlide(str(path)).close()  # OpenSlide opens it too
    with open_slide(path) as slide:
        assert slide.associated_image_names == ["label", "thumbnail"]
        [warning] = slide.open_warnings
        assert "truncated" in warning and "macro image is lost" in warning
        with open_slide(sample_slide) as whole:
            np.testing.assert_array_equal(
                slide.read_region((0, 0), 0, (512, 512)), whole.read_region((0, 0), 0, (512, 512))
            )


def _counted_reads(monkeypatch, path):
    """How many reads the directory walk makes on ``path``."""
    from napari_hila.slides import tiff_checks

    reads = []
    real_open = open

    class CountingFile:
        def __init__(self, fh):
            self._fh = fh

        def read(self, n=-1):
            reads.append(n)
            return self._fh.read(n)

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    with monkeypatch.context() as patch:
        patch.setattr(tiff_checks, "open", lambda *a: CountingFile(real_open(*a)), raising=False)
        assert tiff_checks.walk_directories(path).damage == []
    return len(reads)


def test_directory_check_reads_pages_not_tiles(sample_slide, tmp_path, monkeypatch):
    """The IFD walk reads each directory once, whatever the number of tiles (O(pages))."""
    from napari_hila.slides.tiff_checks import WANTED_TAGS

    pages = len(_page_offsets(sample_slide))
    # header and first offset, then per page: count, table, the kept values, extents
    assert _counted_reads(monkeypatch, sample_slide) <= 2 + (4 + len(WANTED_TAGS)) * pages
    noise = np.random.default_rng(0).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    few, many = tmp_path / "few.tif", tmp_path / "many.tif"
    tifffile.imwrite(few, noise[:256, :256], tile=(128, 128), photometric="rgb")  # 4 tiles
    tifffile.imwrite(many, noise, tile=(128, 128), photometric="rgb")  # 256 tiles
    assert _counted_reads(monkeypatch, few) == _counted_reads(monkeypatch, many)


def test_descriptive_tag_pointing_past_the_end_is_a_warning_not_a_refusal(tmp_path, tissue):
    """Some writers leave a private tag's offset anywhere: the pixels do not need it."""
    path = _tiff(
        tmp_path / "odd.tif", tissue, photometric="rgb", extratags=[(65000, 2, 0, "x" * 40, True)]
    )
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[0].tags[65000].offset + 8  # the value's offset inside the entry
    raw = bytearray(path.read_bytes())
    raw[entry : entry + 4] = (len(raw) + 1000).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with open_slide(path) as slide:
        [warning] = slide.open_warnings
        assert "tag 65000 of directory 1" in warning and "ignored" in warning
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (512, 512)), tissue)


def test_classic_tiff_past_4gib_is_checked_through_tifffiles_offsets(tmp_path, tissue):
    """NDPI's offsets wrap at 2**32: the walk stands aside, tile extents are still checked."""
    from napari_hila.slides import tiff_checks

    path = _tiff(tmp_path / "big.tif", tissue, photometric="rgb")
    with open(path, "r+b") as fh:
        fh.truncate((1 << 32) + 4096)  # sparse: no disk is used
    assert tiff_checks.walk_directories(path) is None
    with open_slide(path) as slide:
        assert slide.backend == "tifffile" and slide.dimensions == (512, 512)


def test_tifffile_log_lines_do_not_reach_stderr(tmp_path, tissue, capfd):
    """An invalid Orientation value (0) is harmless: silent. A cut tag is our one warning."""
    path = _tiff(
        tmp_path / "orient.tif", tissue, photometric="rgb", extratags=[(274, 3, 1, 0, True)]
    )
    with open_slide(path) as slide:
        assert slide.open_warnings == []
        slide.read_region((0, 0), 0, (64, 64))
    assert capfd.readouterr().err == ""


# -- pixel types ---------------------------------------------------------------------


def _openslide_rgb(path, size):
    return rgba_over_white(np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 0, size)))


@pytest.fixture(scope="module")
def brightfield_variants(tissue, tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    grey = np.asarray(Image.fromarray(tissue).convert("L"))
    ramp = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))  # alpha 0 -> 255
    premultiplied = (tissue.astype(np.uint16) * ramp[..., None] // 255).astype(np.uint8)
    return {
        "grey": _tiff(folder / "grey.tif", grey, photometric="minisblack"),
        "grey_inverted": _tiff(folder / "grey_white.tif", 255 - grey, photometric="miniswhite"),
        "grey_strips": _strips(folder / "grey_strips.tif", grey),  # not tiled: the zarr path
        "rgba": _tiff(
            folder / "rgba.tif", np.dstack([tissue, ramp]), photometric="rgb", extrasamples=[2]
        ),
        "rgba_premultiplied": _tiff(
            folder / "rgba_assoc.tif",
            np.dstack([premultiplied, ramp]),
            photometric="rgb",
            extrasamples=[1],
        ),
        "grey_alpha": _tiff(
            folder / "grey_alpha.tif",
            np.dstack([grey, ramp]),
            photometric="minisblack",
            extrasamples=[2],
        ),
        "_grey": grey,
        "_ramp": ramp,
    }


def _strips(path, data):
    tifffile.imwrite(path, data, photometric="minisblack", rowsperstrip=64, metadata=None)
    return path


@pytest.mark.parametrize("kind", ["grey", "grey_inverted", "rgba", "rgba_premultiplied"])
@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_grey_and_alpha_brightfield_read_as_openslide_paints_them(
    brightfield_variants, kind, backend
):
    path = brightfield_variants[kind]
    expected = _openslide_rgb(path, (512, 512))
    with open_slide(path, backend=backend) as slide:
        got = slide.read_region((0, 0), 0, (512, 512))
    assert got.shape == (512, 512, 3) and got.dtype == np.uint8
    # OpenSlide keeps premultiplied pixels inside: 1 grey level of rounding on alpha edges
    assert np.abs(got.astype(int) - expected).max() <= (1 if "rgba" in kind else 0)
    if kind.startswith("grey"):
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
        # MINISWHITE stores 255 - grey: read back, it is the same picture
        np.testing.assert_array_equal(got[..., 0], brightfield_variants["_grey"])
    if kind.startswith("rgba"):
        assert (got[:, 0] == 255).all()  # alpha 0 is white


def test_grey_strips_read_through_zarr_as_rgb(brightfield_variants):
    """OpenSlide opens only tiled TIFFs; the stripped grey file reads as the tiled one does."""
    with open_slide(brightfield_variants["grey_strips"]) as strips:
        assert strips.backend == "tifffile"
        with open_slide(brightfield_variants["grey"]) as tiled:
            for box in [((0, 0), (512, 512)), ((30, 70), (200, 300)), ((400, 450), (256, 256))]:
                location, size = box
                np.testing.assert_array_equal(
                    strips.read_region(location, 0, size), tiled.read_region(location, 0, size)
                )


def test_grey_alpha_is_composited_over_white_and_openslide_is_refused(brightfield_variants):
    """OpenSlide misreads grey+alpha tiles (libtiff's RGBA path); PIL is the reference here."""
    path = brightfield_variants["grey_alpha"]
    grey, ramp = brightfield_variants["_grey"], brightfield_variants["_ramp"]
    np.testing.assert_array_equal(np.asarray(Image.open(path))[..., 0], grey)  # PIL reads it
    expected = (grey.astype(np.uint16) * ramp + 255 * (255 - ramp.astype(np.uint16)) + 127) // 255
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        got = slide.read_region((0, 0), 0, (512, 512))
    np.testing.assert_array_equal(got[..., 1], expected.astype(np.uint8))
    with pytest.raises(SlideError, match="OpenSlide misreads grey\\+alpha"):
        open_slide(path, backend="openslide")


def _ycbcr_units(rgb: np.ndarray) -> bytes:
    """RGB as TIFF's 2 x 2 subsampled YCbCr data units (Y00 Y01 Y10 Y11 Cb Cr)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    h, w = y.shape
    ys = y.reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(h // 2, w // 2, 4)
    chroma = [c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))[..., None] for c in (cb, cr)]
    units = np.concatenate([ys, *chroma], axis=2)
    return np.clip(np.round(units), 0, 255).astype(np.uint8).tobytes()


def _encoded_tiff(path, tiles, tag, value, **options):
    """A 512 x 512 TIFF of four ready-encoded 256 px tiles, one tag's value then rewritten.

    tifffile writes what it can decode; the rewrite makes what scanners and old
    pipelines wrote (YCbCr subsampling outside JPEG, old-style JPEG).
    """
    tifffile.imwrite(
        path,
        iter(tiles),
        shape=(512, 512, 3),
        dtype=np.uint8,
        tile=(256, 256),
        metadata=None,
        **options,
    )
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags[tag].valueoffset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(value)] = value
    path.write_bytes(bytes(raw))
    return path


def test_ycbcr_subsampled_lzw_opens_through_openslide(tmp_path, tissue):
    """tifffile cannot decode subsampled YCbCr outside JPEG: OpenSlide reads it, and says so."""
    import imagecodecs

    tiles = [
        imagecodecs.lzw_encode(_ycbcr_units(tissue[y : y + 256, x : x + 256]))
        for y in (0, 256)
        for x in (0, 256)
    ]
    # tifffile writes subsampling (1, 1) for these bytes: make it the real (2, 2)
    path = _encoded_tiff(
        tmp_path / "ycc_lzw.tif",
        tiles,
        "YCbCrSubSampling",
        b"\x02\x00\x02\x00",
        photometric="ycbcr",
        compression="lzw",
    )
    expected = _openslide_rgb(path, (512, 512))
    assert np.abs(expected.astype(int) - tissue).mean() < 6  # the tissue, chroma halved
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (512, 512)), expected)
    with pytest.raises(SlideError, match="YCbCr 2x2-subsampled LZW tiles, which tifffile cannot"):
        open_slide(path, backend="tifffile")


def _old_style_jpeg(path, tissue, tile_bytes=None):
    """A tiled TIFF whose tiles are whole JPEG streams, tagged old-style JPEG (6)."""
    import imagecodecs

    tiles = [
        tile_bytes
        or imagecodecs.jpeg8_encode(
            np.ascontiguousarray(tissue[y : y + 256, x : x + 256]), level=90
        )
        for y in (0, 256)
        for x in (0, 256)
    ]
    return _encoded_tiff(
        path,
        tiles,
        "Compression",
        b"\x06\x00",
        photometric="ycbcr",
        compression="jpeg",
        subsampling=(2, 2),
    )


def test_old_style_jpeg_reads_with_tifffile_and_names_its_compression(tmp_path, tissue):
    path = _old_style_jpeg(tmp_path / "ojpeg.tif", tissue)
    with pytest.raises(openslide.OpenSlideError, match="compression: 6"):
        openslide.OpenSlide(str(path)).read_region((0, 0), 0, (8, 8))
    import imagecodecs

    with tifffile.TiffFile(path) as tif:  # each tile is a whole JPEG stream: decode it alone
        extents = list(zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts, strict=True))
    raw = path.read_bytes()
    decoded = [imagecodecs.jpeg8_decode(raw[o : o + n]) for o, n in extents]
    expected = np.concatenate(
        [np.concatenate(decoded[:2], axis=1), np.concatenate(decoded[2:], axis=1)], axis=0
    )
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (512, 512)), expected)
    broken = _old_style_jpeg(
        tmp_path / "ojpeg_bad.tif", tissue, tile_bytes=b"\xff\xd8" + b"\0" * 64
    )
    with pytest.raises(SlideError) as info:
        open_slide(broken)
    message = str(info.value)
    assert "old-style JPEG (OJPEG, compression 6)" in message and "corrupt" not in message
