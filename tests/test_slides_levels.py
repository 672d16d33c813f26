"""The one level picker (slides.base.pick_level) and the readers that use it.

Every reader that picks a pyramid level for a wanted downsample (grid tiles,
the prompt panel's thumbnails, the viewer's region export, reduced whole-slide
reads) goes through ``pick_level``: the coarsest level at most 1% coarser than
asked. A file's downsamples are ratios of whole sizes (4099 px over 1024 px is
4.0029), so without the slack a 4x read would fall back to level 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_slides_walked import _pages, write_pyramid_svs

from napari_hila.slides import open_slide
from napari_hila.slides.arrays import mean_2x2
from napari_hila.slides.base import LEVEL_TOLERANCE, pick_level
from napari_hila.slides.synthetic import write_test_slide

POWERS = [1.0, 4.0, 16.0, 64.0]


@pytest.mark.parametrize(
    ("wanted", "level"),
    [
        (0.5, 0),  # finer than level 0: level 0, enlarged
        (1.0, 0),
        (3.9, 0),  # level 1 would be coarser than asked
        (4.0, 1),
        (15.8, 1),  # 15.8 x 1.01 < 16
        (15.9, 2),  # 15.9 x 1.01 > 16: within the slack
        (16.0, 2),
        (63.0, 2),
        (64.0, 3),
        (1000.0, 3),  # coarser than the coarsest: the coarsest
    ],
)
def test_pick_level_takes_the_coarsest_level_at_least_as_fine(wanted, level):
    assert pick_level(POWERS, wanted) == level


def test_tolerance_edge_is_one_percent_above_the_wanted_downsample():
    assert LEVEL_TOLERANCE == 1.01
    assert pick_level([1.0, 4.0029296875], 4.0) == 1  # 4099 px over 1024 px: taken for 4x
    assert pick_level([1.0, 4.039], 4.0) == 1  # just inside 4 x 1.01
    assert pick_level([1.0, 4.041], 4.0) == 0  # just outside: level 0
    assert pick_level([1.0, 4.0, 16.1], 16.0) == 2
    assert pick_level([1.0, 4.0, 16.2], 16.0) == 1


def test_pick_level_on_pyramid_views_reaches_computed_levels():
    """A flat file's pyramid views (file level + computed halvings) are picked from the same way."""
    views = [1.0, 2.0, 4.0, 8.0]
    assert pick_level(views, 6.0) == 2
    assert pick_level(views, 8.0) == 3
    assert pick_level(views[:1], 8.0) == 0  # the file's levels alone: level 0


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory):
    """4099 px level 0 over a 1024 px level: downsample 4.0029."""
    path = tmp_path_factory.mktemp("odd") / "odd.svs"
    return write_test_slide(path, 4099, 4099, layout="svs", mpp=0.5)


def _recording_reads(slide):
    levels = []
    read = slide.read_region

    def recording(location, level, size):
        levels.append(level)
        return read(location, level, size)

    slide.read_region = recording
    return levels


def test_every_reader_takes_the_4x_level_of_an_odd_sized_slide(odd_slide):
    from napari_hila._qt.export import read_view
    from napari_hila._qt.prompt_panel import read_thumbnail
    from napari_hila.features.tile_reader import read_tile

    with open_slide(odd_slide) as slide:
        assert slide.level_downsamples == [1.0, pytest.approx(4.0029, abs=1e-4)]
        levels = _recording_reads(slide)
        tile = read_tile(slide, 0, 0, 1024, 256)
        thumb = read_thumbnail(slide, (0, 0), 1024, side=256)
        view, box = read_view(slide, (0, 0, 4096, 4096), 1024)
        assert levels == [1, 1, 1]  # none falls back to level 0 (16 times the pixels)
        assert tile.shape == thumb.shape == (256, 256, 3)
        assert box == (0, 0, 4096, 4096) and view.shape == (1023, 1023, 3)  # 4096 / 4.0029 px

        streamed = []
        stream = slide._stream_level_box
        slide._stream_level_box = lambda level, *box: streamed.append(level) or stream(level, *box)
        image, actual = slide.read_reduced(4.0)
        assert set(streamed) == {1} and image.shape == (1024, 1024, 3)
        assert actual == pytest.approx(4099 / 1024)
        streamed.clear()
        slide.read_reduced(3.9)  # level 1 would be coarser than asked: level 0
        assert set(streamed) == {0}


def test_readers_of_a_cut_pyramid_pick_among_its_whole_levels(sample_slide, tmp_path):
    """A file cut inside level 2 opens with levels 0 and 1; a 4x read takes level 1."""
    from napari_hila._qt.export import read_view
    from napari_hila._qt.prompt_panel import read_thumbnail
    from napari_hila.features.tile_reader import read_tile

    with open_slide(sample_slide) as source:
        tissue = source.read_region((700, 900), 0, (512, 512))
    whole = write_pyramid_svs(tmp_path / "whole.svs", tissue)  # 1024, 512, 256 px levels
    _, offsets, _ = _pages(whole)[3]  # page 3 is level 2
    cut = tmp_path / "cut.svs"
    cut.write_bytes(whole.read_bytes()[: int(offsets[1])])
    with open_slide(whole) as full:
        assert full.level_downsamples == [1.0, 2.0, 4.0]
        assert pick_level(full.level_downsamples, 4.0) == 2
    with open_slide(cut) as slide:
        assert slide.level_downsamples == [1.0, 2.0]
        assert pick_level(slide.level_downsamples, 4.0) == 1
        assert pick_level(slide.level_downsamples, 64.0) == 1
        levels = _recording_reads(slide)
        tile = read_tile(slide, 0, 0, 512, 128)
        thumb = read_thumbnail(slide, (0, 0), 512, side=128)
        view, _ = read_view(slide, (0, 0, 1024, 1024), 256)
        assert levels == [1, 1, 1]  # never the lost level 2, never level 0
        halved = mean_2x2(slide.read_region((0, 0), 1, (256, 256))).astype(int)
        assert np.abs(tile.astype(int) - halved).max() <= 1  # level 1's pixels, box-halved
        assert thumb.shape == (128, 128, 3) and view.shape == (256, 256, 3)
