"""`napari-hila bench train`: the models alternate, one fresh process per run."""

from __future__ import annotations

import argparse
import statistics

import pytest

from napari_hila.bench import train as bench_train


@pytest.mark.slow  # four fresh processes, each importing torch: about 20 s
def test_bench_train_alternates_models_and_compares_them_per_round():
    parser = argparse.ArgumentParser()
    bench_train.add_arguments(parser)
    args = parser.parse_args(
        ["--slides", "3", "--patches", "200", "--dim", "32", "--rounds", "2", "--threads", "1"]
    )
    result = bench_train.run(args)
    assert result["settings"]["rounds"] == 2
    for name in ("hila", "abmil"):
        row = result["results"][name]
        rounds = row["seconds_per_epoch_rounds"]
        assert len(rounds) == 2 and all(t > 0 for t in rounds)
        assert row["seconds_per_epoch"] == pytest.approx(statistics.median(rounds), abs=1e-3)
        assert row["seconds_per_epoch_spread"]["min"] == pytest.approx(min(rounds), abs=1e-3)
        assert len(row["peak_rss_gb_rounds"]) == 2 and row["torch_threads"] == 1
    versus = result["hila_vs_abmil"]
    assert versus["ratio"] == "hila/abmil" and len(versus["per_round_ratio"]) == 2
