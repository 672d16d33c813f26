"""A hand-built PredictionResult on the sample slide's geometry, for display tests.

Used where running a model would only slow a test down: the numbers are made
up but self-consistent (plan columns sum to 1/K, selection = top 60 %).
"""

from __future__ import annotations

import numpy as np

from napari_hila.results import (
    Explanation,
    LevelExplanation,
    PredictionResult,
    PromptContribution,
)

PATCH_NAMES = ["pleomorphism", "mitoses", "necrosis", "lymphocytes"]
REGION_NAMES = ["invasion", "stroma ratio", "glands"]


def _level(name, coords, tile, names, rng, parent=None):
    m, k = len(coords), len(names)
    plan = rng.random((m, k)) + 0.05
    plan = plan / plan.sum(axis=0, keepdims=True) / k
    scores = (m * plan * rng.random((m, k))).sum(axis=1).astype(np.float32)
    keep = np.zeros(m, bool)
    keep[np.argsort(-scores)[: max(1, int(round(0.6 * m)))]] = True
    return LevelExplanation(
        level=name,
        coords=np.asarray(coords, np.int64),
        tile_size=tile,
        scores=scores,
        selected=keep,
        maps=plan.astype(np.float32),
        map_names=list(names),
        map_texts=[f"Tumour shows {n} (a long description of {n})" for n in names],
        parent=parent,
    )


def fake_result(
    slide_path: str = "slide.svs",
    mpp: float = 0.499,
    origin: tuple[int, int] = (12, 20),
    patch: int = 256,
    region: int = 1024,
    shape: tuple[int, int] = (8, 6),  # rows, cols of patches
    seed: int = 0,
) -> PredictionResult:
    """A two-level (patch, region) HiLa-like result with a few missing tiles."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
    coords = np.stack([origin[0] + xs.ravel() * patch, origin[1] + ys.ravel() * patch], 1)
    coords = coords[np.arange(len(coords)) % 7 != 3]  # holes: background tiles
    per = region // patch
    rxs, rys = np.meshgrid(np.arange(-(-cols // per)), np.arange(-(-rows // per)))
    rcoords = np.stack([origin[0] + rxs.ravel() * region, origin[1] + rys.ravel() * region], 1)
    rcol = (coords[:, 0] - origin[0]) // region
    rrow = (coords[:, 1] - origin[1]) // region
    parent = (rrow * rxs.shape[1] + rcol).astype(np.int64)
    patch_level = _level("patch", coords, patch, PATCH_NAMES, rng, parent)
    region_level = _level("region", rcoords, region, REGION_NAMES, rng)
    hazards = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    survival = np.cumprod(1 - hazards).astype(np.float32)
    deltas = [0.30, -0.12, 0.05, -0.02, 0.18, -0.25, 0.01]
    names = [("patch", n) for n in PATCH_NAMES] + [("region", n) for n in REGION_NAMES]
    contributions = [
        PromptContribution(level=lv, name=n, text=f"text of {n}", delta_risk=d)
        for (lv, n), d in zip(names, deltas, strict=True)
    ]
    explanation = Explanation(
        risk=float(-survival.sum()),
        hazards=hazards,
        survival=survival,
        levels={"patch": patch_level, "region": region_level},
        contributions=contributions,
        contribution_method="mean replacement",
    )
    return PredictionResult(
        slide_path=str(slide_path),
        slide_fingerprint="fake",
        mpp=mpp,
        model_name="hila",
        model_label="HiLa (test, not for clinical use)",
        model_path="",
        explanation=explanation,
        time_bin_edges=np.array([0.0, 12.0, 24.0, 48.0, 96.0]),
        time_unit="months",
        risk_threshold=-2.5,
        risk_group="high" if -survival.sum() > -2.5 else "low",
        risk_percentile=71.0,
    )


def fake_card(n: int = 60, seed: int = 3) -> dict:
    """A model card with a cohort where higher risk means shorter survival."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(-2.5, 0.4, n)
    time = rng.exponential(40 * np.exp(-(risk + 2.5) * 2))
    event = (rng.random(n) < 0.7).astype(int)
    return {
        "model": "hila",
        "config": {},
        "encoders": {"patch": {"name": "he-descriptor", "dim": 48}},
        "label": "HiLa (test cohort, not for clinical use)",
        "cancer_type": "test",
        "risk_threshold": float(np.median(risk)),
        "time_unit": "months",
        "time_bin_edges": [0.0, 12.0, 24.0, 48.0, 96.0],
        "cohort": {"risk": risk.tolist(), "time": time.tolist(), "event": event.tolist()},
        "metrics": {"c_index": {"mean": 0.66, "std": 0.04}},
    }
