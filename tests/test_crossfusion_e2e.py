"""CrossFusion end to end: multi-magnification extraction -> `napari-hila train` -> predict."""

from __future__ import annotations

import argparse
import csv
import json
import shutil

import numpy as np
from _model_fixtures import one_torch_thread  # noqa: F401  (one torch thread: tiny models)


def test_crossfusion_trains_and_predicts_from_multiscale_features(tmp_path):
    from napari_hila.commands import train
    from napari_hila.features.extract import extract_slide
    from napari_hila.features.store import load_features
    from napari_hila.predict import predict_slide
    from napari_hila.slides.synthetic import write_test_slide

    slides, cache, feats = tmp_path / "slides", tmp_path / "cache", tmp_path / "feats"
    slides.mkdir()
    feats.mkdir()
    rows = []
    for i, seed in enumerate([0, 1, 3, 4]):
        slide = write_test_slide(slides / f"s{i}.svs", 1536, 1536, mpp=0.5, seed=seed)
        path = extract_slide(
            slide, cache, encoder="hila-descriptor", magnifications=("5x", "10x", "20x")
        )
        shutil.copy(path, feats / f"s{i}.h5")
        rows.append(
            {
                "patient_id": f"p{i}",
                "slide_id": f"s{i}",
                "time": 4.0 + 5 * i,
                "event": int(i != 1),
            }
        )
    stored = load_features(feats / "s0.h5")
    assert {"5x", "10x"} <= set(stored.scales)
    cohort = tmp_path / "cohort.csv"
    with open(cohort, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    out = tmp_path / "run"
    argv = [
        "--model",
        "crossfusion",
        "--cohort",
        str(cohort),
        "--features",
        str(feats),
        "--out",
        str(out),
    ]
    argv += ["--folds", "2", "--epochs", "1", "--quiet", "--set", "width=32", "--set", "heads=4"]
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert train.run(parser.parse_args(argv)) == 0
    card = json.loads((out / "final_model" / "card.json").read_text())
    assert (
        card["config"]["nll_alpha"] == 0.2
        and card["config"]["patch_dim"] == stored.features.shape[1]
    )
    assert set(card["grid"]["magnifications"].split(",")) == set(stored.scales)

    result = predict_slide(slides / "s0.svs", out / "final_model", cache_dir=cache, device="cpu")
    levels = result.explanation.levels
    assert set(levels) == {"5x", "10x", "20x"}
    np.testing.assert_array_equal(levels["20x"].coords, stored.coords)
    np.testing.assert_array_equal(levels["10x"].coords, stored.scales["10x"][1])
    assert levels["20x"].tile_size == stored.patch_size
    assert (
        levels["10x"].tile_size == 2 * stored.patch_size
        and levels["5x"].tile_size == 4 * stored.patch_size
    )
    for level in levels.values():
        np.testing.assert_allclose(level.maps.mean(axis=0), 1.0, atol=1e-5)  # x uniform share
