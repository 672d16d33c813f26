"""TIFF pyramids opened from the directory walk alone, and pyramids cut inside a reduced level.

Every pyramid is written here with tifffile: in Aperio's layout (level 0,
thumbnail strip, reduced levels, label, macro) or as a plain tiled TIFF whose
pages are its levels (as vips writes them). OpenSlide is the reference for
sizes and pixels, and for refusing cut files; tifffile's parse (the route
every other TIFF takes) is the reference for which pages are levels.
"""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from napari_hila.errors import SlideError
from napari_hila.slides import open_slide, tifffile_backend
from napari_hila.slides.arrays import mean_2x2
from napari_hila.slides.pixels import rgba_over_white

DESCRIPTION = "Aperio Image Library v12.0.0\r\n1024x1024 [0,0 1024x1024] (128x128) JPEG/RGB Q=90"


@pytest.fixture(scope="module")
def tissue(sample_slide):
    with open_slide(sample_slide) as slide:
        return slide.read_region((700, 900), 0, (512, 512))


def write_pyramid_svs(path, tissue, photometric="rgb", compression="jpeg", mpp="0.2500"):
    """1024, 512 and 256 px levels of 128 px tiles, thumbnail, label and macro."""
    level0 = np.tile(tissue, (2, 2, 1))
    levels = [level0, mean_2x2(level0), mean_2x2(mean_2x2(level0))]
    options = dict(tile=(128, 128), compression=compression, photometric=photometric, metadata=None)
    with tifffile.TiffWriter(path) as tif:
        pixel_size = f"|MPP = {mpp}" if mpp else ""
        tif.write(levels[0], description=f"{DESCRIPTION}|AppMag = 40{pixel_size}", **options)
        tif.write(
            levels[2][::2, ::2],
            description="Aperio Image Library v12.0.0\r\n1024x1024 -> 128x128 - |MPP = 0.25",
            compression="jpeg",
            photometric="rgb",
            metadata=None,
        )
        for level in levels[1:]:
            tif.write(
                level, description=f"Aperio Image Library v12.0.0\r\n-> {level.shape[1]}", **options
            )
        for name, subfiletype, image in (("label", 1, tissue[:96, :64]), ("macro", 9, tissue[:64])):
            tif.write(
                image,
                description=f"Aperio Image Library v12.0.0\r\n{name} {image.shape[1]}x{image.shape[0]}",
                subfiletype=subfiletype,
                compression="lzw",
                photometric="rgb",
                metadata=None,
            )
    return path


@pytest.fixture(scope="module")
def pyramid(tissue, tmp_path_factory):
    return write_pyramid_svs(tmp_path_factory.mktemp("svs") / "pyramid.svs", tissue)


def _openslide_region(path, location, level, size):
    with openslide.OpenSlide(str(path)) as peer:
        return rgba_over_white(np.asarray(peer.read_region(location, level, size)))


@pytest.fixture
def no_tifffile_parse(monkeypatch):
    """Counts TiffFile objects made: a plain SVS is opened without one."""
    made = []
    real = tifffile.TiffFile.__init__

    def counting(self, *args, **kwargs):
        made.append(args[0] if args else kwargs.get("file"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", counting)
    return made


@pytest.mark.parametrize("photometric", ["rgb", "ycbcr"])
def test_plain_svs_is_read_from_its_directories_like_openslide(
    tissue, tmp_path, no_tifffile_parse, photometric
):
    path = write_pyramid_svs(tmp_path / f"{photometric}.svs", tissue, photometric=photometric)
    with openslide.OpenSlide(str(path)) as peer:
        dims, downsamples = peer.level_dimensions, peer.level_downsamples
    with open_slide(path) as slide:
        assert no_tifffile_parse == []  # levels, mpp and the probe read without tifffile
        assert type(slide._levels[0]).__name__ == "WalkedSeries"
        assert slide.backend == "tifffile" and slide.vendor == "aperio"
        assert slide.level_dimensions == list(dims) == [(1024, 1024), (512, 512), (256, 256)]
        assert slide.level_downsamples == pytest.approx(downsamples)
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_note == "from the file's Aperio MPP"
        assert slide.objective_power == 40 and slide.properties["aperio.AppMag"] == "40"
        assert slide.tile_size == (128, 128)
        for level, location in [(0, (100, 37)), (1, (300, 460)), (2, (0, 0))]:
            ours = slide.read_region(location, level, (200, 150))
            np.testing.assert_array_equal(
                ours, _openslide_region(path, location, level, (200, 150)), f"level {level}"
            )
        assert no_tifffile_parse == []
        assert slide.associated_image_names == ["label", "macro", "thumbnail"]
        with openslide.OpenSlide(str(path)) as peer:
            for name in slide.associated_image_names:
                np.testing.assert_array_equal(
                    slide.read_associated(name),
                    np.asarray(peer.associated_images[name].convert("RGB")),
                )
        assert len(no_tifffile_parse) == 1  # opened once, for the associated images


def test_directory_route_gives_what_the_tifffile_parse_gives(pyramid, monkeypatch):
    """Same properties, sizes and pixels as the slide built from tifffile's series."""
    with open_slide(pyramid) as quick:
        quick_state = (quick.level_dimensions, quick.properties, quick.mpp, quick.tile_size)
        quick_pixels = [quick.read_region((50, 70), lv, (300, 200)) for lv in range(3)]
        assert type(quick._levels[0]).__name__ == "WalkedSeries"
    monkeypatch.setattr(tifffile_backend, "walked_survey", lambda *args: None)
    with open_slide(pyramid) as parsed:
        assert isinstance(parsed._levels[0], tifffile.TiffPageSeries)
        assert (parsed.level_dimensions, parsed.mpp, parsed.tile_size) == (
            quick_state[0],
            quick_state[2],
            quick_state[3],
        )
        assert parsed.properties == quick_state[1]
        for level, pixels in enumerate(quick_pixels):
            np.testing.assert_array_equal(parsed.read_region((50, 70), level, (300, 200)), pixels)


def test_svs_the_directory_route_does_not_take_goes_through_tifffile(tissue, tmp_path):
    """LZW levels are no plain JPEG pyramid: tifffile's parse reads them, as before."""
    path = write_pyramid_svs(tmp_path / "lzw.svs", tissue, compression="lzw")
    with open_slide(path) as slide:
        assert isinstance(slide._levels[0], tifffile.TiffPageSeries)
        assert slide.level_dimensions == [(1024, 1024), (512, 512), (256, 256)]
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (512, 512)), tissue)


