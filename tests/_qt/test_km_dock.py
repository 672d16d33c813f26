"""Kaplan-Meier dock: cohort curves with the log-rank p, the patient over them, theme."""

from __future__ import annotations

import numpy as np
import pytest
from hila_fake_results import fake_card, fake_result
from matplotlib.colors import to_hex

from napari_hila._qt.km_dock import KaplanMeierDock, km_dock_for

pytestmark = pytest.mark.gui


def test_km_dock_cohort_patient_theme(make_napari_viewer):
    from lifelines.statistics import logrank_test

    viewer = make_napari_viewer(show=True)
    card = fake_card()
    result = fake_result()
    dock = km_dock_for(viewer)
    assert km_dock_for(viewer) is dock  # one per viewer
    dock.show_result(result, card)
    km_ax, risk_ax = dock.figure.axes[:2]
    labels = [line.get_label() for line in km_ax.get_lines()]
    assert any("this slide" in label for label in labels)
    # patient's curve: the model's own S at every finite bin edge, 1 at time 0
    patient = next(line for line in km_ax.get_lines() if "this slide" in line.get_label())
    xs, ys = patient.get_xdata(), patient.get_ydata()
    assert ys[0] == 1.0 and np.all(np.diff(ys) <= 1e-12)
    edges = np.asarray(result.time_bin_edges, float)
    for edge, s in zip(edges[1:], result.explanation.survival, strict=False):
        if np.isfinite(edge) and edge <= xs.max():
            np.testing.assert_allclose(np.interp(edge, xs, ys), s, rtol=1e-6)
    # numbers at risk keep their group's colour after the theme is applied
    from napari_hila.plotting import HIGH_COLOUR, LOW_COLOUR

    rows = [t for t in km_ax.texts if t.get_text().startswith("at risk")]
    assert {t.get_text(): to_hex(t.get_color()) for t in rows} == {
        "at risk, high": HIGH_COLOUR,
        "at risk, low": LOW_COLOUR,
    }
    counts = [t for t in km_ax.texts if t.get_text().isdigit()]
    assert {to_hex(t.get_color()) for t in counts} == {HIGH_COLOUR, LOW_COLOUR}
    # caption and title say the same about how the groups were formed
    assert "grouped by risk above the model's threshold" in dock.message.text()
    assert "risk above threshold" in km_ax.get_title()
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
    assert isinstance(dock, KaplanMeierDock)

    # colours follow the theme; a card without a cohort says so
    viewer.theme = "dark"
    dark = to_hex(dock.figure.get_facecolor())
    viewer.theme = "light"
    light = to_hex(dock.figure.get_facecolor())
    assert dark != light
    assert light == to_hex(viewer.window._qt_window.palette().window().color().name())
    dock.show_result(fake_result(), {"model": "abmil", "label": "no cohort"})
    assert "stores no cohort" in dock.message.text()


def test_km_dock_opened_later_shows_the_current_result(make_napari_viewer):
    from napari_hila._qt.survival_dock import HilaSurvivalDock

    viewer = make_napari_viewer(show=True)
    survival = HilaSurvivalDock(viewer)
    viewer.window.add_dock_widget(survival)
    survival.show_result(fake_result(), card=None)  # no card: no KM dock is opened for it
    assert km_dock_for(viewer, create=False) is None
    from dataclasses import replace

    from napari_hila.modelfile import ModelCard

    survival.shown = replace(survival.shown, card=ModelCard.of(fake_card()))  # the card came
    late = KaplanMeierDock(viewer)
    assert late.result is survival.result and "log-rank" in late.figure.axes[0].get_title()


def test_launched_km_dock_is_readable_and_uses_the_threshold_scale(
    make_napari_viewer, sample_slide, qtbot, tmp_path
):
    """Beside the tall survival dock the KM dock gets real height (not a sliver),
    and its risk histogram is on the scale of the card's threshold."""
    import numpy as np

    from napari_hila._qt.app import launch_viewer, survival_dock_of
    from napari_hila._qt.km_dock import km_dock_for
    from napari_hila._qt.model_picker import demo_model_path
    from napari_hila.modelfile import read_card
    from napari_hila.predict import cohort_reference_risks, predict_slide

    result = predict_slide(sample_slide, demo_model_path(), cache_dir=tmp_path)
    viewer = launch_viewer(sample_slide, result=result, viewer=make_napari_viewer(show=True))
    viewer.window.resize(1600, 1000)
    dock_viewer = survival_dock_of(viewer).viewer  # the docks key on napari's viewer proxy
    dock = km_dock_for(dock_viewer, create=False)
    assert dock is not None
    qtbot.wait(1000)  # let the dock layout settle; before that heights are hints
    # Without a height of its own it gets ~70 px of a 1000 px window.
    assert dock.height() >= 200
    card = read_card(demo_model_path())
    reference = cohort_reference_risks(card)
    assert np.allclose(reference, card["cohort"]["final_model_risk"])
    # The threshold is the median of the final model's risks: half on each side.
    below = np.mean(reference <= card["risk_threshold"])
    assert 0.45 <= below <= 0.55
