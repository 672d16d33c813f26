"""Explanations judged on planted truth: scripts/verify_explanations.py end to end.

The slow tests run the full verification with the issue's thresholds (marked
ISSUE below). The fast test runs the same pipeline (CLI train, CLI predict
FOLDER, scoring, controls) on a small cohort with few epochs and asserts weaker
bounds, calibrated on that small run; they catch a pipeline or explanation that
breaks, not a model that is slightly worse.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from _single_thread import one_torch_thread  # noqa: F401

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "verify_explanations.py"


def _verify(argv: list[str]) -> dict:
    spec = importlib.util.spec_from_file_location("verify_explanations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def _requirement(report: dict, start: str) -> dict:
    return next(r for r in report["requirements"] if r["name"].startswith(start))


def test_small_planted_cohort_end_to_end(tmp_path):
    report = _verify(
        ["--work", str(tmp_path), "--patients", "60", "--epochs", "6", "--folds", "2"]
        + ["--lr", "1e-3", "--controls", "--quiet"]
    )
    exp = report["explanation"]
    # Weaker than the issue's, calibrated on this run (40 training patients, 6 epochs,
    # 20 held-out slides): there the lowering prompt ranked first with rho ~ -0.9, the
    # raising one ranked 4th to 7th (too little data for it), maps had AUC ~1.0, |r| ~0.17.
    assert report["models"]["hila"]["ratio_to_oracle"] > 0.7
    assert min(exp["planted_ranks"]) <= 2
    assert exp["sign"]["lowering_spearman_contribution_vs_abundance"] < -0.5
    for name in exp["planted"].values():
        assert exp["map_auc_median"][name] > 0.75
    assert exp["inter_prompt_abs_r_median"] < 0.5  # ISSUE's bound
    assert exp["map_rows_matched_to_tiles"] == 1.0
    # completeness is exact arithmetic: the issue's 1% holds on any cohort (ISSUE)
    assert exp["completeness"]["max_error_over_risk_sd"] < 0.01
    assert exp["completeness"]["slides_without_baseline"] == 0
    assert report["controls"]["occlusion"]["pass"]
    assert report["controls"]["reinitialised"]["pass"]


@pytest.mark.slow
def test_planted_truth_issue_thresholds(tmp_path):
    """ISSUE: held-out C >= 0.9 x oracle; planted prompts top two with the right signs; map
    AUC >= 0.85; inter-prompt |r| < 0.5; completeness < 1% of the risk SD; the controls."""
    report = _verify(["--work", str(tmp_path), "--controls", "--quiet"])
    failed = [r for r in report["requirements"] if not r["pass"]]
    assert not failed, failed


@pytest.mark.slow
def test_clam_layout_hila_beats_the_patch_models(tmp_path):
    """ISSUE: on the patch-only CLAM layout, hila >= 0.95 x oracle and above hila-patch, abmil."""
    report = _verify(
        ["--work", str(tmp_path), "--layout", "clam", "--models", "hila,hila-patch,abmil"]
        + ["--quiet"]
    )
    assert _requirement(report, "held-out C-index of hila")["pass"]
    assert _requirement(report, "hila above hila-patch")["pass"]
    assert _requirement(report, "hila above abmil")["pass"]
