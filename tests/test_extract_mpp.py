"""A user's pixel size for a slide without one: grid, cache key, feature attrs, CLI."""

from __future__ import annotations

import h5py
import pytest
from test_extract import CountingEncoder

from napari_hila.features import extract as extract_mod
from napari_hila.features.extract import extract_slide
from napari_hila.features.store import load_features
from napari_hila.slides.synthetic import write_test_slide


@pytest.fixture
def counting(monkeypatch):
    """The real descriptor counting the tiles it encodes (none added: a cache hit)."""
    from napari_hila.encoders import get_vision_encoder

    enc = CountingEncoder(get_vision_encoder("hila-descriptor", device="cpu"))
    monkeypatch.setattr(extract_mod, "vision_encoder", lambda *a, **k: enc)
    return enc


@pytest.fixture(scope="module")
def nompp_slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nompp")
    return write_test_slide(folder / "nompp.tif", 2400, 1800, layout="flat", mpp=None)


def test_user_mpp_is_not_a_cache_hit_of_the_assumed_one(nompp_slide, tmp_path, counting):
    options = {"device": "cpu", "region_mode": "mean", "batch_size": 32}
    assumed = extract_slide(nompp_slide, tmp_path, **options)
    first = counting.tiles
    assert first > 0
    again = extract_slide(nompp_slide, tmp_path, **options)
    assert again == assumed and counting.tiles == first  # same settings: a cache hit

    corrected = extract_slide(nompp_slide, tmp_path, mpp=0.25, **options)
    assert corrected != assumed and corrected.is_file()
    encoded = counting.tiles - first
    assert encoded > 0  # extracted again, not the assumed file reused

    a, c = load_features(assumed), load_features(corrected)
    assert a.attrs["mpp"] == 0.5 and a.attrs["mpp_source"] == "assumed"
    assert a.attrs["mpp_is_assumed"] and a.patch_size == 256
    assert c.attrs["mpp"] == 0.25 and c.attrs["mpp_source"] == "user"
    assert not c.attrs["mpp_is_assumed"] and c.patch_size == 512
    assert encoded == c.num_patches < a.num_patches  # 512 px patches: about a quarter as many

    # the corrected file is the cache of the corrected value (and only of it)
    assert extract_slide(nompp_slide, tmp_path, mpp=0.25, **options) == corrected
    assert counting.tiles - first == encoded
    with h5py.File(corrected, "r+") as h5:
        h5.attrs["mpp"] = 0.3  # a file whose mpp differs is not taken as a hit
    assert extract_slide(nompp_slide, tmp_path, mpp=0.25, **options) == corrected
    assert counting.tiles - first == 2 * encoded


def test_extract_cli_passes_mpp(nompp_slide, tmp_path, counting):
    from napari_hila.cli import main

    out = tmp_path / "out"
    code = main([
        "extract", str(nompp_slide), "--out", str(out), "--device", "cpu",
        "--region-mode", "mean", "--mpp", "0.25",
    ])  # fmt: skip
    assert code == 0
    [path] = out.glob("*.h5")
    feats = load_features(path)
    assert feats.attrs["mpp"] == 0.25 and feats.attrs["mpp_source"] == "user"
    assert feats.patch_size == 512


def test_extract_cli_refuses_an_implausible_mpp(nompp_slide, tmp_path, capsys):
    from napari_hila.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(nompp_slide), "--out", str(tmp_path), "--mpp", "500"])
    assert exit_info.value.code == 2
    assert "error: argument --mpp: --mpp '500' is not a plausible pixel size" in (
        capsys.readouterr().err
    )
    assert not list(tmp_path.glob("*.h5"))
