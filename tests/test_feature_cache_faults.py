"""The feature cache under hostile conditions: read-only, renamed slides, full disks.

A full disk is made for real in a child process with a file-size limit
(RLIMIT_FSIZE: every write past it fails with EFBIG, the way a full disk fails
with ENOSPC); permission and read-only failures are injected where root (who
ignores permissions) cannot make them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_hila.errors import HilaError
from napari_hila.features import extract as extract_module
from napari_hila.features.extract import extract_slide
from napari_hila.features.store import load_features, save_features


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, sample_slide):
    out = tmp_path_factory.mktemp("cache")
    extract_slide(sample_slide, out, device="cpu")
    return out


def _stages(slide, out) -> tuple[object, set[str]]:
    seen: set[str] = set()
    path = extract_slide(slide, out, device="cpu", progress=lambda s, f: seen.add(s))
    return path, seen


def test_complete_cache_is_read_without_lock_or_write_probe(cache_dir, sample_slide, monkeypatch):
    (expected,) = cache_dir.glob("*.h5")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(cache_dir))

    monkeypatch.setattr(extract_module, "_check_writable", refuse)
    monkeypatch.setattr(extract_module, "slide_lock", refuse)
    path, seen = _stages(sample_slide, cache_dir)
    assert path == expected and seen == {"features"}


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_read_only_mounted_cache_serves_extract_and_refuses_new_work(
    cache_dir, sample_slide, tmp_path
):
    view = tmp_path / "ro"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(cache_dir), str(view)])
    if mounted.returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        path, seen = _stages(sample_slide, view)
        assert path.parent == view and seen == {"features"}
        with pytest.raises(HilaError, match="cannot write feature files here"):
            extract_slide(sample_slide, view, device="cpu", region_mode="mean")
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_renamed_copy_reuses_the_original_file(cache_dir, sample_slide, tmp_path):
    renamed = tmp_path / "case-0042.svs"
    shutil.copy(sample_slide, renamed)
    (original,) = (p for p in cache_dir.glob("*.h5") if p.name.startswith("CMU"))
    path, seen = _stages(renamed, cache_dir)
    assert seen == {"features"}, "the renamed copy was extracted again"
    assert path.name.startswith("case-0042-") and path.parent == cache_dir
    assert os.path.samefile(path, original) or np.array_equal(
        load_features(path).features, load_features(original).features
    )
    path.unlink()


def test_feature_file_coords_carry_clam_and_trident_attributes(cache_dir):
    """Read the way TRIDENT's slide encoders and CLAM's loaders do: from ``coords``' attrs."""
    (path,) = (p for p in cache_dir.glob("*.h5") if p.name.startswith("CMU"))
    with h5py.File(path, "r") as h5:
        attrs = h5["coords"].attrs
        coords = h5["coords"][()]
        patch_size_level0 = int(attrs["patch_size_level0"])  # TRIDENT
        level, size = int(attrs["patch_level"]), int(attrs["patch_size"])  # CLAM
        downsample = np.asarray(attrs["downsample"], float)
        target = int(attrs["target_magnification"])
    assert patch_size_level0 == 256 and level == 0 and size == 256 and target == 20
    assert np.allclose(downsample, [1.0, 1.0])
    # a level-0 patch grid: steps between neighbours are the patch side
    xs = np.unique(coords[:, 0])
    assert np.all(np.diff(xs) % patch_size_level0 == 0)
    # and the file still loads here with the same patch size, nothing duplicated at the root
    feats = load_features(path)
    assert feats.patch_size == 256 and "coords.patch_size" in feats.attrs
    again = path.with_name("resaved.h5")
    save_features(again, feats)
    with h5py.File(again, "r") as h5:
        assert not [k for k in h5.attrs if k.startswith("coords.")]
        assert int(h5["coords"].attrs["patch_size_level0"]) == 256
    again.unlink()


def test_permission_failure_on_save_is_one_message_and_no_temp_file(
    cache_dir, tmp_path, monkeypatch
):
    (path,) = (p for p in cache_dir.glob("*.h5") if p.name.startswith("CMU"))
    feats = load_features(path)
    out = tmp_path / "out"
    out.mkdir()

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(HilaError) as caught:
        save_features(out / "x.h5", feats)
    assert str(out) in str(caught.value) and "no permission" in str(caught.value)
    assert list(out.iterdir()) == []


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from napari_hila.errors import HilaError
    from napari_hila.features.extract import extract_slide
    slide, runs = sys.argv[1], json.loads(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    outcomes = []
    for limit, out in runs:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            extract_slide(slide, out, device="cpu")
            outcomes.append({"ok": True})
        except HilaError as err:
            outcomes.append({"ok": False, "error": str(err)})
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print(json.dumps(outcomes))
    """
)


def test_full_disk_is_a_message_not_a_crash_and_leaves_no_partial_files(sample_copy, tmp_path):
    """4 KB fails reserving the partial patch file, 12 KB writing the final file (~19 KB)."""
    runs = [(4096, str(tmp_path / "at-partial")), (12000, str(tmp_path / "at-final"))]
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(sample_copy), json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"crashed ({done.returncode}):\n{done.stderr[-2000:]}"
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    for (_, out), outcome, fails_on in zip(
        runs, outcomes, ("unfinished patch features", "the feature file"), strict=True
    ):
        assert not outcome["ok"]
        assert out in outcome["error"] and fails_on in outcome["error"]
        assert "file size limit" in outcome["error"] and "HDF5" not in outcome["error"]
        left = sorted(p.name for p in Path(out).iterdir() if not p.name.endswith(".lock"))
        assert left == [], f"partial or temporary files left: {left}"


def test_the_cache_file_name_is_written_and_read_back_in_one_place(tmp_path):
    """cache_path's names are what the cohort lookup and slide_id_for take apart."""
    from napari_hila.features.cache import cache_path, extracted_files_of, slide_stem_of
    from napari_hila.predict import slide_id_for
    from napari_hila.survival.cohort_csv import feature_file_for

    fingerprint = "0123456789abcdef" * 4
    for stem in ("TCGA-01 A", "TCGA-01-0123456789ab"):  # a space; a stem that looks like a mark
        path = cache_path(tmp_path, stem, fingerprint, "uni v2", {"patch_px": 512})
        path.write_bytes(b"")
        assert path.name.startswith(stem.replace(" ", "_") + "-0123456789ab-uni_v2-")
        assert extracted_files_of(tmp_path, stem) == [path]
        assert feature_file_for(tmp_path, stem) == path
        assert slide_stem_of(path.stem, fingerprint) == stem.replace(" ", "_")

        class Recorded:
            attrs = {"slide_fingerprint": fingerprint}

        assert slide_id_for(path, Recorded()) == stem.replace(" ", "_")
        path.unlink()
    assert slide_stem_of("TCGA-02-0123456789ab-uni", "") == "TCGA-02-0123456789ab-uni"
