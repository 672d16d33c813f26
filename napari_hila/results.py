"""The one result type: what the CLI writes, the viewer draws and exports use.

A :class:`PredictionResult` is plain numpy and JSON, no torch and no Qt. It
saves to a folder as ``result.json`` (human-readable summary) plus
``result.npz`` (per-token arrays), and loads back unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_hila.io_utils import atomic_path, write_json_atomic

#: A map whose tokens all lie within this fraction of a uniform share (1) shows
#: nowhere in particular: it is flagged as uninformative wherever it is shown.
UNIFORM_TOLERANCE = 0.10
MAP_UNIT = "share of the token relative to a uniform share (1 = uniform, 0 = none)"


#: Mean pairwise cosine of a level's projected prompts above which they have
#: collapsed onto one direction and cannot mean different things (METHODS 5).
COLLAPSE_COSINE = 0.9


def collapse_warning(stats: dict[str, dict[str, float]]) -> str | None:
    """A sentence naming the levels whose prompts collapsed, or None when none did.

    ``stats`` is per level ``{"mean_pairwise_cosine": ...}``, as a model's
    ``prompt_statistics()`` and the card's ``explanation.prompt_statistics`` give it.
    """
    collapsed = {
        level: values["mean_pairwise_cosine"]
        for level, values in stats.items()
        if values.get("mean_pairwise_cosine", 0.0) > COLLAPSE_COSINE
    }
    if not collapsed:
        return None
    levels = ", ".join(f"{level} (mean cosine {cos:.3f})" for level, cos in collapsed.items())
    return (
        f"the projected prompts of this model have collapsed onto one direction at the {levels} "
        "level: its prompt maps and contributions cannot tell the prompts apart; retrain it "
        "with this version"
    )


def map_departure(values: np.ndarray) -> float:
    """How far a relative-share map departs from uniform: max |v - 1| over the 2nd-98th percentiles."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    low, high = np.percentile(values, [2, 98])
    return float(max(abs(high - 1.0), abs(1.0 - low)))


def map_is_informative(values: np.ndarray) -> bool:
    """False when the map stays within :data:`UNIFORM_TOLERANCE` of a uniform share."""
    return map_departure(values) >= UNIFORM_TOLERANCE


#: Times a clinician reads survival at, in years; converted to the model's time unit.
REPORT_YEARS = (1, 3, 5)
_UNITS_PER_YEAR = {"days": 365.25, "weeks": 52.18, "months": 12.0, "years": 1.0}


def survival_curve_at(
    edges: np.ndarray, survival: np.ndarray, times: np.ndarray | list[float]
) -> np.ndarray:
    """A discrete-time model's S(t) at ``times``, hazard constant inside each bin.

    ``survival[j]`` is S at the end of bin ``[edges[j], edges[j + 1])``; between
    edges S falls geometrically, ``S(e_j) (1 - h_j)^((t - e_j) / (e_{j+1} - e_j))``,
    so the curve passes through the model's own values at every edge. Times past
    the last finite edge (the model's horizon) are NaN: the model cannot say.
    """
    edges = np.asarray([np.inf if e is None else float(e) for e in edges], float)
    survival = np.asarray(survival, float)
    times = np.asarray(times, float)
    start = np.r_[1.0, survival[:-1]]  # S at each bin's start
    out = np.full(times.shape, np.nan)
    for j in range(len(survival)):
        lo, hi = edges[j], edges[j + 1]
        if not np.isfinite(hi):
            continue
        inside = (times >= lo) & (times <= hi)
        if hi > lo and start[j] > 0:
            ratio = survival[j] / start[j]
            out[inside] = start[j] * ratio ** ((times[inside] - lo) / (hi - lo))
        else:
            out[inside] = survival[j]
    return out


def survival_horizon(edges: np.ndarray) -> float:
    """The last finite bin edge: the longest time the model's curve covers."""
    finite = [float(e) for e in edges if e is not None and np.isfinite(float(e))]
    return max(finite) if finite else 0.0


def report_times(time_unit: str, horizon: float) -> list[tuple[str, float]]:
    """(label, time in ``time_unit``) at 1, 3 and 5 years, those within the horizon.

    The horizon itself is added when a report year lies beyond it, so a reader
    learns how far the model's curve reaches. Unknown units give the horizon only.
    """
    per_year = _UNITS_PER_YEAR.get(str(time_unit).lower())
    times: list[tuple[str, float]] = []
    if per_year is not None:
        for years in REPORT_YEARS:
            t = years * per_year
            if t <= horizon + 1e-9:
                times.append((f"{years} year{'s' if years > 1 else ''}", t))
    if horizon > 0 and (per_year is None or REPORT_YEARS[-1] * per_year > horizon + 1e-9):
        times.append((f"{horizon:.3g} {time_unit} (model horizon)", horizon))
    return times


