"""The npe2 reader and sample data, napari's reader machinery, and `napari-hila info`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import tifffile

from napari_hila._reader import NO_LAYERS, get_reader
from napari_hila.slides.synthetic import write_test_slide


@pytest.fixture
def notifications():
    """Messages napari's notification manager receives during the test."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    yield lambda: [str(n.message) for n in notification_manager.records[start:]]


def test_manifest_is_valid_and_reader_is_registered(sample_slide):
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-hila")
    npe2.PluginManifest.validate(
        manifest.model_dump() if hasattr(manifest, "model_dump") else manifest.dict()
    )
    readers = [r.command for r in pm.iter_compatible_readers([str(sample_slide)])]
    assert "napari-hila.get_reader" in readers
    assert any(s.key == "cmu-small-region" for s in manifest.contributions.sample_data)


def sample_pixels(path):
    import openslide

    return np.asarray(openslide.OpenSlide(str(path)).read_region((50, 100), 0, (240, 240)))[..., :3]


def test_reader_returns_multiscale_rgb_layer_in_um(sample_slide):
    reader = get_reader(str(sample_slide))
    assert callable(reader)
    [(data, kwargs, kind)] = reader(str(sample_slide))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert kwargs["scale"] == (0.499, 0.499) and kwargs["units"] == ("um", "um")
    assert [a.shape for a in data] == [(2967, 2220, 3), (1483, 1110, 3)]
    np.testing.assert_array_equal(data[0][100:340, 50:290], sample_pixels(sample_slide))
    meta = kwargs["metadata"]
    for key in (
        "path",
        "backend",
        "vendor",
        "mpp",
        "mpp_is_assumed",
        "objective_power",
        "fingerprint",
        "levels",
        "properties",
        "associated_images",
    ):
        assert key in meta
    assert meta["properties"]["aperio.MPP"] == "0.4990"


def test_reader_leaves_other_files_to_other_readers(tmp_path):
    for name, data in [
        ("deep.tif", np.zeros((64, 64, 3), np.uint16)),
        ("grey.tif", np.zeros((512, 512), np.uint8)),
        ("flat_rgb.tif", np.zeros((64, 64, 3), np.uint8)),  # not tiled: napari's own reader
    ]:
        tifffile.imwrite(tmp_path / name, data)
        assert get_reader(str(tmp_path / name)) is None, name
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert get_reader(str(tmp_path / "image.png")) is None
    assert get_reader([str(tmp_path / "a.svs"), str(tmp_path / "b.svs")]) is None


def test_broken_slide_gives_notification_not_traceback(tmp_path, notifications):
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    reader = get_reader(str(bad))
    assert reader is not None  # a .svs is ours, so we say what is wrong with it
    assert reader(str(bad)) == NO_LAYERS
    [message] = notifications()
    assert str(bad) in message and "not a .svs slide" in message


def test_viewer_open_through_napari_reader_machinery(sample_slide, tmp_path, notifications):
    import npe2
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()  # what napari does at start-up
    viewer = ViewerModel()
    [layer] = viewer.open(str(sample_slide), plugin="napari-hila")
    assert layer.multiscale and layer.rgb
    np.testing.assert_allclose(layer.scale, [0.499, 0.499])
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["vendor"] == "aperio"
    # a broken file opens nothing, raises nothing and says why
    bad = tmp_path / "empty.svs"
    bad.write_bytes(b"")
    assert viewer.open(str(bad), plugin="napari-hila") == []
    assert any("empty (0 bytes)" in m for m in notifications())
    assert len(viewer.layers) == 1


def test_missing_mpp_warns_in_napari(tmp_path, notifications):
    path = write_test_slide(tmp_path / "nompp.tif", 600, 500, layout="flat", mpp=None)
    [(_, kwargs, _)] = get_reader(str(path))(str(path))
    assert kwargs["metadata"]["mpp_is_assumed"] is True and kwargs["scale"] == (0.5, 0.5)
    assert kwargs["metadata"]["mpp_source"] == "assumed"
    assert any("does not record its pixel size" in m and "0.5 um/px" in m for m in notifications())


def test_sample_data_is_the_reader_layer():
    from napari_hila._sample_data import sample_slide

    [(data, kwargs, kind)] = sample_slide()
    assert kind == "image" and kwargs["name"] == "CMU-1-Small-Region"
    assert data[0].shape == (2967, 2220, 3) and kwargs["scale"] == (0.499, 0.499)


def _run_info(argv):
    from napari_hila.commands import info

    parser = argparse.ArgumentParser()
    info.add_arguments(parser)
    return info.run(parser.parse_args(argv))


