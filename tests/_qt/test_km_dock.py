"""Kaplan-Meier dock: cohort curves with the log-rank p, the patient over them, theme."""

from __future__ import annotations

import numpy as np
import pytest
from hila_fake_results import fake_result
from matplotlib.colors import to_hex

from napari_hila._qt.km_dock import KaplanMeierDock, km_dock_for

pytestmark = pytest.mark.gui


def make_card(n: int = 60, seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    risk = rng.normal(-2.5, 0.4, n)
    time = rng.exponential(40 * np.exp(-(risk + 2.5) * 2))  # higher risk, shorter time
    event = (rng.random(n) < 0.7).astype(int)
    return {
        "model": "hila",
        "label": "HiLa (test cohort, not for clinical use)",
        "risk_threshold": float(np.median(risk)),
        "time_unit": "months",
        "time_bin_edges": [0.0, 12.0, 24.0, 48.0, 96.0],
        "cohort": {"risk": risk.tolist(), "time": time.tolist(), "event": event.tolist()},
    }


def test_km_dock_draws_cohort_and_patient(make_napari_viewer):
    from lifelines.statistics import logrank_test

    viewer = make_napari_viewer(show=True)
    card = make_card()
    result = fake_result()
    dock = km_dock_for(viewer)
    assert km_dock_for(viewer) is dock  # one per viewer
    dock.show_result(result, card)
    km_ax, risk_ax = dock.figure.axes[:2]
    labels = [line.get_label() for line in km_ax.get_lines()]
    assert any("this slide" in label for label in labels)
    # patient's curve: S = 1 then the predicted survival per bin
    patient = next(line for line in km_ax.get_lines() if "this slide" in line.get_label())
    np.testing.assert_allclose(patient.get_ydata(), np.r_[1.0, result.explanation.survival])
    # log-rank p in the caption agrees with lifelines on the same split
    cohort = card["cohort"]
    high = np.asarray(cohort["risk"]) > card["risk_threshold"]
    time, event = np.asarray(cohort["time"]), np.asarray(cohort["event"])
    peer = logrank_test(time[high], time[~high], event[high], event[~high]).p_value
    assert f"p = {peer:.3g}" in dock.message.text()
    # the patient's risk is marked on the cohort's distribution
    xs = [line.get_xdata()[0] for line in risk_ax.get_lines()]
    assert result.risk in xs and card["risk_threshold"] in xs
    assert "71st percentile" in risk_ax.get_title()


def test_km_dock_follows_theme_and_handles_missing_cohort(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    dock = KaplanMeierDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.show_result(fake_result(), make_card())
    viewer.theme = "dark"
    dark = to_hex(dock.figure.get_facecolor())
    viewer.theme = "light"
    light = to_hex(dock.figure.get_facecolor())
    assert dark != light
    assert light == to_hex(viewer.window._qt_window.palette().window().color().name())
    dock.show_result(fake_result(), {"model": "abmil", "label": "no cohort"})
    assert "stores no cohort" in dock.message.text()
