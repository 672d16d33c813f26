"""`napari-hila bench survival`: the C-index against lifelines and scikit-survival."""

from __future__ import annotations

import argparse

import pytest

from napari_hila.bench import survival as bench_survival


def test_bench_survival_times_equal_c_indices_interleaved():
    parser = argparse.ArgumentParser()
    bench_survival.add_arguments(parser)
    args = parser.parse_args(["--samples", "3000", "--sksurv-samples", "800", "--repeats", "2"])
    result = bench_survival.run(args)
    big, small = result["c_index"], result["c_index_with_sksurv"]
    assert big["samples"] == 3000 and small["samples"] == 800
    assert set(big["c_index"]) == {"ours", "lifelines"}
    assert set(small["c_index"]) == {"ours", "lifelines", "sksurv"}
    assert big["equal"] and small["equal"]
    assert small["c_index"]["sksurv"] == pytest.approx(small["c_index"]["ours"], abs=1e-12)
    versus = big["vs_lifelines"]
    assert versus["ratio"] == "ours/lifelines" and len(versus["per_round_ratio"]) == 2
    assert versus["goal"] == "<= 2.0"
    assert result["pass"] == (versus["pass"] and big["equal"] and small["equal"])
    assert small["vs_sksurv"]["ratio"] == "ours/sksurv"


def test_synthetic_cohort_ties_times_and_risks():
    time, event, risk = bench_survival.synthetic_cohort(5000, 50, seed=1)
    assert len(set(time)) <= 50 and len(set(risk)) < 200
    assert 0.35 < event.mean() < 0.45
