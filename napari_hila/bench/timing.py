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

__all__ = ["interleave", "spread", "head_to_head", "check_at_most_one", "check_at_least_one"]


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


def _impossible(name: str, wrong: list[float], total: int, side: str) -> str | None:
    """The flag for ``wrong`` values of a ratio on the impossible ``side`` of 1, or None."""
    if not wrong:
        return None
    return (
        f"{len(wrong)} of {total} values of {name} are {side} 1, which is impossible: "
        "the measurement is wrong"
    )


def check_at_most_one(name: str, ratios: list[float]) -> dict[str, Any]:
    """Flag a ratio that cannot exceed 1 (a part's rate over the whole's) when it does.

    Such a ratio above 1 means the measurement, not the code, is wrong (load
    drift between the two, or the two do not do the same work).
    """
    above = [r for r in ratios if r > 1.0]
    out: dict[str, Any] = {"ratio": name, "can_exceed_1": False, "values_above_1": above}
    out["flag"] = _impossible(name, above, len(ratios), "above")
    return out


def check_at_least_one(name: str, ratios: list[float]) -> dict[str, Any]:
    """Flag a ratio that cannot be below 1 (a reader's time over the decode limit's) when it is.

    Such a ratio below 1 means the measurement, not the code, is wrong (load
    drift, a tile cache hit, or the two do not do the same work).
    """
    below = [r for r in ratios if r < 1.0]
    out: dict[str, Any] = {"ratio": name, "can_be_below_1": False, "values_below_1": below}
    out["flag"] = _impossible(name, below, len(ratios), "below")
    return out