def ordinal(value: float) -> str:
    """12 -> "12th", 21 -> "21st": a percentile as people say it."""
    n = int(round(value))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def threshold_name(result: PredictionResult) -> str:
    """What the risk threshold is, in words: "the cohort median" when the card says so."""
    method = str(result.extra.get("risk_threshold_method", ""))
    return "the cohort median" if "median" in method.lower() else "the model's threshold"


def risk_standing(result: PredictionResult) -> str:
    """The risk group in words: "high-risk group: above the cohort median, 67th percentile"."""
    parts = []
    if result.risk_group:
        cut = threshold_name(result)
        side = "above" if result.risk_group == "high" else "at or below"
        parts.append(f"{result.risk_group}-risk group: {side} {cut}")
    if result.risk_percentile is not None:
        parts.append(f"{ordinal(result.risk_percentile)} percentile of the model's cohort")
    return ", ".join(parts)


@dataclass
class LevelExplanation:
    """Per-token evidence at one level of one slide.

    ``level`` is "patch" or "region" for HiLa, a magnification ("5x", "10x",
    "20x") for CrossFusion, "tiles" for VPTSurv. ``maps`` has one column per
    named map, on one scale for every model, prompt and slide: the token's
    share relative to a uniform share (1 = what a uniform plan or uniform
    attention gives it, 0 = none). For HiLa that is M K P*[i, k], the token's
    transport-plan mass for prompt k relative to 1 / (M K); for attention
    models M a_i. ``scores`` is the token's alignment score (or attention)
    and ``selected`` the selection map.
    """

    level: str
    coords: np.ndarray  # (N, 2) int64, level-0 (x, y) top-left
    tile_size: int  # level-0 px side
    scores: np.ndarray  # (N,) float32
    selected: np.ndarray  # (N,) bool
    maps: np.ndarray  # (N, K) float32
    map_names: list[str]  # K short names (prompt names)
    map_texts: list[str]  # K long descriptions (prompt texts)
    parent: np.ndarray | None = None  # (N,) index of the enclosing region, -1 if none

    def uninformative_maps(self) -> list[str]:
        """Names of the maps within 10% of a uniform share everywhere (they show nowhere)."""
        return [
            name
            for k, name in enumerate(self.map_names)
            if len(self.coords) and not map_is_informative(self.maps[:, k])
        ]


@dataclass
class PromptContribution:
    """How much one prompt moves this slide's risk (positive raises it).

    ``delta_risk`` is in risk units, ``delta_sd`` in units of the model's
    training-cohort risk SD (set by prediction, which knows the cohort);
    ``noise_floor`` (risk units) is twice the contribution's SD when the
    slide's patches are resampled, and ``negligible`` says it lies inside it.
    """

    level: str
    name: str
    text: str
    delta_risk: float
    delta_sd: float | None = None
    noise_floor: float | None = None
    negligible: bool | None = None


@dataclass
class Explanation:
    """Everything one forward pass says about one slide."""

    risk: float
    hazards: np.ndarray  # (T,)
    survival: np.ndarray  # (T,)
    levels: dict[str, LevelExplanation] = field(default_factory=dict)
    contributions: list[PromptContribution] = field(default_factory=list)
    contribution_method: str = ""
    # Risk the contributions are measured from: they add up to risk - baseline_risk.
    baseline_risk: float | None = None
    notes: list[str] = field(default_factory=list)  # what a reader must know about them


