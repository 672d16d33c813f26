"""Prediction outputs: QuPath GeoJSON, CSV, aligned PNGs, Kaplan-Meier and contribution plots."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_hila.errors import Cancelled, ModelFileError
from napari_hila.export import (
    NO_PIXELS_NOTE,
    token_raster,
    write_csv,
    write_geojson,
    write_prediction_folder,
    write_prediction_outputs,
)
from napari_hila.plotting import plot_cohort_km, plot_prompt_contributions
from napari_hila.results import Explanation, LevelExplanation, PredictionResult, PromptContribution


def make_result(seed=0):
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(6) * 256, np.arange(4) * 256)
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    m = len(coords)
    patch = LevelExplanation(
        "patch",
        coords,
        256,
        rng.random(m).astype(np.float32),
        np.arange(m) % 3 == 0,
        rng.random((m, 2)).astype(np.float32),
        ["dense nuclei", "stroma"],
        ["text a", "text b"],
        parent=(coords[:, 0] >= 768).astype(np.int64),
    )
    region = LevelExplanation(
        "region",
        np.array([[0, 0], [768, 0]]),
        768,
        np.array([0.2, 0.9], np.float32),
        np.array([False, True]),
        np.array([[0.3], [0.7]], np.float32),
        ["solid sheets"],
        ["text c"],
    )
    exp = Explanation(
        risk=-2.0,
        hazards=np.array([0.1, 0.2, 0.3, 0.4], np.float32),
        survival=np.array([0.9, 0.72, 0.5, 0.3], np.float32),
        levels={"patch": patch, "region": region},
        contributions=[
            PromptContribution("patch", "dense nuclei", "text a", 0.3),
            PromptContribution("region", "solid sheets", "text c", -0.1),
        ],
        contribution_method="leave-one-out",
    )
    return PredictionResult(
        "slide.svs",
        "abc",
        0.5,
        "hila",
        "test (synthetic)",
        "/m",
        exp,
        np.array([0, 5, 10, 20, np.inf]),
        risk_threshold=-2.5,
        risk_group="high",
        risk_percentile=70.0,
    )


def make_card(seed=1, n=60):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(20 * np.exp(-risk))
    return {
        "model": "hila",
        "label": "test model (synthetic)",
        "time_unit": "months",
        "risk_threshold": 0.0,
        "time_bin_edges": [0, 5, 10, 20, None],
        "cohort": {
            "time": time.tolist(),
            "event": (rng.random(n) < 0.7).astype(int).tolist(),
            "risk": risk.tolist(),
            "risk_group": ["high" if r > 0 else "low" for r in risk],
        },
    }


def test_geojson_has_every_tile_with_its_selection_and_the_shown_values(tmp_path):
    from napari_hila import overlays
    from napari_hila.export import iter_geojson_features

    result = make_result()
    path = write_geojson(result, tmp_path / "p.geojson")
    features = list(iter_geojson_features(result))
    assert len(features) == sum(len(lv.coords) for lv in result.explanation.levels.values())
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    # written feature by feature, the text of the whole collection in one json.dumps
    assert path.read_text() == json.dumps({"type": "FeatureCollection", "features": features})
    det = [f for f in data["features"] if f["properties"]["objectType"] == "detection"]
    ann = [f for f in data["features"] if f["properties"]["objectType"] == "annotation"]
    patch = result.explanation.levels["patch"]
    assert len(det) == len(patch.coords) and len(ann) == 2  # left-out tiles are there too
    names = [f["properties"]["classification"]["name"] for f in det]
    assert names == ["Selected patch" if s else "Not selected patch" for s in patch.selected]
    i = int(np.flatnonzero(patch.selected)[0])
    first = det[i]
    assert first["geometry"]["type"] == "Polygon"
    ring = np.array(first["geometry"]["coordinates"][0])
    x, y = patch.coords[i]
    assert ring[0].tolist() == [x, y] and ring[2].tolist() == [x + 256, y + 256]
    assert ring[0].tolist() == ring[-1].tolist()
    props = first["properties"]
    # colours are the viewer's: selected = the region outline yellow, left out = the grey veil
    assert props["classification"]["color"] == [
        round(255 * c) for c in overlays.REGION_SELECTED_RGBA[:3]
    ]
    j = int(np.flatnonzero(~patch.selected)[0])
    assert det[j]["properties"]["classification"]["color"] == [
        round(255 * c) for c in overlays.UNSELECTED_RGBA[:3]
    ]
    assert set(props["measurements"]) == {
        "alignment score (raw)",
        "selected (1 yes, 0 no)",
        "dense nuclei (x uniform share)",
        "stroma (x uniform share)",
        "dense nuclei (raw plan value)",
        "stroma (raw plan value)",
    }
    # the values the viewer shows: each map relative to a uniform share; the raw ones beside
    shown = patch.maps[i, 1] / patch.maps[:, 1].mean()
    assert props["measurements"]["stroma (x uniform share)"] == pytest.approx(shown, rel=1e-5)
    assert props["measurements"]["stroma (raw plan value)"] == pytest.approx(patch.maps[i, 1])
    assert props["measurements"]["selected (1 yes, 0 no)"] == 1.0
    assert ann[1]["properties"]["classification"]["name"] in (
        "Selected region",
        "Not selected region",
    )


def test_csv_has_every_token(tmp_path):
    result = make_result()
    with open(write_csv(result, tmp_path / "s.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 + 2
    patch_rows = [r for r in rows if r["level"] == "patch"]
    lv = result.explanation.levels["patch"]
    assert [int(r["selected"]) for r in patch_rows] == lv.selected.astype(int).tolist()
    shown = lv.maps[5, 1] / lv.maps[:, 1].mean()  # as the viewer shows it
    assert float(patch_rows[5]["stroma (x uniform share)"]) == pytest.approx(shown, rel=1e-5)
    assert float(patch_rows[5]["stroma (raw plan value)"]) == pytest.approx(lv.maps[5, 1], rel=1e-5)
    assert patch_rows[5]["solid sheets (x uniform share)"] == ""


def test_token_raster_aligns_tiles_to_thumbnail_pixels():
    lv = make_result().explanation.levels["patch"]
    values, mask = token_raster(lv, np.arange(24, dtype=np.float32), (64, 96), downsample=16.0)
    assert mask.all()
    # tile 7 is at x=256, y=256 -> thumbnail pixels [16:32, 16:32]
    assert (values[16:32, 16:32] == 7).all() and values[15, 15] == 0


def test_all_outputs_written(tmp_path):
    result = make_result()
    thumb = np.full((64, 96, 3), 240, np.uint8)
    with pytest.raises(ValueError, match="slide_size"):  # the maps' scale is unknown
        write_prediction_outputs(result, tmp_path / "no-size", card=make_card(), thumbnail=thumb)
    # the result's 6 x 4 tiles of 256 px on a 1536 x 1024 px slide: 16 px per thumbnail px
    written = write_prediction_outputs(
        result, tmp_path, card=make_card(), thumbnail=thumb, slide_size=(1536, 1024)
    )
    for key in ("result", "geojson", "csv", "thumbnail", "selection_patch", "km", "contributions"):
        assert written[key].exists(), key
    from PIL import Image

    heat = Image.open(written["heatmap_patch_stroma"])
    assert heat.size == (96, 64)
    assert len([k for k in written if k.startswith("heatmap_")]) == 3
    assert PredictionResult.load(tmp_path).risk_group == "high"


def test_prediction_folder_replaces_the_earlier_outputs_at_once(tmp_path):
    """predict's folder: an earlier run's map goes, a user's own file stays, the paths
    returned are the final ones; a cancel or an unreadable card writes nothing."""
    import threading

    out = tmp_path / "out"
    out.mkdir()
    (out / "heatmap_patch_old prompt.png").write_bytes(b"an earlier model's map")
    (out / "notes.txt").write_text("mine")
    written = write_prediction_folder(make_result(), out, make_card())  # slide.svs is absent
    assert {p.parent for p in written.values()} == {out} and all(
        p.exists() for p in written.values()
    )
    kept = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert kept == {p.name for p in written.values()} | {"result.npz", "notes.txt"}
    assert "thumbnail" not in written  # no pixels: the result says so
    assert NO_PIXELS_NOTE in PredictionResult.load(out).warnings

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        write_prediction_folder(make_result(), tmp_path / "cancelled", make_card(), cancel=cancel)
    with pytest.raises(ModelFileError, match="card.json"):  # default card: the result's model
        write_prediction_folder(make_result(), tmp_path / "no-card")
    assert not (tmp_path / "cancelled").exists() and not (tmp_path / "no-card").exists()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_km_plot_numbers_match_lifelines():
    from lifelines.statistics import logrank_test

    card = make_card()
    info = plot_cohort_km(
        card, patient_survival=(np.array([0, 5, 10, 20, np.inf]), np.array([0.9, 0.7, 0.5, 0.3]))
    )
    t = np.array(card["cohort"]["time"])
    e = np.array(card["cohort"]["event"])
    high = np.array(card["cohort"]["risk"]) > 0
    assert info["logrank_p"] == pytest.approx(
        logrank_test(t[high], t[~high], e[high], e[~high]).p_value
    )
    assert info["n_high"] == high.sum()
    assert info["at_risk_high"][0] == high.sum() and info["at_risk_low"][0] == (~high).sum()


def test_km_plot_draws_the_worked_example_numbers():
    """The log-rank example (tests/test_survival_metrics.py) as a card: the figure shows its numbers."""
    card = {
        "time_unit": "months",
        "risk_threshold": 0.0,
        "cohort": {
            "time": [1, 2, 3, 5, 2, 4, 5, 6],
            "event": [1, 1, 1, 1, 0, 0, 1, 0],
            "risk": [1.0] * 4 + [-1.0] * 4,
        },
    }
    from matplotlib.figure import Figure

    ax = Figure().add_subplot(1, 1, 1)
    info = plot_cohort_km(card, ax=ax, at_risk_rows=4)
    assert info["logrank_p"] == pytest.approx(0.040445, abs=1e-6)
    assert (info["median_high"], info["median_low"]) == (2.0, 5.0)
    assert info["at_risk_times"] == [0, 2, 4, 6]
    assert (info["at_risk_high"], info["at_risk_low"]) == ([4, 3, 1, 0], [4, 4, 3, 1])
    assert ax.get_title() == "log-rank p = 0.0404 (risk above threshold)"
    drawn = [t.get_text() for t in ax.texts]
    assert drawn == ["at risk, high", "4", "3", "1", "0", "at risk, low", "4", "4", "3", "1"]
    assert [line.get_label() for line in ax.get_legend().get_lines()] == [
        "high risk (n=4)",
        "low risk (n=4)",
    ]


def test_contribution_plot_ranks_by_size():
    info = plot_prompt_contributions(make_result())
    assert info["names"] == ["dense nuclei", "solid sheets"]
    assert info["delta_risk"] == pytest.approx([0.3, -0.1])


def _edge_result(slide_path: str = "slide.svs") -> PredictionResult:
    """The example result with its regions moved to the slide's far edges: 4096 px regions at
    x = 4096 and y = 4096 run to 8192 px, past a 5000 px slide."""
    result = make_result()
    result.slide_path = slide_path
    region = result.explanation.levels["region"]
    region.coords = np.array([[4096, 0], [0, 4096]])
    region.tile_size = 4096
    return result


def _rings(path) -> dict[str, np.ndarray]:
    features = json.loads(path.read_text())["features"]
    return {f["properties"]["name"]: np.array(f["geometry"]["coordinates"][0]) for f in features}


def test_geojson_and_csv_rectangles_stop_at_the_slide_edge(tmp_path):
    result = _edge_result()
    rings = _rings(write_geojson(result, tmp_path / "cut.geojson", slide_size=(5000, 5000)))
    assert rings["region 0"].tolist() == [[4096, 0], [5000, 0], [5000, 4096], [4096, 4096]] + [
        [4096, 0]
    ]
    assert rings["region 1"][:, 0].max() == 4096 and rings["region 1"][:, 1].max() == 5000
    assert all(ring.max() <= 5000 for ring in rings.values())
    patch = result.explanation.levels["patch"]  # inside the slide: whole squares
    assert (np.ptp(rings["patch 7"], axis=0) == 256).all()
    assert rings["patch 7"][0].tolist() == patch.coords[7].tolist()
    # without the slide's size nothing is known to cut: the grid's squares
    whole = _rings(write_geojson(result, tmp_path / "whole.geojson"))
    assert whole["region 0"][:, 0].max() == 8192

    with open(write_csv(result, tmp_path / "cut.csv", slide_size=(5000, 5000))) as fh:
        rows = [r for r in csv.DictReader(fh) if r["level"] == "region"]
    assert [(r["x"], r["y"], r["size"], r["width"], r["height"]) for r in rows] == [
        ("4096", "0", "4096", "904", "4096"),
        ("0", "4096", "4096", "4096", "904"),
    ]


def test_prediction_outputs_cut_rectangles_at_the_slide_read(tmp_path):
    """write_prediction_outputs takes the size from the slide it reads (5000 x 1200 px)."""
    import tifffile

    slide, um_per_px = (
        tmp_path / "wide.tif",
        {"resolution": (2e4, 2e4), "resolutionunit": "CENTIMETER"},
    )
    pixels = np.full((1200, 5000, 3), 230, np.uint8)
    tifffile.imwrite(slide, pixels, tile=(256, 256), compression="zlib", **um_per_px)
    written = write_prediction_outputs(_edge_result(str(slide)), tmp_path / "out")
    rings = _rings(written["geojson"])
    assert rings["region 0"][:, 0].max() == 5000 and rings["region 0"][:, 1].max() == 1200
    assert max(ring[:, 0].max() for ring in rings.values()) == 5000
    with open(written["csv"]) as fh:
        region = [r for r in csv.DictReader(fh) if r["level"] == "region"][0]
    assert (region["width"], region["height"]) == ("904", "1200")
