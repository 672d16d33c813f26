"""Per-dimension standardisation of features, fitted on the training patients.

Encoders differ wildly in scale (the weight-free descriptor mixes fractions
with nucleus counts in the hundreds); a model's first linear layer trains
badly on that. The trainer fits mean and standard deviation on the training
fold only (no test-fold information leaks), the card stores them, and
prediction applies the very same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_hila.features.store import SlideFeatures

__all__ = ["FeatureScaling"]

_MIN_STD = 1e-6


def _moments(arrays: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    count = sum(len(a) for a in arrays)
    if count == 0:
        return np.zeros(dim, np.float64), np.ones(dim, np.float64)
    total = np.zeros(dim, np.float64)
    for a in arrays:
        total += a.sum(axis=0, dtype=np.float64)
    mean = total / count
    sq = np.zeros(dim, np.float64)
    for a in arrays:
        sq += ((a - mean) ** 2).sum(axis=0, dtype=np.float64)
    std = np.sqrt(sq / max(count - 1, 1))
    return mean, np.where(std < _MIN_STD, 1.0, std)


@dataclass
class FeatureScaling:
    """``(x - mean) / std`` per feature dimension, at the patch and region level
    and at each extra magnification (CrossFusion's 10x and 5x), each with its
    own statistics: the same encoder sees different tissue scales."""

    patch_mean: np.ndarray
    patch_std: np.ndarray
    region_mean: np.ndarray
    region_std: np.ndarray
    scales: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def fit(cls, bags: Sequence[SlideFeatures]) -> FeatureScaling:
        """Pooled over every patch (region) of ``bags``: each token counts once."""
        pm, ps = _moments([b.features for b in bags], bags[0].features.shape[1])
        rm, rs = _moments([b.region_features for b in bags], bags[0].region_features.shape[1])
        shared = set.intersection(*(set(b.scales) for b in bags)) if bags else set()
        scales = {
            name: _moments([b.scales[name][0] for b in bags], bags[0].scales[name][0].shape[1])
            for name in sorted(shared)
        }
        return cls(pm, ps, rm, rs, scales)

    @classmethod
    def identity(cls, patch_dim: int, region_dim: int) -> FeatureScaling:
        return cls(
            np.zeros(patch_dim), np.ones(patch_dim), np.zeros(region_dim), np.ones(region_dim)
        )

    def apply(self, feats: SlideFeatures) -> SlideFeatures:
        """A scaled copy of ``feats``; magnifications without statistics stay as they are."""
        scales = dict(feats.scales)
        for name, (mean, std) in self.scales.items():
            if name in scales:
                values, coords = scales[name]
                scales[name] = (((values - mean) / std).astype(np.float32), coords)
        return dataclasses.replace(
            feats,
            scales=scales,
            features=((feats.features - self.patch_mean) / self.patch_std).astype(np.float32),
            region_features=((feats.region_features - self.region_mean) / self.region_std).astype(
                np.float32
            )
            if feats.num_regions
            else feats.region_features,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "z-score per dimension; mean and std over the training patients' tokens",
            "patch": {"mean": self.patch_mean.tolist(), "std": self.patch_std.tolist()},
            "region": {"mean": self.region_mean.tolist(), "std": self.region_std.tolist()},
            "scales": {
                name: {"mean": mean.tolist(), "std": std.tolist()}
                for name, (mean, std) in self.scales.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> FeatureScaling | None:
        """The scaling stored in a card, or None for a model trained on raw features."""
        if not data:
            return None
        return cls(
            np.asarray(data["patch"]["mean"], np.float64),
            np.asarray(data["patch"]["std"], np.float64),
            np.asarray(data["region"]["mean"], np.float64),
            np.asarray(data["region"]["std"], np.float64),
            {
                name: (np.asarray(v["mean"], np.float64), np.asarray(v["std"], np.float64))
                for name, v in (data.get("scales") or {}).items()
            },
        )
