"""Feature extraction on the bundled sample: grid, values, cache, resume, locking."""

from __future__ import annotations

import json
import threading

import h5py
import numpy as np
import pytest
import torch

from napari_hila.errors import Cancelled
from napari_hila.features import extract as extract_mod
from napari_hila.features.cache import partial_header, partial_path
from napari_hila.features.extract import extract_slide, load_or_extract
from napari_hila.features.pooling import ensure_regions
from napari_hila.features.store import load_features
from napari_hila.slides import detect_tissue, make_grids, open_slide


class CountingEncoder:
    """Wraps the real descriptor; counts the tiles it is given and the threads it runs in."""

    def __init__(self, inner, thread_parallel: bool = False):
        self.inner = inner
        self.name, self.version = inner.name, inner.version
        self.output_dim, self.input_size = inner.output_dim, inner.input_size
        self.thread_parallel = thread_parallel
        self.tiles = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def encode(self, tiles):
        with self.lock:
            self.tiles += len(tiles)
            self.threads.add(threading.current_thread().name)
        return self.inner.encode(tiles)


@pytest.fixture(params=[False, True], ids=["encoder-thread", "in-reader-threads"])
def counting(monkeypatch, request):
    """Both ways extraction runs a CPU encoder: beside the readers, or inside them."""
    from napari_hila.encoders import get_vision_encoder

    inner = get_vision_encoder("hila-descriptor", device="cpu")
    enc = CountingEncoder(inner, thread_parallel=request.param)
    monkeypatch.setattr(extract_mod, "vision_encoder", lambda *a, **k: enc)
    return enc