@dataclass
class PredictionResult:
    """A model's prediction on one slide, tied to the slide and the model."""

    slide_path: str
    slide_fingerprint: str
    mpp: float
    model_name: str  # registry name, e.g. "hila"
    model_label: str  # shown to users, e.g. "HiLa (demo, synthetic cohort, not for clinical use)"
    model_path: str
    explanation: Explanation
    time_bin_edges: np.ndarray  # (T+1,) in the cohort's time unit
    time_unit: str = "months"
    risk_threshold: float | None = None
    risk_group: str | None = None  # "high" or "low" against the model's cohort threshold
    risk_percentile: float | None = None  # where the risk falls in the model's cohort, 0-100
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def risk(self) -> float:
        return self.explanation.risk

    def survival_at(self, times: np.ndarray | list[float]) -> np.ndarray:
        """Predicted S(t) at ``times`` (in :attr:`time_unit`), NaN past the horizon."""
        return survival_curve_at(self.time_bin_edges, self.explanation.survival, times)

    def survival_report(self) -> list[tuple[str, float, float]]:
        """(label, time, S) at 1, 3 and 5 years within the model's horizon (and at it)."""
        horizon = survival_horizon(self.time_bin_edges)
        rows = report_times(self.time_unit, horizon)
        values = self.survival_at([t for _, t in rows]) if rows else []
        return [(label, t, float(s)) for (label, t), s in zip(rows, values, strict=True)]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no per-token arrays)."""
        exp = self.explanation
        return {
            "slide": self.slide_path,
            "slide_fingerprint": self.slide_fingerprint,
            "mpp": self.mpp,
            "model": self.model_name,
            "model_label": self.model_label,
            "model_path": self.model_path,
            "risk": exp.risk,
            "baseline_risk": exp.baseline_risk,
            "risk_group": self.risk_group,
            "risk_threshold": self.risk_threshold,
            "risk_percentile": self.risk_percentile,
            "time_unit": self.time_unit,
            "time_bin_edges": np.asarray(self.time_bin_edges, float).tolist(),
            "hazards": np.asarray(exp.hazards, float).tolist(),
            "survival": np.asarray(exp.survival, float).tolist(),
            "contribution_method": exp.contribution_method,
            "contributions": [asdict(c) for c in exp.contributions],
            "explanation_notes": list(exp.notes),
            "levels": {
                name: {
                    "tokens": int(len(lv.coords)),
                    "selected": int(np.count_nonzero(lv.selected)),
                    "tile_size": int(lv.tile_size),
                    "maps": list(lv.map_names),
                    "map_texts": list(lv.map_texts),
                    "map_unit": MAP_UNIT,
                    "uninformative_maps": lv.uninformative_maps(),
                }
                for name, lv in exp.levels.items()
            },
            "warnings": list(self.warnings),
            "extra": self.extra,
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``result.json`` and ``result.npz`` into ``folder`` (atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for name, lv in self.explanation.levels.items():
            arrays[f"{name}/coords"] = np.asarray(lv.coords, np.int64)
            arrays[f"{name}/scores"] = np.asarray(lv.scores, np.float32)
            arrays[f"{name}/selected"] = np.asarray(lv.selected, bool)
            arrays[f"{name}/maps"] = np.asarray(lv.maps, np.float32)
            if lv.parent is not None:
                arrays[f"{name}/parent"] = np.asarray(lv.parent, np.int64)
        with atomic_path(folder / "result.npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        write_json_atomic(folder / "result.json", self.summary())
        return folder / "result.json"

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PredictionResult:
        folder = Path(folder)
        info = json.loads((folder / "result.json").read_text())
        with np.load(folder / "result.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        levels = {}
        for name, meta in info["levels"].items():
            levels[name] = LevelExplanation(
                level=name,
                coords=arrays[f"{name}/coords"],
                tile_size=int(meta["tile_size"]),
                scores=arrays[f"{name}/scores"],
                selected=arrays[f"{name}/selected"],
                maps=arrays[f"{name}/maps"],
                map_names=list(meta["maps"]),
                map_texts=list(meta["map_texts"]),
                parent=arrays.get(f"{name}/parent"),
            )
        exp = Explanation(
            risk=float(info["risk"]),
            hazards=np.asarray(info["hazards"], np.float32),
            survival=np.asarray(info["survival"], np.float32),
            levels=levels,
            contributions=[PromptContribution(**c) for c in info["contributions"]],
            contribution_method=info.get("contribution_method", ""),
            baseline_risk=info.get("baseline_risk"),
            notes=list(info.get("explanation_notes", [])),
        )
        return cls(
            slide_path=info["slide"],
            slide_fingerprint=info["slide_fingerprint"],
            mpp=float(info["mpp"]),
            model_name=info["model"],
            model_label=info["model_label"],
            model_path=info["model_path"],
            explanation=exp,
            time_bin_edges=np.asarray(info["time_bin_edges"], float),
            time_unit=info.get("time_unit", "months"),
            risk_threshold=info.get("risk_threshold"),
            risk_group=info.get("risk_group"),
            risk_percentile=info.get("risk_percentile"),
            warnings=list(info.get("warnings", [])),
            extra=dict(info.get("extra", {})),
        )
