"""`napari-hila bench viewer`: the display peer is napari's own image layer, the cancel lands."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from napari_hila.bench import viewer as bench_viewer
from napari_hila.slides.synthetic import cached_test_slide


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    return str(cached_test_slide(2048, 2048, cache_dir=tmp_path_factory.mktemp("slides")))


def test_peer_layer_is_the_files_pyramid_with_its_pixels(small_slide, make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    bench_viewer._add_tifffile_zarr_pyramid(viewer, small_slide)
    (layer,) = viewer.layers
    assert layer.multiscale and layer.rgb
    with openslide.OpenSlide(small_slide) as raw:
        shapes = [(h, w, 3) for w, h in raw.level_dimensions]
        expected = np.asarray(raw.read_region((512, 300), 0, (64, 64)).convert("RGB"))
    assert [tuple(level.shape) for level in layer.data] == shapes
    assert np.array_equal(np.asarray(layer.data[0][300:364, 512:576]), expected)


def test_display_benchmark_times_ours_beside_napari_image_layer(small_slide, make_napari_viewer):
    # napari's fixture viewer: a second plain napari.Viewer in one test session registers
    # the plugin's commands twice once the fixture has reset napari's app
    viewer = make_napari_viewer(show=True)
    report = bench_viewer.display_benchmark(small_slide, rounds=1, viewer=viewer)
    assert report["failed"] == []  # both drew the slide every time
    times = report["open_to_first_render_s"]
    assert set(times) >= {"napari_hila_reader", "napari_image_layer_tifffile_zarr"}
    for spread in times.values():
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
    head = report["ours_vs_peer"]
    assert head["ratio"] == "napari_hila_reader/napari_image_layer_tifffile_zarr"
    assert len(head["per_round_ratio"]) == 1
    ours, peer = (
        head["napari_hila_reader_rounds_s"],
        head["napari_image_layer_tifffile_zarr_rounds_s"],
    )
    assert head["per_round_ratio"] == [round(a / b, 4) for a, b in zip(ours, peer, strict=True)]


@pytest.mark.slow
def test_default_cancel_slide_is_cancelled_at_every_delay(tmp_path):
    """The default cancel slide still encodes when the last (0.6 s) cancel comes."""
    from napari_hila.resources import resource_path

    big = str(cached_test_slide(bench_viewer.BIG_SLIDE_PX, bench_viewer.BIG_SLIDE_PX, mpp=0.5))
    model = str(resource_path("demo_model"))
    latency = bench_viewer._cancel_latency(big, model, "cpu", tmp_path / "cache", 0.6)
    assert latency is not None and latency < 5.0


def test_cpu_timings_load_no_qt(tmp_path):
    """`bench viewer` without --gui times the dock's worker function, which imports no Qt."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_hila.bench import viewer\n"
        "from napari_hila.prediction_job import run_prediction\n"
        "from napari_hila.resources import demo_model_path\n"
        f"outcome = run_prediction({str(tmp_path / 'missing.svs')!r}, demo_model_path())\n"
        "assert outcome.error and 'missing.svs' in outcome.error, outcome\n"
        "gui = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'vispy'))\n"
        "print(gui)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