@pytest.fixture(scope="module")
def extracted(sample_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    return extract_slide(sample_slide, out, batch_size=16, device="cpu")


def test_file_matches_grid_and_direct_encoding(sample_slide, extracted):
    from napari_hila.encoders.descriptor import describe_tiles
    from napari_hila.features.tile_reader import read_tile

    feats = load_features(extracted)
    with open_slide(sample_slide) as slide:
        grids = make_grids(slide, detect_tissue(slide))
        np.testing.assert_array_equal(feats.coords, grids.patch_coords)
        np.testing.assert_array_equal(feats.region_coords, grids.region_coords)
        np.testing.assert_array_equal(feats.patch_to_region, grids.patch_to_region)
        picks = [0, len(grids.patch_coords) // 2, len(grids.patch_coords) - 1]
        tiles = np.stack(
            [slide.read_region(tuple(grids.patch_coords[i]), 0, (256, 256)) for i in picks]
        )
        region = read_tile(slide, *grids.region_coords[0], grids.region_size, 256)
    np.testing.assert_allclose(feats.features[picks], describe_tiles(tiles), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats.region_features[0], describe_tiles(region[None])[0], atol=1e-6)
    assert feats.num_patches > 20 and feats.features.shape[1] == feats.attrs["feature_dim"]
    a = feats.attrs
    assert a["encoder"] == "hila-descriptor" and a["patch_size"] == 256 and a["region_size"] == 4096
    assert a["slide_fingerprint"] and abs(a["mpp"] - 0.499) < 1e-6 and a["target_mpp"] == 0.5
    with h5py.File(extracted) as h5:  # CLAM/TRIDENT readers find their datasets
        assert h5["features"].shape == (feats.num_patches, a["feature_dim"])
        assert h5["coords"].dtype == np.int64
    assert not partial_path(extracted).exists()


def test_cache_hit_encodes_nothing_and_returns_same_arrays(sample_slide, extracted, counting):
    first = load_features(extracted)
    again = load_or_extract(sample_slide, extracted.parent, device="cpu")
    assert counting.tiles == 0
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.region_features, first.region_features)
    # Different settings are a different file, never a stale hit.
    other = extract_slide(sample_slide, extracted.parent, region_mode="mean", device="cpu")
    assert other != extracted and counting.tiles == first.num_patches
    pooled = load_features(other)
    np.testing.assert_allclose(pooled.features, first.features, atol=1e-6)
    np.testing.assert_allclose(pooled.region_features[0], first.features.mean(axis=0), rtol=1e-5)
    assert pooled.attrs["region_encoder"] == "mean(hila-descriptor)"
    other.unlink()  # the module's shared folder goes back to holding the one file


def test_cancel_then_resume_gives_the_same_file(sample_copy, extracted, tmp_path, counting):
    cancel = threading.Event()
    seen = []

    def progress(stage, fraction):
        seen.append(stage)
        if stage == "tiles" and fraction > 0.3:
            cancel.set()

    out = tmp_path / "cache"
    with pytest.raises(Cancelled, match="resume"):
        extract_slide(sample_copy, out, batch_size=8, progress=progress, cancel=cancel)
    assert not [p for p in out.glob("*.h5") if not p.name.startswith(".")], "no final file"
    (partial,) = out.glob(".*.partial.f32")
    target = partial.with_name(partial.name[1:].replace(".partial.f32", ".h5"))
    saved = json.loads(partial_header(target).read_text())["done"]  # rows kept for the resume
    encoded_before = counting.tiles
    total = load_features(extracted).num_patches
    assert 0 < saved <= encoded_before < total
    path = extract_slide(sample_copy, out, batch_size=8, progress=lambda s, f: seen.append(s))
    resumed = counting.tiles - encoded_before - 1  # minus the one region view
    assert resumed == total - saved, "saved patches were encoded again, or some were skipped"
    assert {"tissue", "tiles", "features"} <= set(seen)
    np.testing.assert_allclose(
        load_features(path).features, load_features(extracted).features, atol=1e-6
    )
    assert not list(out.glob(".*.partial.*"))


def test_two_concurrent_runs_share_one_extraction(sample_copy, tmp_path, counting):
    out = tmp_path / "cache"
    results, errors = [], []

    def run():
        try:
            results.append(extract_slide(sample_copy, out, batch_size=16))
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results[0] == results[1]
    n = load_features(results[0])
    assert counting.tiles == n.num_patches + n.num_regions  # extracted once, not twice


def test_clam_h5_and_pt_inputs_get_pooled_regions(tmp_path):
    rng = np.random.default_rng(0)
    coords = np.array([[0, 0], [512, 0], [4096, 0], [4096 + 512, 4096], [0, 8192]], np.int64)
    feats = rng.normal(size=(5, 6)).astype(np.float32)
    h5_dir, pt_dir = tmp_path / "h5_files", tmp_path / "pt_files"
    h5_dir.mkdir(), pt_dir.mkdir()
    with h5py.File(h5_dir / "slide1.h5", "w") as h5:  # CLAM layout
        h5.create_dataset("features", data=feats)
        ds = h5.create_dataset("coords", data=coords)
        ds.attrs["patch_size"], ds.attrs["patch_level"] = 512, 0
    torch.save(torch.from_numpy(feats), pt_dir / "slide1.pt")
    for path in (h5_dir / "slide1.h5", pt_dir / "slide1.pt"):
        loaded = ensure_regions(load_features(path), region_size=4096)
        np.testing.assert_array_equal(loaded.coords, coords)
        assert loaded.patch_size == 512
        np.testing.assert_array_equal(
            loaded.region_coords, [[0, 0], [4096, 0], [4096, 4096], [0, 8192]]
        )
        np.testing.assert_array_equal(loaded.patch_to_region, [0, 0, 1, 2, 3])
        np.testing.assert_allclose(loaded.region_features[0], feats[:2].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(loaded.region_features[3], feats[4], rtol=1e-6)
    lone = tmp_path / "lone.pt"
    torch.save(torch.from_numpy(feats), lone)
    pooled = ensure_regions(load_features(lone))
    assert pooled.attrs["coords_missing"] and pooled.num_regions == 1
    np.testing.assert_allclose(pooled.region_features[0], feats.mean(axis=0), rtol=1e-6)


def test_bad_slide_and_blank_slide_give_clear_errors(tmp_path):
    from napari_hila.errors import HilaError

    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all")
    with pytest.raises(HilaError, match="broken.svs"):
        extract_slide(bad, tmp_path / "out")
    import tifffile

    blank = tmp_path / "blank.tif"
    tifffile.imwrite(
        blank,
        np.full((1024, 1024, 3), 245, np.uint8),
        tile=(256, 256),
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    with pytest.raises(HilaError, match="no tissue"):
        extract_slide(blank, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").glob("*.h5") if not p.name.startswith(".")]


def test_unwritable_output_folder_is_reported_before_work(sample_slide, tmp_path):
    from napari_hila.errors import FeatureFileError

    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    with pytest.raises(FeatureFileError, match="cannot write feature files here"):
        extract_slide(sample_slide, blocker / "out")


def test_crash_mid_run_resumes_from_last_checkpoint(sample_copy, tmp_path, monkeypatch, counting):
    out = tmp_path / "cache"
    calls = {"n": 0}
    real_encode = counting.encode

    def failing_encode(tiles):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("simulated crash")
        return real_encode(tiles)

    monkeypatch.setattr(counting, "encode", failing_encode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_slide(sample_copy, out, batch_size=4)
    assert not [p for p in out.glob("*.h5") if not p.name.startswith(".")]
    monkeypatch.setattr(counting, "encode", real_encode)
    before = counting.tiles
    feats = load_features(extract_slide(sample_copy, out, batch_size=4))
    # Checkpoint after 8 batches of 4: only the patches after it, plus the region, are redone.
    assert counting.tiles - before == feats.num_patches - 8 * 4 + feats.num_regions


def test_encoder_runs_inside_reader_threads_only_when_it_says_so(sample_slide, extracted, counting):
    """A thread-parallel CPU encoder is called from the reader threads, anything else from
    the extracting thread; the file is the same either way."""
    feats = load_features(
        extract_slide(sample_slide, extracted.parent / str(counting.thread_parallel), batch_size=8)
    )
    if counting.thread_parallel:
        assert counting.threads and all(t.startswith("hila-tiles") for t in counting.threads)
    else:
        assert counting.threads == {threading.current_thread().name}
    np.testing.assert_array_equal(feats.features, load_features(extracted).features)


def test_reader_thread_layout_follows_the_encoder_and_device(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(extract_mod, "available_cores", lambda: 8)
    descriptor = SimpleNamespace(device=torch.device("cpu"), thread_parallel=True)
    network = SimpleNamespace(device=torch.device("cpu"))
    on_gpu = SimpleNamespace(device=torch.device("cuda"), thread_parallel=True)
    assert extract_mod.encodes_in_reader_threads(descriptor)
    assert not extract_mod.encodes_in_reader_threads(network)
    assert not extract_mod.encodes_in_reader_threads(on_gpu)
    assert extract_mod.read_threads_for(descriptor) == 8  # one per core, each encodes too
    assert extract_mod.read_threads_for(network) == 4  # half the cores left to torch
    assert extract_mod.read_threads_for(on_gpu) == 8


def test_a_worker_share_of_the_cores_limits_the_threads(monkeypatch):
    monkeypatch.delenv(extract_mod.THREADS_ENV, raising=False)
    everything = extract_mod.available_cores()
    monkeypatch.setenv(extract_mod.THREADS_ENV, "1")
    assert extract_mod.available_cores() == 1
    monkeypatch.setenv(extract_mod.THREADS_ENV, str(everything + 5))
    assert extract_mod.available_cores() == everything  # never more than the machine has
    monkeypatch.setenv(extract_mod.THREADS_ENV, "many")
    assert extract_mod.available_cores() == everything  # not a number: ignored


def test_large_views_are_read_in_bands_with_the_same_pixels(sample_slide, monkeypatch):
    """A region view reduced by a whole factor is read band by band (a few MB at a time)
    and equals reducing the whole square; the bands really are smaller reads."""
    from napari_hila.features import tile_reader

    with open_slide(sample_slide) as slide:
        whole = tile_reader.resize_tile(slide.read_region((100, 50), 0, (2048, 2048)), 256)
        whole_edge = tile_reader.resize_tile(slide.read_region((1800, 2500), 0, (4096, 4096)), 256)
        sizes = []
        read = slide.read_region

        def spy(location, level, size):
            sizes.append(size)
            return read(location, level, size)

        monkeypatch.setattr(slide, "read_region", spy)
        banded = tile_reader.read_tile(slide, 100, 50, 2048, 256, level=0)
        edge = tile_reader.read_tile(
            slide, 1800, 2500, 4096, 256, level=0
        )  # reaches past the slide
    np.testing.assert_array_equal(banded, whole)
    assert sizes[:4] == [(2048, tile_reader.BAND_ROWS)] * 4
    np.testing.assert_array_equal(edge, whole_edge)
    assert max(h for _, h in sizes) <= tile_reader.BAND_ROWS
