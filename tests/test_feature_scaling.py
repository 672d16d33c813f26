"""Feature scaling: fitted on training bags, applied identically at prediction."""

from __future__ import annotations

import numpy as np

from napari_hila.features.scaling import FeatureScaling
from napari_hila.features.store import SlideFeatures


def _bag(rng: np.random.Generator, n: int, offset: float) -> SlideFeatures:
    coords = np.zeros((n, 2), np.int64)
    return SlideFeatures(
        features=rng.normal(offset, 3.0, (n, 4)).astype(np.float32),
        coords=coords,
        region_features=rng.normal(-offset, 2.0, (2, 4)).astype(np.float32),
        region_coords=np.zeros((2, 2), np.int64),
        patch_to_region=np.zeros(n, np.int64),
        scales={
            "10x": (rng.normal(50.0, 10.0, (n // 2, 4)).astype(np.float32), coords[: n // 2]),
            "5x": (rng.normal(-7.0, 0.5, (n // 4, 4)).astype(np.float32), coords[: n // 4]),
        },
    )


def test_every_magnification_is_standardised_with_its_own_statistics():
    rng = np.random.default_rng(0)
    bags = [_bag(rng, 40, 5.0), _bag(rng, 80, 5.0)]
    scaling = FeatureScaling.fit(bags)
    scaled = [scaling.apply(b) for b in bags]
    for get in (
        lambda b: b.features,
        lambda b: b.region_features,
        lambda b: b.scales["10x"][0],
        lambda b: b.scales["5x"][0],
    ):
        pooled = np.concatenate([get(b) for b in scaled])
        np.testing.assert_allclose(pooled.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(pooled.std(axis=0, ddof=1), 1.0, atol=1e-5)
    # Coordinates are untouched, and the originals are not modified in place.
    np.testing.assert_array_equal(scaled[0].scales["10x"][1], bags[0].scales["10x"][1])
    assert abs(float(bags[0].scales["10x"][0].mean()) - 50.0) < 5.0


def test_card_round_trip_keeps_the_magnification_statistics():
    rng = np.random.default_rng(1)
    bags = [_bag(rng, 40, 1.0), _bag(rng, 40, 2.0)]
    scaling = FeatureScaling.fit(bags)
    again = FeatureScaling.from_json(scaling.to_json())
    new = _bag(rng, 20, 3.0)
    a, b = scaling.apply(new), again.apply(new)
    for name in ("10x", "5x"):
        np.testing.assert_allclose(a.scales[name][0], b.scales[name][0], rtol=1e-6)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-6)


def test_cards_written_before_magnification_statistics_still_load():
    rng = np.random.default_rng(2)
    scaling = FeatureScaling.fit([_bag(rng, 40, 1.0)])
    old = scaling.to_json()
    old.pop("scales")
    loaded = FeatureScaling.from_json(old)
    bag = _bag(rng, 20, 1.0)
    np.testing.assert_array_equal(loaded.apply(bag).scales["5x"][0], bag.scales["5x"][0])
