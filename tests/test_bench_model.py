"""`napari-hila bench model`: the interleaved head-to-heads on a small synthetic slide."""

from __future__ import annotations

import argparse
import statistics

import pytest

from napari_hila.bench import model as bench_model


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_model.add_arguments(parser)
    return parser.parse_args(
        ["--patches", "500", "--regions", "8", "--repeats", "2", "--sinkhorn-batch", "2", *extra]
    )


def _check_head_to_head(part: dict, rounds: int) -> None:
    hila, abmil = part["hila_rounds_s"], part["abmil_rounds_s"]
    assert len(hila) == len(abmil) == rounds
    assert all(t > 0 for t in hila + abmil)
    assert part["hila_median_s"] == pytest.approx(statistics.median(hila), rel=1e-3)
    assert part["abmil_median_s"] == pytest.approx(statistics.median(abmil), rel=1e-3)
    # ratio_of_medians is defined as the medians' quotient ...
    assert part["ratio_of_medians"] == pytest.approx(
        part["hila_median_s"] / part["abmil_median_s"], rel=1e-3
    )
    # ... the per-round ratio as each round's quotient, summarised by median, min and max.
    for ratio, h, a in zip(part["per_round_ratio"], hila, abmil, strict=True):
        assert ratio == pytest.approx(h / a, rel=1e-3)
    ratios = part["per_round_ratio"]
    assert part["per_round_ratio_median"] == pytest.approx(statistics.median(ratios), rel=1e-3)
    assert part["per_round_ratio_min"] == pytest.approx(min(ratios), rel=1e-3)
    assert part["per_round_ratio_max"] == pytest.approx(max(ratios), rel=1e-3)
    assert part["goal"] == "<= 3.0"
    assert part["pass"] == (part["per_round_ratio_median"] <= 3.0)


def test_interleaved_hila_vs_abmil_and_explanation_in_one_process():
    args = _args("--models", "hila", "abmil", "--threads", "1")
    settings = bench_model.interleaved_settings(args)
    assert settings["rounds"] == 2 and settings["head_to_head_threads"] == 1
    result = bench_model.measure_interleaved(settings, hila=True, abmil=True)
    assert "error" not in result, result
    assert result["torch_threads"] == 1 and result["rounds"] == 2 and result["patches"] == 500

    head_to_head = result["hila_vs_abmil"]
    for part in ("forward_backward", "forward"):
        _check_head_to_head(head_to_head[part], rounds=2)
    assert head_to_head["pass"] == all(
        head_to_head[part]["pass"] for part in ("forward_backward", "forward")
    )

    explanation = result["hila_explanation"]
    assert explanation["baseline_fitted"] is True
    assert explanation["explanation_resamples"] >= 0
    assert explanation["forward_s"] > 0
    forward = explanation["forward_rounds_s"]
    for label in ("explain", "explain_resamples_0"):
        rounds = explanation[f"{label}_rounds_s"]
        assert len(rounds) == 2 and all(t > 0 for t in rounds)
        assert explanation[f"{label}_s"] == pytest.approx(statistics.median(rounds), rel=1e-3)
        multiples = [t / f for t, f in zip(rounds, forward, strict=True)]
        spread = explanation[f"{label}_over_forward"]
        assert spread["median"] == pytest.approx(statistics.median(multiples), abs=1e-3)
        assert spread["min"] <= spread["median"] <= spread["max"]
        assert explanation[f"{label}_over_forward_of_medians"] == pytest.approx(
            explanation[f"{label}_s"] / explanation["forward_s"], rel=1e-3
        )


def test_run_adds_the_interleaved_keys_beside_the_per_model_table(monkeypatch):
    # The per-model table (a process per model) and the Sinkhorn comparison (POT's import
    # alone takes seconds) are unchanged and stubbed here to keep this fast.
    row = {"forward_s": 0.1, "forward_backward_s": 0.2}
    monkeypatch.setattr(
        bench_model, "measure_models", lambda names, settings: {n: dict(row) for n in names}
    )
    monkeypatch.setattr(
        bench_model, "compare_sinkhorn", lambda args, sizes, eps, rounds: {"tokens": sizes}
    )
    result = bench_model.run(_args("--models", "hila", "abmil"))
    assert set(result["models"]) == {"hila", "abmil"}
    assert "hila_over_abmil" in result and "sinkhorn" in result  # the existing keys stay
    assert result["settings"]["repeats"] == 2
    assert result["interleaved"]["torch_threads"] == 1  # --threads unset: 1 for these parts
    assert result["interleaved"]["rounds"] == 2
    assert set(result["hila_vs_abmil"]) >= {"forward_backward", "forward", "goal", "pass"}
    assert result["hila_explanation"]["explain_s"] > 0
    sinkhorn = result["sinkhorn"]
    assert {f"{p}_eps_{e}" for p in ("one_slide", "batch") for e in ("0.1", "0.01")} <= set(
        sinkhorn
    )


def test_quick_models_by_default_and_all_on_request():
    from napari_hila.models import available_models

    assert bench_model.benchmark_models(_args()) == ["hila", "abmil"]
    every = bench_model.benchmark_models(_args("--models", "all"))
    assert {"hila", "abmil"} < set(every) <= set(available_models())
    assert bench_model.benchmark_models(_args("--models", "transmil")) == ["transmil"]


def test_sinkhorn_comparison_is_against_converged_pot_at_equal_checks():
    args = _args("--prompts", "8", "--width", "32")
    result = bench_model.compare_sinkhorn(args, [300, 120], eps=0.1, rounds=2)
    methods = result["methods"]
    assert set(methods) == {"ours", "ours_every_sweep", "pot_plain", "pot_stabilized", "pot_log"}
    for label in ("ours", "pot_plain", "pot_log"):
        row = methods[label]
        assert row["converged"] and row["max_l2_column_error"] <= args.tol
        # POT's schedule: the error is looked at after sweeps 1, 11, 21, ...
        assert all((s - 1) % 10 == 0 for s in row["sweeps"])
        assert len(row["seconds"]) == 3 and row["seconds"]["min"] > 0
    # ours reports the slowest slide's sweeps for the whole batch
    assert max(methods["pot_plain"]["sweeps"]) == max(methods["ours"]["sweeps"])
    difference = methods["pot_plain"]["max_abs_plan_difference_vs_ours"]
    assert difference < 1e-3 * result["mean_plan_entry"]
    versus = result["ours_vs_fastest_pot"]
    fastest = result["fastest_converged_pot"]
    assert versus["ratio"] == f"ours/{fastest}"
    medians = {
        label: methods[label]["seconds"]["median"]
        for label in methods
        if "seconds" in methods[label]
    }
    assert fastest == min((label for label in medians if label.startswith("pot")), key=medians.get)
    assert versus["pass"] == (versus["per_round_ratio_median"] <= 1.0)
