"""One list of slide formats for opener, napari reader and manifest; DICOM WSI end to end."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from napari_hila._reader import NO_LAYERS, get_reader, read_slide
from napari_hila.errors import SlideError
from napari_hila.slides import SLIDE_SUFFIXES, open_slide

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    yield lambda: [str(n.message) for n in notification_manager.records[start:]]


def test_manifest_patterns_are_the_openers_suffixes():
    import yaml

    manifest = yaml.safe_load((ROOT / "napari_hila" / "napari.yaml").read_text())
    [reader] = manifest["contributions"]["readers"]
    assert set(reader["filename_patterns"]) == {f"*{s}" for s in SLIDE_SUFFIXES}
    assert reader["accepts_directories"] is True  # DICOM WSI folders
    assert {".dcm", ".qptiff"} <= SLIDE_SUFFIXES


def test_readme_format_list_names_every_suffix():
    section = (ROOT / "README.md").read_text().split("## Opening slides", 1)[1].split("\n## ")[0]
    listed = set(re.findall(r"\.[a-z]+\b", section.split("- formats:", 1)[1].split("\n- ")[0]))
    assert listed >= SLIDE_SUFFIXES, sorted(SLIDE_SUFFIXES - listed)
    assert "DICOM" in section


@pytest.fixture(scope="module")
def dicom_series(sample_slide, tmp_path_factory):
    """A 2-level JPEG DICOM WSI of the sample's tissue with label and overview instances."""
    from _dicom_wsi import write_dicom_wsi

    with open_slide(sample_slide) as slide:
        level0 = slide.read_region((300, 500), 0, (1000, 700))
        label, macro = slide.read_associated("label"), slide.read_associated("macro")
    folder = tmp_path_factory.mktemp("dicom") / "case 7 (DICOM)"
    paths = write_dicom_wsi(
        folder, [level0, level0[::2, ::2].copy()], 0.25, label=label, overview=macro
    )
    return folder, paths


def test_dicom_series_opens_from_its_folder_or_any_instance(dicom_series):
    folder, paths = dicom_series
    fingerprints = set()
    for target in [folder, *paths]:
        with open_slide(target) as slide:
            assert slide.backend == "openslide" and slide.vendor == "dicom"
            assert slide.level_dimensions == [(1000, 700), (500, 350)]
            assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "file"
            assert slide.mpp_note == "from the file's DICOM PixelSpacing"
            assert slide.associated_image_names == ["label", "macro"]
            assert slide.read_associated("label").shape[2] == 3
            fingerprints.add(slide.fingerprint())
    assert len(fingerprints) == 1, "folder and instances are one slide to the cache"
    reference = openslide.OpenSlide(str(paths[0]))
    expected = np.asarray(reference.read_region((120, 340), 1, (300, 150)))
    assert (expected[..., 3] == 255).all(), "the box lies inside level 1"
    with open_slide(folder) as slide:
        got = slide.read_region((120, 340), 1, (300, 150))
    np.testing.assert_array_equal(got, expected[..., :3])


def test_find_slides_counts_a_dicom_series_as_one_slide(dicom_series, sample_slide, tmp_path):
    """A folder of instances is one slide (its levels and label are not slides of their own);
    a folder holding two series keeps one instance of each."""
    import shutil

    from _dicom_wsi import write_dicom_wsi

    from napari_hila.features.extract_many import find_slides

    folder, paths = dicom_series
    assert find_slides([folder]) == [folder]
    cohort = tmp_path / "cohort"
    shutil.copytree(folder, cohort / folder.name)
    shutil.copy(sample_slide, cohort / "a.svs")
    found = find_slides([cohort], recursive=True)
    assert found == [cohort / "a.svs", cohort / folder.name]
    with open_slide(found[1]) as slide:
        assert slide.level_dimensions == [(1000, 700), (500, 350)]
    two = tmp_path / "two series"
    grey = np.full((300, 400, 3), 200, np.uint8)
    first = write_dicom_wsi(tmp_path / "s1", [grey], 0.5)
    second = write_dicom_wsi(tmp_path / "s2", [grey, grey[::2, ::2].copy()], 0.5)
    two.mkdir()
    for prefix, files in (("a", first), ("b", second)):
        for path in files:
            shutil.copy(path, two / f"{prefix}_{path.name}")
    assert find_slides([two]) == [two / "a_01_volume.dcm", two / "b_01_volume.dcm"]


