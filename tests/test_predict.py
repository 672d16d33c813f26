"""Prediction on the bundled sample with the shipped demo model, end to end."""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest
from _single_thread import one_torch_thread  # noqa: F401

from napari_hila.cli import main
from napari_hila.errors import Cancelled
from napari_hila.modelfile import read_card
from napari_hila.predict import predict_slide, risk_group, risk_percentile
from napari_hila.resources import resource_path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, sample_slide):
    """`napari-hila demo --no-viewer` once; the tests below read what it wrote."""
    out = tmp_path_factory.mktemp("demo-output")
    code = main(["demo", "--no-viewer", "--out", str(out), "--device", "cpu"])
    assert code == 0
    return out


def test_demo_writes_every_output(demo_run, capsys):
    summary = json.loads((demo_run / "result.json").read_text())
    assert summary["risk_group"] in ("high", "low")
    assert "not for clinical use" in summary["model_label"]
    card = read_card(resource_path("demo_model"))
    expected = "high" if summary["risk"] > card["risk_threshold"] else "low"
    assert summary["risk_group"] == expected
    assert 0 <= summary["risk_percentile"] <= 100
    assert any("synthetic" in w for w in summary["warnings"])
    for name in (
        "thumbnail.png",
        "selection_patch.png",
        "selection_region.png",
        "km.png",
        "contributions.png",
    ):
        assert (demo_run / name).stat().st_size > 1000, name
    n_prompts = len(card["config"]["patch_prompt_names"]) + len(
        card["config"]["region_prompt_names"]
    )
    assert len(list(demo_run.glob("heatmap_*.png"))) == n_prompts


def test_demo_geojson_and_csv_match_the_result(demo_run):
    from napari_hila.results import PredictionResult

    result = PredictionResult.load(demo_run)
    patch = result.explanation.levels["patch"]
    region = result.explanation.levels["region"]
    data = json.loads((demo_run / "patches.geojson").read_text())
    kinds = [f["properties"]["objectType"] for f in data["features"]]
    assert kinds.count("detection") == len(patch.coords) > int(patch.selected.sum()) > 0
    assert kinds.count("annotation") == len(region.coords)
    with open(demo_run / "patch_scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(patch.coords) + len(region.coords)
    # region_px is 1024 on the demo model's grid (the sample is smaller than one 4096 px region)
    assert region.tile_size >= 1000 and len(region.coords) > 1


def test_predict_reuses_the_cache_and_matches(demo_run, sample_slide):
    from napari_hila.results import PredictionResult

    first = PredictionResult.load(demo_run)
    stages = []
    again = predict_slide(
        sample_slide,
        resource_path("demo_model"),
        cache_dir=demo_run / "feature-cache",
        device="cpu",
        progress=lambda stage, f: stages.append(stage),
    )
    assert "tiles" not in stages  # features came from the cache
    assert again.risk == pytest.approx(first.risk, abs=1e-5)
    np.testing.assert_array_equal(
        again.explanation.levels["patch"].selected, first.explanation.levels["patch"].selected
    )


def test_cancel_stops_prediction(demo_run, sample_slide):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        predict_slide(
            sample_slide,
            resource_path("demo_model"),
            cache_dir=demo_run / "feature-cache",
            cancel=cancel,
        )


def test_predict_command_with_bad_model_is_one_clear_error(tmp_path, sample_slide, capsys):
    code = main(
        ["predict", str(sample_slide), "--model", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(tmp_path) in err and "card.json" in err


def test_risk_group_and_percentile():
    assert (
        risk_group(1.0, 0.5) == "high"
        and risk_group(0.5, 0.5) == "low"
        and risk_group(1.0, None) is None
    )
    assert risk_percentile(2.0, [1, 2, 3, 4]) == 50.0
    assert risk_percentile(0.0, []) is None


def test_predict_mpp_supplies_the_pixel_size_of_a_slide_without_one(tmp_path, capsys):
    from napari_hila.results import PredictionResult
    from napari_hila.slides.synthetic import write_test_slide

    slide = write_test_slide(tmp_path / "nompp.tif", 2400, 1800, layout="flat", mpp=None)
    model, cache = resource_path("demo_model"), tmp_path / "cache"
    assumed = predict_slide(slide, model, cache_dir=cache, device="cpu")
    assert assumed.mpp == 0.5 and assumed.extra["mpp_source"] == "assumed"
    assert any("0.5 um/px was assumed" in w for w in assumed.warnings)
    out = tmp_path / "out"
    argv = ["predict", str(slide), "--model", str(model), "--out", str(out)]
    assert main([*argv, "--cache", str(cache), "--device", "cpu", "--mpp", "0.25"]) == 0
    result = PredictionResult.load(out)
    assert result.mpp == 0.25 and result.extra["mpp_source"] == "user"
    assert not any("assumed" in w for w in result.warnings)
    assert result.explanation.levels["patch"].tile_size == 512  # the grid follows the mpp
    assert assumed.explanation.levels["patch"].tile_size == 256
    assert len(list(cache.glob("*.h5"))) == 2  # the assumed features were not reused
