"""NAPARI_HILA_CACHE means one thing: the root every napari-hila cache sits in."""

from __future__ import annotations

from pathlib import Path

from napari_hila.io_utils import cache_folder
from napari_hila.predict import default_cache_dir
from napari_hila.slides.overview_cache import overview_cache_dir


def test_features_and_overviews_share_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_HILA_CACHE", str(tmp_path / "root"))
    monkeypatch.delenv("NAPARI_HILA_OVERVIEW_CACHE", raising=False)
    assert default_cache_dir() == tmp_path / "root" / "features"
    assert overview_cache_dir() == tmp_path / "root" / "overviews"


def test_without_the_variable_the_root_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("NAPARI_HILA_CACHE", raising=False)
    monkeypatch.delenv("NAPARI_HILA_OVERVIEW_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "napari-hila" / "features"
    assert overview_cache_dir() == tmp_path / "xdg" / "napari-hila" / "overviews"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder("features") == Path(
        tmp_path / "home" / ".cache" / "napari-hila" / "features"
    )


def test_the_overview_variable_still_overrides_only_the_overviews(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_HILA_CACHE", str(tmp_path / "root"))
    monkeypatch.setenv("NAPARI_HILA_OVERVIEW_CACHE", str(tmp_path / "ov"))
    assert (
        overview_cache_dir() == tmp_path / "ov" and default_cache_dir().parent == tmp_path / "root"
    )
    monkeypatch.setenv("NAPARI_HILA_OVERVIEW_CACHE", "off")
    assert overview_cache_dir() is None