def test_dicom_folder_opens_in_napari_as_a_multiscale_layer(dicom_series, notifications):
    import npe2
    from napari.components import ViewerModel

    folder, paths = dicom_series
    npe2.PluginManager.instance().discover()
    assert get_reader(str(folder)) is read_slide
    assert get_reader([str(p) for p in paths]) is read_slide  # several files of one series
    assert get_reader(str(folder.parent)) is None  # a folder without DICOM is not ours
    unnamed = folder.parent / "export without suffixes"
    unnamed.mkdir(exist_ok=True)
    for path in paths:
        (unnamed / path.stem).write_bytes(path.read_bytes())
    (unnamed / "README").write_text("scanner export")
    assert get_reader(str(unnamed)) is read_slide
    with open_slide(unnamed) as slide, open_slide(unnamed / paths[2].stem) as instance:
        assert slide.associated_image_names == ["label", "macro"]
        assert slide.fingerprint() == instance.fingerprint()
    viewer = ViewerModel()
    [layer] = viewer.open(str(folder), plugin="napari-hila")
    assert layer.name == "case 7 (DICOM)" and layer.multiscale and layer.rgb
    np.testing.assert_allclose(layer.scale, [0.25, 0.25])
    assert [level.shape for level in layer.data] == [(700, 1000, 3), (350, 500, 3)]
    assert layer.metadata["associated_images"] == ["label", "macro"]
    compatible = npe2.PluginManager.instance().iter_compatible_readers([str(paths[1])])
    assert "napari-hila.get_reader" in [r.command for r in compatible]
    [by_file] = viewer.open(str(paths[1]), plugin="napari-hila")
    assert by_file.metadata["vendor"] == "dicom" and by_file.name == paths[1].name
    assert not notifications()


@pytest.fixture(scope="module")
def dicom_16bit(tmp_path_factory):
    from _dicom_wsi import write_dicom_wsi

    grey = (np.arange(500 * 600).reshape(500, 600) % 4096).astype(np.uint16)
    folder = tmp_path_factory.mktemp("dicom16")
    [path] = write_dicom_wsi(folder, [grey], 0.5, jpeg=False)
    return path


def test_16bit_dicom_names_its_pixel_type(dicom_16bit, notifications, capsys):
    with pytest.raises(openslide.OpenSlideError):  # OpenSlide's own reason names an attribute
        openslide.OpenSlide(str(dicom_16bit)).read_region((0, 0), 0, (8, 8))
    with pytest.raises(SlideError, match="uint16 pixels, 1 sample per pixel, photometric MONO"):
        open_slide(dicom_16bit)
    assert read_slide(str(dicom_16bit)) == NO_LAYERS
    [message] = notifications()
    assert "uint16" in message and "Traceback" not in message
    from napari_hila import cli

    assert cli.main(["info", str(dicom_16bit), "--no-tissue"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uint16 pixels" in err[0] and "truncated" not in err[0]


def test_dicom_that_is_not_a_slide_says_so(tmp_path):
    import highdicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, highdicom.UID()
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(64)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "screenshot.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(SlideError, match="Secondary Capture Image Storage file, not a whole-slide"):
        open_slide(path)


def test_fluorescence_qptiff_is_ours_and_refused_with_its_channels(tmp_path, notifications):
    path = tmp_path / "panel.qptiff"
    tifffile.imwrite(
        path, np.zeros((4, 512, 512), np.uint8), tile=(256, 256), photometric="minisblack"
    )
    assert get_reader(str(path)) is read_slide
    assert read_slide(str(path)) == NO_LAYERS
    [message] = notifications()
    assert "fluorescence or multi-channel image with 4 channels" in message


def _run_info(argv):
    from napari_hila.commands import info

    parser = argparse.ArgumentParser()
    info.add_arguments(parser)
    return info.run(parser.parse_args(argv))


def test_info_describes_a_dicom_folder(dicom_series, capsys):
    folder, _ = dicom_series
    assert _run_info([str(folder), "--no-tissue"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vendor"] == "dicom" and out["mpp"] == 0.25 and out["dimensions"] == [1000, 700]


def test_cut_slide_is_one_error_line_and_one_notification(sample_slide, tmp_path, capsys):
    from napari.utils.notifications import notification_manager

    from napari_hila import cli

    cut = tmp_path / "copy stopped.svs"
    cut.write_bytes(sample_slide.read_bytes()[:1_300_000])
    assert cli.main(["info", str(cut)]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()  # no tifffile log line beside it
    assert line.startswith("error: ") and "truncated (1300000 bytes" in line
    start = len(notification_manager.records)
    assert read_slide(str(cut)) == NO_LAYERS
    [note] = [str(n.message) for n in notification_manager.records[start:]]
    assert "truncated" in note and str(cut) in note


def test_writer_default_resolution_warns_in_napari(tmp_path, notifications):
    path = tmp_path / "export.tif"
    tifffile.imwrite(
        path,
        np.full((600, 700, 3), 200, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        resolution=(72, 72),
        resolutionunit="INCH",
    )
    [(_, kwargs, _)] = read_slide(str(path))
    assert kwargs["scale"] == (0.5, 0.5) and kwargs["metadata"]["mpp_source"] == "assumed"
    [message] = notifications()
    assert "352.8 um/px (72 dpi)" in message and "assuming 0.5 um/px" in message


def test_tiled_rgba_tiff_is_ours_and_composited_over_white(tmp_path):
    path = tmp_path / "export_with_alpha.tif"
    rgba = np.zeros((300, 400, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 200:, 3] = 255  # left half transparent
    tifffile.imwrite(path, rgba, tile=(256, 256), photometric="rgb", extrasamples=[2])
    assert get_reader(str(path)) is read_slide
    [(levels, _, _)] = read_slide(str(path))
    pixels = np.asarray(levels[0][:, :])
    assert (pixels[:, :200] == 255).all() and (pixels[:, 200:] == [200, 0, 0]).all()