def test_info_command_json(sample_slide, capsys):
    assert _run_info([str(sample_slide)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "tifffile" and out["vendor"] == "aperio"
    assert out["levels"] == [{"level": 0, "width": 2220, "height": 2967, "downsample": 1.0}]
    assert out["mpp"] == 0.499 and out["mpp_is_assumed"] is False and out["objective_power"] == 20
    assert out["tile_size"] == [240, 240]
    assert out["associated_images"]["label"] == [387, 463]
    assert 0.25 < out["tissue_fraction"] < 0.55
    grid = out["grid"]
    assert grid["patch_size_level0"] == 256 and grid["regions"] == 1 and grid["patches"] > 20
    assert _run_info([str(sample_slide), "--backend", "openslide", "--no-tissue"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "openslide" and "tissue_fraction" not in out


def test_info_command_error_line_and_exit_code(tmp_path, capsys, monkeypatch):
    from napari_hila import cli

    # only this command: the dispatcher itself is what is under test
    monkeypatch.setattr(cli, "COMMANDS", {"info": cli.COMMANDS["info"]})
    bad = tmp_path / "half.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    assert cli.main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]


def test_corrupt_tile_shows_white_and_one_notification(tmp_path, sample_slide, notifications):
    raw = bytearray(sample_slide.read_bytes())
    with tifffile.TiffFile(sample_slide) as tif:
        offset, count = tif.pages[0].dataoffsets[40], tif.pages[0].databytecounts[40]
    raw[offset : offset + count] = b"\x00" * count
    broken = tmp_path / "bad_tile.svs"
    broken.write_bytes(bytes(raw))
    [(levels, _, _)] = get_reader(str(broken))(str(broken))
    columns = -(-2220 // 240)
    y, x = (40 // columns) * 240, (40 % columns) * 240
    box = levels[0][y : y + 100, x : x + 100]
    assert box.shape == (100, 100, 3) and (box == 255).all()
    good = levels[0][0:100, 0:100]
    assert good.std() > 0  # other tiles still read
    levels[0][y : y + 10, x : x + 10]  # a second failure does not notify again
    messages = [m for m in notifications() if "bad_tile.svs" in m]
    assert len(messages) == 1 and "shown white" in messages[0]


def test_info_mpp_supplies_a_missing_pixel_size(tmp_path, capsys):
    path = write_test_slide(tmp_path / "nompp.tif", 1200, 900, layout="flat", mpp=None)
    assert _run_info([str(path)]) == 0
    assumed = json.loads(capsys.readouterr().out)
    assert assumed["mpp_source"] == "assumed" and assumed["grid"]["patch_size_level0"] == 256
    assert _run_info([str(path), "--mpp", "0.25"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mpp"] == 0.25 and out["mpp_is_assumed"] is False and out["mpp_source"] == "user"
    assert out["grid"]["patch_size_level0"] == 512


@pytest.mark.parametrize("bad", ["0", "-1", "250", "abc"])
def test_info_invalid_mpp_is_an_error_line_and_exit_2(sample_slide, capsys, bad):
    from napari_hila.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(sample_slide), "--mpp", bad, "--no-tissue"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --mpp" in err and "between 0.05 and 20" in err


def test_slide_like_tiffs_are_told_from_the_walk_as_tifffile_would(tmp_path, monkeypatch):
    """get_reader claims a .tif from its directories alone, with tifffile's answer on every kind."""
    from napari_hila import _reader

    rgb = np.full((600, 500, 3), 180, np.uint8)
    tiled = dict(tile=(256, 256), metadata=None)
    cases = {
        "tiled_rgb.tif": (True, [(rgb, dict(photometric="rgb", **tiled))]),
        "tiled_jpeg_ycbcr.tif": (
            True,
            [(rgb, dict(photometric="ycbcr", compression="jpeg", **tiled))],
        ),
        "tiled_rgba.tif": (
            True,
            [(np.dstack([rgb, rgb[..., :1]]), dict(photometric="rgb", extrasamples=[2], **tiled))],
        ),
        "flat_rgb.tif": (False, [(rgb, dict(photometric="rgb", metadata=None))]),
        "flat_pyramid.tif": (
            True,
            [(rgb, dict(photometric="rgb", metadata=None, subifds=1)), (rgb[::2, ::2], {})],
        ),
        "tiled_grey.tif": (False, [(rgb[..., 0], dict(photometric="minisblack", **tiled))]),
        "tiled_uint16.tif": (False, [(rgb.astype(np.uint16), dict(photometric="rgb", **tiled))]),
        "tiled_int8.tif": (False, [(rgb.astype(np.int8), dict(photometric="rgb", **tiled))]),
        "tiled_3_channels.tif": (
            False,
            [(rgb, dict(photometric="minisblack", planarconfig="contig", **tiled))],
        ),
    }
    for name, (expected, pages) in cases.items():
        path = tmp_path / name
        with tifffile.TiffWriter(path) as tif:
            for data, options in pages:
                tif.write(data, subfiletype=1 if not options else 0, **options)
        assert _reader._is_slide_like_tiff_parsed(path) is expected, name  # tifffile's answer
        opened = []
        monkeypatch.setattr(
            tifffile.TiffFile, "__init__", lambda *a, _seen=opened, **k: _seen.append(a)
        )
        assert _reader._is_slide_like_tiff(path) is expected, name
        assert opened == [], "the walk alone decides"
        monkeypatch.undo()