def write_page_pyramid(path, tissue, factor=2, reduced_flag=True, **extra):
    """A tiled JPEG TIFF whose pages are levels 1024, 1024/factor, ... (vips' layout)."""
    level = np.tile(tissue, (2, 2, 1))
    with tifffile.TiffWriter(path) as tif:
        while True:
            flag = 1 if reduced_flag and level.shape[0] < 1024 else 0
            tif.write(
                level,
                tile=(128, 128),
                compression="jpeg",
                photometric="rgb",
                subfiletype=flag,
                resolution=(4e4 / (1024 // level.shape[0]),) * 2,
                resolutionunit="CENTIMETER",
                **{"metadata": None, **extra},
            )
            if level.shape[0] // factor < 128:
                break
            level = level[::factor, ::factor]
    return path


def _levels_tifffile_sees(path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(tifffile_backend, "walked_survey", lambda *args: None)
        with open_slide(path) as slide:
            assert isinstance(slide._levels[0], tifffile.TiffPageSeries)
            pixels = [
                slide.read_region((100, 60), lv, (200, 150)) for lv in range(slide.level_count)
            ]
            return slide.level_dimensions, slide.mpp, slide.properties, pixels


@pytest.mark.parametrize(("factor", "reduced_flag"), [(2, True), (4, False), (3, True)])
def test_page_pyramid_is_read_from_its_directories_like_tifffile_and_openslide(
    tissue, tmp_path, monkeypatch, factor, reduced_flag
):
    path = write_page_pyramid(tmp_path / "vips.tif", tissue, factor, reduced_flag)
    dims, mpp, props, pixels = _levels_tifffile_sees(path, monkeypatch)
    made = []
    real = tifffile.TiffFile.__init__
    monkeypatch.setattr(
        tifffile.TiffFile, "__init__", lambda self, *a, **k: made.append(a) or real(self, *a, **k)
    )
    with open_slide(path) as slide, openslide.OpenSlide(str(path)) as peer:
        assert made == [] and type(slide._levels[0]).__name__ == "WalkedSeries"
        assert slide.vendor == "generic-tiff" == peer.properties["openslide.vendor"]
        assert slide.level_dimensions == dims and len(dims) == {2: 4, 3: 2, 4: 2}[factor]
        assert slide.mpp == mpp == pytest.approx(0.25) and slide.properties == props
        for level, expected in enumerate(pixels):
            np.testing.assert_array_equal(slide.read_region((100, 60), level, (200, 150)), expected)
        if not reduced_flag:  # unflagged pages: OpenSlide sees level 0 only, tifffile them all
            assert list(peer.level_dimensions) == dims[:1]
            return
        assert list(peer.level_dimensions) == dims
        for level in range(len(dims)) if factor == 2 else ():  # OpenSlide: exact downsamples
            at = (128 * 2**level, 64 * 2**level)  # level px (128, 64): on its grid
            np.testing.assert_array_equal(
                slide.read_region(at, level, (200, 150)),
                _openslide_region(path, at, level, (200, 150)),
            )


@pytest.mark.parametrize(
    "variant",
    ["shaped description", "private tag", "a page that is no level", "uncompressed"],
)
def test_tiffs_the_walk_does_not_take_keep_tifffiles_levels(tissue, tmp_path, monkeypatch, variant):
    path = tmp_path / "other.tif"
    if variant == "shaped description":
        write_page_pyramid(path, tissue, metadata={"axes": "YXS"})
    elif variant == "private tag":
        write_page_pyramid(path, tissue, extratags=[(65000, 2, 0, "scanner", True)])
    elif variant == "uncompressed":
        with tifffile.TiffWriter(path) as tif:
            tif.write(tissue, tile=(128, 128), photometric="rgb", metadata=None)
    else:
        write_page_pyramid(path, tissue)
        with tifffile.TiffWriter(path, append=True) as tif:  # a small strip "thumbnail"
            tif.write(tissue[:100, :90], photometric="rgb", metadata=None)
    expected = _levels_tifffile_sees(path, monkeypatch)
    with open_slide(path) as slide:
        assert isinstance(slide._levels[0], tifffile.TiffPageSeries), variant
        assert (slide.level_dimensions, slide.mpp) == expected[:2]


def write_ome_pyramid(path, tissue, compression="jpeg", images=1):
    """An OME-TIFF of 1024 px RGB with 512 and 256 px SubIFD levels (``images`` of them)."""
    level0 = np.tile(tissue, (2, 2, 1))
    levels = [level0, mean_2x2(level0), mean_2x2(mean_2x2(level0))]
    options = dict(tile=(128, 128), compression=compression, photometric="rgb")
    with tifffile.TiffWriter(path, ome=True) as tif:
        for _ in range(images):
            meta = {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
            tif.write(levels[0], subifds=2, metadata=meta, **options)
            for level in levels[1:]:
                tif.write(level, subfiletype=1, metadata=None, **options)
    return path


def test_ome_pyramid_is_read_from_its_directories_like_tifffile(tissue, tmp_path, monkeypatch):
    path = write_ome_pyramid(tmp_path / "scan.ome.tif", tissue)
    dims, mpp, props, pixels = _levels_tifffile_sees(path, monkeypatch)
    made = []
    real = tifffile.TiffFile.__init__
    monkeypatch.setattr(
        tifffile.TiffFile, "__init__", lambda self, *a, **k: made.append(a) or real(self, *a, **k)
    )
    with open_slide(path) as slide:
        assert made == [] and type(slide._levels[0]).__name__ == "WalkedSeries"
        assert slide.vendor == "ome-tiff" and slide.mpp_note == "from the file's OME PhysicalSizeX"
        assert slide.level_dimensions == dims == [(1024, 1024), (512, 512), (256, 256)]
        assert slide.mpp == mpp == pytest.approx(0.25) and slide.properties == props
        for level, expected in enumerate(pixels):
            np.testing.assert_array_equal(slide.read_region((100, 60), level, (200, 150)), expected)


@pytest.mark.parametrize("variant", ["uncompressed", "two images"])
def test_ome_files_the_walk_does_not_take_keep_tifffiles_levels(
    tissue, tmp_path, monkeypatch, variant
):
    path = tmp_path / "other.ome.tif"
    if variant == "uncompressed":
        write_ome_pyramid(path, tissue, compression=None)
    else:
        write_ome_pyramid(path, tissue, images=2)
    expected = _levels_tifffile_sees(path, monkeypatch)
    with open_slide(path) as slide:
        assert isinstance(slide._levels[0], tifffile.TiffPageSeries), variant
        assert (slide.level_dimensions, slide.mpp) == expected[:2]
        assert slide.level_dimensions == [(1024, 1024), (512, 512), (256, 256)]


# -- a pyramid cut inside a reduced level ------------------------------------------


def _pages(path):
    with tifffile.TiffFile(path) as tif:
        return [(p.offset, p.dataoffsets, p.databytecounts) for p in tif.pages]


def test_cut_inside_a_reduced_level_opens_the_whole_levels_with_a_warning(pyramid, tmp_path):
    """tifffile writes each directory before its tiles: cut inside level 2's tiles."""
    _, offsets, counts = _pages(pyramid)[3]  # page 3 is level 2
    cut = int(offsets[2]) + 10
    path = tmp_path / "cut.svs"
    path.write_bytes(pyramid.read_bytes()[:cut])
    with pytest.raises(openslide.OpenSlideError):
        openslide.OpenSlide(str(path))  # the peer refuses it outright
    with open_slide(path) as slide, open_slide(pyramid) as whole:
        assert slide.level_dimensions == [(1024, 1024), (512, 512)]
        [warning] = slide.open_warnings
        assert str(path) in warning and "truncated" in warning
        assert "Lost: level 2 (256 x 256 px)" in warning and "label, macro" in warning
        assert "Opened with levels 0, 1" in warning and "\n" not in warning
        assert slide.associated_image_names == ["thumbnail"]
        for level in (0, 1):
            np.testing.assert_array_equal(
                slide.read_region((0, 0), level, (512, 512)),
                whole.read_region((0, 0), level, (512, 512)),
            )
    with pytest.raises(SlideError, match="truncated.*OpenSlide cannot read a cut pyramid"):
        open_slide(path, backend="openslide")


def test_cut_inside_a_reduced_levels_directory_names_what_follows(pyramid, tmp_path):
    """The chain stops inside level 2's directory: level 1 is the coarsest left."""
    offset = _pages(pyramid)[3][0]
    path = tmp_path / "cut_ifd.svs"
    path.write_bytes(pyramid.read_bytes()[: offset + 6])
    with open_slide(path) as slide:
        assert slide.level_dimensions == [(1024, 1024), (512, 512)]
        [warning] = slide.open_warnings
        assert "truncated (its directory 4 runs to byte" in warning
        assert "Lost: all after directory 3" in warning
        assert "the coarsest 512 x 512 px" in warning


def test_middle_level_pointing_past_the_end_is_left_out(pyramid, tmp_path):
    """A tile offset of level 1 beyond the file (the chain is whole): levels 0 and 2 stay."""
    with tifffile.TiffFile(pyramid) as tif:
        tag = tif.pages[2].tags["TileOffsets"]
        where, count = tag.valueoffset, tag.count
    raw = bytearray(pyramid.read_bytes())
    last = where + 4 * (count - 1)
    raw[last : last + 4] = (len(raw) + 5000).to_bytes(4, "little")
    path = tmp_path / "pointer.svs"
    path.write_bytes(bytes(raw))
    with open_slide(path) as slide:
        assert slide.level_dimensions == [(1024, 1024), (256, 256)]
        [warning] = slide.open_warnings
        assert "Lost: level 1 (512 x 512 px)" in warning and "Opened with levels 0, 2" in warning
        assert slide.associated_image_names == ["label", "macro", "thumbnail"]
        assert slide.read_region((0, 0), 1, (64, 64)).shape == (64, 64, 3)


def test_cut_inside_level_0_is_still_refused(pyramid, tmp_path):
    _, offsets, _ = _pages(pyramid)[0]
    path = tmp_path / "cut0.svs"
    path.write_bytes(pyramid.read_bytes()[: int(offsets[len(offsets) // 2])])
    for backend in (None, "tifffile", "openslide"):
        with pytest.raises(SlideError, match="the file is truncated"):
            open_slide(path, backend=backend)


def test_extract_prints_a_cut_slides_warnings_once(tissue, tmp_path, capsys):
    """The command line says what the reader noticed (levels lost, pixel size assumed) once,
    though extraction opens the slide several times."""
    import argparse

    from napari_hila.commands import extract as extract_cmd

    whole = write_pyramid_svs(tmp_path / "whole.svs", tissue, mpp=None)
    _, offsets, _ = _pages(whole)[3]
    path = tmp_path / "slides" / "cut.svs"
    path.parent.mkdir()
    path.write_bytes(whole.read_bytes()[: int(offsets[1])])
    parser = argparse.ArgumentParser()
    extract_cmd.add_arguments(parser)
    args = parser.parse_args([str(path.parent), "--out", str(tmp_path / "out"), "--quiet"])
    assert extract_cmd.run(args) == 0
    err = capsys.readouterr().err
    [cut] = [line for line in err.splitlines() if "truncated" in line]
    assert cut.startswith(f"warning: {path}: the file is truncated") and "Lost: level 2" in cut
    [mpp] = [line for line in err.splitlines() if "um/px" in line]
    assert "does not record its pixel size; assuming 0.5 um/px" in mpp and "--mpp" in mpp
    with open_slide(path):  # outside a command nothing is printed
        pass
    assert capsys.readouterr().err == ""


def test_cut_pyramid_opens_in_napari_with_one_notification_naming_the_lost_level(pyramid, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_hila._reader import get_reader, read_slide

    _, offsets, _ = _pages(pyramid)[3]
    path = tmp_path / "cut.svs"
    path.write_bytes(pyramid.read_bytes()[: int(offsets[1])])
    start = len(notification_manager.records)
    assert get_reader(str(path)) is read_slide
    [(levels, kwargs, kind)] = read_slide(str(path))
    messages = [str(n.message) for n in notification_manager.records[start:]]
    assert kind == "image" and [lv.shape[:2] for lv in levels[:2]] == [(1024, 1024), (512, 512)]
    [warning] = messages
    assert "truncated" in warning and "Lost: level 2 (256 x 256 px)" in warning
    assert "Traceback" not in warning
