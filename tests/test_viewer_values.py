"""The values the viewer shows, Qt-free: survival at clinical times, the group in words,
region maps on their patches, outlines cut at the slide, one progress number."""

from __future__ import annotations

import numpy as np
import pytest
from hila_fake_results import fake_result

from napari_hila import overlays
from napari_hila.results import (
    report_times,
    risk_standing,
    survival_curve_at,
    survival_horizon,
)


def test_survival_curve_is_the_models_piecewise_exponential():
    edges = [0.0, 12.92, 21.85, 32.185, None]  # the demo model's bins, months
    survival = np.array([0.9, 0.7, 0.5, 0.2])
    hazards = 1 - survival / np.r_[1.0, survival[:-1]]
    times = np.array([0.0, 6.0, 12.0, 12.92, 20.0, 32.185, 32.2, 60.0])
    got = survival_curve_at(edges, survival, times)
    # peer: S(t) = exp(-integral of a hazard rate constant inside each bin)
    finite = np.array(edges[:-1] + [np.inf], float)
    rates = -np.log(1 - hazards[:3]) / np.diff(finite[:4])
    expected = []
    for t in times:
        if t > finite[3]:
            expected.append(np.nan)
            continue
        spent = np.clip(t - finite[:3], 0, np.diff(finite[:4]))
        expected.append(np.exp(-(rates * spent).sum()))
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert got[3] == pytest.approx(0.9) and got[5] == pytest.approx(0.5)  # the model's own values
    assert survival_horizon(edges) == pytest.approx(32.185)


def test_report_times_at_one_three_five_years_within_the_horizon():
    assert report_times("months", 32.185) == [
        ("1 year", 12.0),
        ("32.2 months (model horizon)", 32.185),
    ]
    assert report_times("months", 96.0) == [("1 year", 12.0), ("3 years", 36.0), ("5 years", 60.0)]
    assert [t for _, t in report_times("days", 2000.0)] == [365.25, 1095.75, 1826.25]
    assert report_times("visits", 10.0) == [("10 visits (model horizon)", 10.0)]
    result = fake_result()  # edges 0, 12, 24, 48, 96 months
    rows = result.survival_report()
    assert [label for label, _, _ in rows] == ["1 year", "3 years", "5 years"]
    s = np.asarray(result.explanation.survival, float)
    assert rows[0][2] == pytest.approx(s[0])  # 12 months is a bin edge
    assert s[2] < rows[1][2] < s[1]  # 36 months lies inside the third bin


def test_risk_standing_says_the_group_and_the_percentile():
    result = fake_result()
    result.extra["risk_threshold_method"] = "median of the final model's per-patient risk"
    result.risk_group, result.risk_percentile = "high", 67.0
    assert risk_standing(result) == (
        "high-risk group: above the cohort median, 67th percentile of the model's cohort"
    )
    result.risk_group, result.risk_percentile = "low", 21.0
    assert risk_standing(result).startswith("low-risk group: at or below the cohort median, 21st")
    result.extra.pop("risk_threshold_method")
    assert "the model's threshold" in risk_standing(result)


def test_region_map_is_drawn_on_its_patches_and_thresholded():
    result = fake_result()
    patch, region = result.explanation.levels["patch"], result.explanation.levels["region"]
    layout, image = overlays.heatmap_grid(result, "region", "glands")
    own = overlays.grid_layout(patch.coords, patch.tile_size)
    assert (layout.origin, layout.step, layout.shape) == (own.origin, own.step, own.shape)
    values = overlays.heatmap_values(region, "glands")
    np.testing.assert_allclose(image[layout.rows, layout.cols], values[patch.parent])
    assert np.isnan(image).sum() == image.size - len(patch.coords)  # no patch, no colour
    _, cut = overlays.heatmap_grid(result, "patch", 0, threshold=1.0)
    shown = overlays.heatmap_values(patch, 0)
    drawn = cut[layout.rows, layout.cols]
    assert np.isnan(drawn[shown < 1.0]).all()
    np.testing.assert_allclose(drawn[shown >= 1.0], shown[shown >= 1.0])


def test_region_outlines_stop_at_the_slide_edge():
    corners = overlays.clipped_rectangles(np.array([[0, 0], [1024, 2048]]), 1024, (1500, 2500))
    # (row, col) corners on pixel edges: the second region is cut to 1500 x 2500
    np.testing.assert_allclose(corners[0].max(axis=0), [1023.5, 1023.5])
    np.testing.assert_allclose(corners[1].min(axis=0), [2047.5, 1023.5])
    np.testing.assert_allclose(corners[1].max(axis=0), [2499.5, 1499.5])


def test_progress_label_and_bar_say_the_same_number():
    from napari_hila.prediction_job import overall_fraction, stage_text

    for stage, fraction in (("tiles", 0.0), ("tiles", 0.5), ("features", 0.25), ("model", 1.0)):
        percent = 100 * overall_fraction(stage, fraction)
        assert stage_text(stage, fraction).endswith(f": {percent:.0f}% done")
    assert stage_text("tiles", 0.0) == "encoding patches (step 3 of 5): 40% done"
