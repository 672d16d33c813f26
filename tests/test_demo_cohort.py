"""The synthetic demo cohort: real tiles, seeded, and its hazard really drives survival."""

from __future__ import annotations

import numpy as np
import pytest
from _single_thread import one_torch_thread  # noqa: F401

from napari_hila.demo.synthetic_cohort import (
    DemoSettings,
    make_demo_cohort,
    oracle_c_index,
    write_demo_cohort,
)
from napari_hila.demo.tile_library import CATEGORIES, DENSE, STROMA, build_tile_library


@pytest.fixture(scope="module")
def library():
    return build_tile_library(stride_px=256)


SMALL = dict(n_patients=60, region_grid=(2, 2))


def test_library_groups_real_tiles_by_measured_morphology(library):
    counts = library.counts()
    assert set(counts) == set(CATEGORIES) and all(n > 0 for n in counts.values())
    dense = library.nuclear_fraction[library.category == DENSE]
    stroma = library.nuclear_fraction[library.category == STROMA]
    assert dense.min() > stroma.max()
    assert (library.background_fraction < 0.5).all()
    assert library.images.shape[1:] == (256, 256, 3) and library.features.shape[0] == len(
        library.images
    )


def test_same_seed_same_cohort_other_seed_other(library):
    a = make_demo_cohort(library, DemoSettings(seed=3, n_patients=6, region_grid=(2, 2)))
    b = make_demo_cohort(library, DemoSettings(seed=3, n_patients=6, region_grid=(2, 2)))
    c = make_demo_cohort(library, DemoSettings(seed=4, n_patients=6, region_grid=(2, 2)))
    assert [(p.time, p.event, p.log_hazard) for p in a] == [
        (p.time, p.event, p.log_hazard) for p in b
    ]
    for pa, pb in zip(a, b, strict=True):
        for sid in pa.slides:
            np.testing.assert_array_equal(pa.slides[sid].features, pb.slides[sid].features)
            np.testing.assert_array_equal(
                pa.slides[sid].region_features, pb.slides[sid].region_features
            )
    assert [p.time for p in a] != [p.time for p in c]


def test_oracle_hazard_predicts_survival_and_arrangement_matters(library):
    patients = make_demo_cohort(library, DemoSettings(seed=0, **SMALL))
    assert oracle_c_index(patients) > 0.68
    events = np.mean([p.event for p in patients])
    assert 0.4 < events < 0.95
    clustered = [p.clustering for p in patients if p.arrangement == "clustered"]
    scattered = [p.clustering for p in patients if p.arrangement == "scattered"]
    assert np.mean(clustered) > np.mean(scattered) + 0.15


def test_slides_are_consistent_feature_files(library, tmp_path):
    patients = make_demo_cohort(library, DemoSettings(seed=1, n_patients=5, region_grid=(2, 2)))
    csv = write_demo_cohort(patients, tmp_path)
    from napari_hila.features.store import load_features
    from napari_hila.survival.cohort_csv import read_cohort

    cohort = read_cohort(csv, tmp_path / "features")
    assert cohort.patient_ids == [p.patient_id for p in patients]
    feats = load_features(tmp_path / "features" / f"{cohort.rows[0].slide_id}.h5")
    assert feats.attrs["region_mode"] == "view" and feats.attrs["region_px"] == 1024
    assert "SYNTHETIC" in feats.attrs["synthetic"]
    # every patch lies inside the region it points to
    corner = feats.region_coords[feats.patch_to_region]
    assert ((feats.coords >= corner) & (feats.coords < corner + 1024)).all()
    # patch features are the library tiles' features, unchanged
    tiles = feats.extras["library_tile"]
    np.testing.assert_array_equal(feats.features, library.features[tiles])
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()
