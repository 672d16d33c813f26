"""Interleaved timing shared by the benchmarks: A, B, A, B in one process.

Every ``bench`` command compares ours with a named peer the same way: each step
is warmed up once, then the steps run in turn for a number of rounds, so load
drift on a shared machine hits both alike; the report gives each side's
median and spread (min, max) over the rounds and the per-round quotient
ours / peer with the peer named.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["interleave", "spread", "head_to_head", "check_at_most_one"]


def interleave(
    steps: dict[str, Callable[[], object]], rounds: int, warm_up: bool = True
) -> dict[str, list[float]]:
    """Seconds of each step per round, the steps run in turn (A, B, A, B) after one warm-up each."""
    if warm_up:
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return times


def spread(values: list[float], digits: int = 4) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def head_to_head(
    a: str, b: str, times: dict[str, list[float]], goal: float | None = None
) -> dict[str, Any]:
    """Medians and rounds of ``a`` and ``b``, and the quotient a / b per round (and its goal).

    ``ratio`` names the quotient (``"a/b"``); ``pass`` is the per-round median against
    ``goal`` (at most).
    """
    ratios = [ta / tb for ta, tb in zip(times[a], times[b], strict=True)]
    median_a, median_b = statistics.median(times[a]), statistics.median(times[b])
    out: dict[str, Any] = {
        "ratio": f"{a}/{b}",
        f"{a}_median_s": round(median_a, 6),
        f"{b}_median_s": round(median_b, 6),
        f"{a}_rounds_s": [round(t, 6) for t in times[a]],
        f"{b}_rounds_s": [round(t, 6) for t in times[b]],
        "ratio_of_medians": round(median_a / median_b, 4),
        "per_round_ratio": [round(r, 4) for r in ratios],
        "per_round_ratio_median": round(statistics.median(ratios), 4),
        "per_round_ratio_min": round(min(ratios), 4),
        "per_round_ratio_max": round(max(ratios), 4),
    }
    if goal is not None:
        out["goal"] = f"<= {goal}"
        out["pass"] = bool(statistics.median(ratios) <= goal)
    return out


def check_at_most_one(name: str, ratios: list[float]) -> dict[str, Any]:
    """Flag a ratio that cannot exceed 1 (a part's rate over the whole's) when it does.

    Such a ratio above 1 means the measurement, not the code, is wrong (load
    drift between the two, or the two do not do the same work).
    """
    above = [r for r in ratios if r > 1.0]
    out: dict[str, Any] = {"ratio": name, "can_exceed_1": False, "values_above_1": above}
    out["flag"] = (
        f"{len(above)} of {len(ratios)} values of {name} are above 1, which is impossible: "
        "the measurement is wrong"
        if above
        else None
    )
    return out
