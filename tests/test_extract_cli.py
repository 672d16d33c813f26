"""`napari-hila extract`: per-slide errors, summary, exit status, cache, Dask cluster."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from napari_hila.commands import extract as extract_cmd
from napari_hila.features.extract_many import extract_many, extract_on_cluster, find_slides
from napari_hila.features.store import load_features


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    extract_cmd.add_arguments(parser)
    return extract_cmd.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def cli_run(sample_slide, tmp_path_factory):
    """One CLI run over a folder holding a good slide and a broken one."""
    import shutil

    folder = tmp_path_factory.mktemp("slides")
    shutil.copy(sample_slide, folder / "good.svs")
    (folder / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 64)  # a truncated TIFF
    (folder / "notes.txt").write_text("not a slide")
    out = tmp_path_factory.mktemp("out")
    return folder, out


def test_cli_keeps_going_after_a_bad_slide(cli_run, capsys):
    folder, out = cli_run
    missing = folder / "missing.ndpi"
    code = _run([str(folder), str(missing), "--out", str(out), "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 1
    lines = {
        line.split()[0]: line
        for line in text.splitlines()
        if line.endswith((".h5",)) or "failed" in line
    }
    assert " done " in lines["good.svs"] and lines["good.svs"].endswith(".h5")
    assert "failed" in lines["broken.svs"] and "broken.svs" in lines["broken.svs"]
    assert "file not found" in lines["missing.ndpi"]
    assert "notes.txt" not in text
    assert "1 of 3 slides extracted, 2 failed" in text
    files = [p for p in out.glob("good-*.h5")]
    assert len(files) == 1 and load_features(files[0]).num_patches > 20


def test_cli_rerun_is_cached_and_exit_zero(cli_run, capsys):
    folder, out = cli_run
    code = _run([str(folder / "good.svs"), "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and " cached " in text


def test_cli_rejects_text_encoder_before_any_slide(cli_run):
    from napari_hila.errors import HilaError

    folder, out = cli_run
    with pytest.raises(HilaError, match="text encoder"):
        _run([str(folder), "--out", str(out), "--encoder", "minilm"])


def test_find_slides_lists_folder_slides_and_keeps_named_files(cli_run):
    folder, _ = cli_run
    found = find_slides([folder, folder / "good.svs", folder / "x.svs"])
    assert [p.name for p in found] == ["broken.svs", "good.svs", "x.svs"]


def test_local_cluster_gives_identical_files(sample_slide, tmp_path):
    distributed = pytest.importorskip("distributed")
    options = {"batch_size": 32, "device": "cpu"}
    local = extract_many([sample_slide], tmp_path / "local", options)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = extract_on_cluster(
            [sample_slide, tmp_path / "nope.svs"], tmp_path / "dask", options, client
        )
    assert local[0]["status"] == "done" and remote[0]["status"] == "done"
    assert remote[1]["status"] == "failed" and "nope.svs" in remote[1]["error"]
    a, b = load_features(local[0]["file"]), load_features(remote[0]["file"])
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.region_features, b.region_features)


def test_cli_precision_flag_sets_the_dtype_and_beats_the_environment(
    sample_slide, tmp_path, monkeypatch, capsys
):
    """--precision reaches the encoder: the file records it, gets its own name, and the
    option wins over $NAPARI_HILA_PRECISION; without it the variable still applies."""
    import torch
    from safetensors.torch import save_file

    from napari_hila.encoders.vit import VisionTransformer, ViTConfig

    torch.manual_seed(0)
    vit = VisionTransformer(
        ViTConfig(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64)
    )
    weights = tmp_path / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    out = tmp_path / "feats"
    base = [str(sample_slide), "--out", str(out), "--encoder", "vit", "--weights", str(weights)]
    base += ["--device", "cpu", "--region-mode", "mean", "--quiet"]

    def dtypes() -> dict[str, str]:
        return {p.name: load_features(p).attrs["encoder_dtype"] for p in out.glob("*.h5")}

    monkeypatch.setenv("NAPARI_HILA_PRECISION", "float16")
    assert _run([*base, "--precision", "bfloat16"]) == 0
    (bf16,) = dtypes().values()
    assert bf16 == "bfloat16"
    assert _run([*base, "--precision", "float32"]) == 0  # the option, not the variable
    assert sorted(dtypes().values()) == ["bfloat16", "float32"]  # each its own file
    assert _run(base) == 0  # no option: the variable's float16
    assert sorted(dtypes().values()) == ["bfloat16", "float16", "float32"]
    files = {v: k for k, v in dtypes().items()}
    a, b = load_features(out / files["float32"]), load_features(out / files["bfloat16"])
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.array_equal(a.features, b.features)  # bfloat16 did run
    cos = (a.features * b.features).sum(1) / (
        np.linalg.norm(a.features, axis=1) * np.linalg.norm(b.features, axis=1)
    )
    assert 1 - cos.min() < 5e-4
    capsys.readouterr()
    with pytest.raises(SystemExit):  # argparse refuses an unknown precision by name
        _run([*base, "--precision", "float64"])
    assert "float64" in capsys.readouterr().err
