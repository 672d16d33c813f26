"""C-index against lifelines and scikit-survival, interleaved in one process.

On a synthetic cohort (``--samples`` patients, default 100,000; integer times
over ``--distinct-times`` values and risks rounded to one decimal, so both tie
a lot, as follow-up in months and binned risk scores do; 40% events), each
round runs ours and the peers one after another (A, B, C, A, B, C ...), the
first run of each (which gives the values) serving as warm-up:
:func:`napari_hila.survival.metrics.concordance_index` against lifelines'
``concordance_index`` (on ``-risk``: it scores survival times) at
``--samples``, and against lifelines and scikit-survival's
``concordance_index_censored`` at ``--sksurv-samples`` (its pair loop is
quadratic; 100,000 would take minutes). The C-indices must be equal, else the
timing would be of different work.

Kaplan-Meier is not timed: ``survival.km.kaplan_meier`` is lifelines'
``KaplanMeierFitter`` with its result copied into plain arrays.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from napari_hila.bench.timing import head_to_head, interleave, spread
from napari_hila.survival.metrics import concordance_index

# Imported where used, not here: lifelines (2.1 s; every napari-hila command imports
# this module to build its parser, tests/test_startup_imports.py) and scikit-survival
# (an optional peer, in the dev extra only).

GOAL_OVER_LIFELINES = 2.0  # the C-index at 100,000: at most 2x lifelines' time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=100_000, help="patients (100000)")
    parser.add_argument(
        "--sksurv-samples",
        type=int,
        default=10_000,
        help="patients for the scikit-survival comparison (10000; its C-index is quadratic)",
    )
    parser.add_argument(
        "--distinct-times", type=int, default=400, help="distinct follow-up times (400)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cohort")


def synthetic_cohort(n: int, distinct_times: int, seed: int):
    """Tied integer times, 40% events and one-decimal risks that track the times."""
    rng = np.random.default_rng(seed)
    time = rng.integers(1, distinct_times + 1, n).astype(float)
    event = rng.random(n) < 0.4
    risk = np.round(rng.normal(size=n) - time / distinct_times, 1)
    return time, event, risk


def _cindex(n: int, args: argparse.Namespace, with_sksurv: bool) -> dict[str, Any]:
    from lifelines.utils import concordance_index as lifelines_cindex

    time, event, risk = synthetic_cohort(n, args.distinct_times, args.seed)
    steps = {
        "ours": lambda: concordance_index(time, event, risk),
        "lifelines": lambda: lifelines_cindex(time, -risk, event),
    }
    if with_sksurv:
        from sksurv.metrics import concordance_index_censored

        steps["sksurv"] = lambda: concordance_index_censored(event, time, risk)[0]
    values = {label: float(step()) for label, step in steps.items()}
    times = interleave(steps, args.repeats, warm_up=False)  # the value run was the warm-up
    out: dict[str, Any] = {
        "samples": n,
        "events": int(event.sum()),
        "c_index": values,
        "equal": all(abs(v - values["ours"]) < 1e-12 for v in values.values()),
        "seconds": {label: spread(t, 6) for label, t in times.items()},
        "vs_lifelines": head_to_head("ours", "lifelines", times, GOAL_OVER_LIFELINES),
    }
    if with_sksurv:
        out["vs_sksurv"] = head_to_head("ours", "sksurv", times)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    big = _cindex(args.samples, args, with_sksurv=False)
    small = _cindex(args.sksurv_samples, args, with_sksurv=True)
    return {
        "settings": {
            "samples": args.samples,
            "sksurv_samples": args.sksurv_samples,
            "distinct_times": args.distinct_times,
            "rounds": args.repeats,
            "seed": args.seed,
        },
        "c_index": big,
        "c_index_with_sksurv": small,
        "kaplan_meier": "not timed: survival.km.kaplan_meier is lifelines' KaplanMeierFitter "
        "(checked against it and by hand in tests/test_survival_metrics.py)",
        "goal": f"C-index at {args.samples} patients within {GOAL_OVER_LIFELINES}x lifelines",
        "pass": bool(big["vs_lifelines"]["pass"]) and big["equal"] and small["equal"],
    }
