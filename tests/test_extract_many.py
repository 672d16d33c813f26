"""`extract` over folders: recursive search with a pattern, --quiet, summary.csv, early checks."""

from __future__ import annotations

import csv
import shutil

import numpy as np

from napari_hila.cli import main
from napari_hila.features.extract_many import find_slides


def test_recursive_search_with_a_pattern(tmp_path):
    for name in ("a/TCGA-1.svs", "a/b/TCGA-2.svs", "a/b/other.svs", "a/.hidden.svs", "a/n.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    top = [p.name for p in find_slides([tmp_path / "a"])]
    assert top == ["TCGA-1.svs"]  # sub-folders only when asked
    deep = [p.name for p in find_slides([tmp_path / "a"], recursive=True)]
    assert deep == ["TCGA-1.svs", "TCGA-2.svs", "other.svs"]
    picked = find_slides([tmp_path / "a"], recursive=True, pattern="TCGA-*.svs")
    assert [p.name for p in picked] == ["TCGA-1.svs", "TCGA-2.svs"]


def test_missing_weights_fail_once_before_any_slide(tmp_path, capsys):
    code = main(
        ["extract", str(tmp_path), "--out", str(tmp_path / "o"), "--encoder", "uni"]
        + ["--weights", str(tmp_path / "uni.safetensors")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--weights" in err and "uni.safetensors" in err
    assert err.count("error:") == 1 and not (tmp_path / "o").exists()


def test_quiet_run_writes_summary_csv(sample_slide, tmp_path, capsys):
    slides = tmp_path / "slides" / "site-1"
    slides.mkdir(parents=True)
    shutil.copy(sample_slide, slides / "case-1.svs")
    (slides / "broken.svs").write_bytes(b"not a slide")
    out = tmp_path / "features"
    argv = ["extract", str(tmp_path / "slides"), "--recursive", "--out", str(out), "--quiet"]
    code = main([*argv, "--qc"])
    captured = capsys.readouterr()
    assert code == 1  # one slide failed, the other was extracted
    assert "%|" not in captured.err  # no progress bars
    assert "failed: " in captured.err and "broken.svs" in captured.err
    with open(out / "summary.csv", newline="") as fh:
        rows = {r["slide"].rsplit("/", 1)[-1]: r for r in csv.DictReader(fh)}
    assert rows["case-1.svs"]["status"] == "done" and int(rows["case-1.svs"]["patches"]) > 20
    assert rows["broken.svs"]["status"] == "failed" and rows["broken.svs"]["error"]
    assert float(rows["case-1.svs"]["seconds"]) > 0
    (qc,) = (out / "qc").glob("case-1-*.png")
    from PIL import Image

    assert max(Image.open(qc).size) == 1600


def test_qc_image_dims_background_and_outlines_the_grid():
    from napari_hila.features.qc import PATCH_COLOUR, REGION_COLOUR, qc_image

    thumb = np.full((40, 60, 3), 200, np.uint8)
    tissue = np.zeros((20, 30), bool)
    tissue[:, :15] = True  # the left half is tissue
    # level-0 = 10 x the thumbnail; one 100 px patch at (0, 0), one 200 px region at (0, 0)
    image = qc_image(thumb, 10.0, tissue, np.array([[0, 0]]), 100, np.array([[0, 0]]), 200)
    assert (image[5, 40] < 200).all()  # background dimmed
    assert (image[15, 25] == 200).all()  # tissue untouched away from outlines
    assert (image[0, 3] == REGION_COLOUR).all()  # drawn last: the region's top edge wins
    assert (image[9, 3] == PATCH_COLOUR).all() and (image[5, 9] == PATCH_COLOUR).all()
    assert (image[19, 5] == REGION_COLOUR).all() and (image[10, 3] == 200).all()
