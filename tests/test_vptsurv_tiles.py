"""Tile streaming from real slide files, and `napari-hila train --model vptsurv --slides`."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import openslide
import pytest
from _model_fixtures import one_torch_thread  # noqa: F401  (one torch thread: tiny models)

from napari_hila.errors import CohortError
from napari_hila.features.tile_bags import SlideTiles, slide_tiles, tile_batch
from napari_hila.slides.grids import level0_scale

TINY_VIT = dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64)


def openslide_rgb(path, xy, size) -> np.ndarray:
    """OpenSlide's pixels, transparent (outside the slide) painted white as napari-hila does."""
    with openslide.OpenSlide(str(path)) as ref:
        rgba = np.asarray(ref.read_region((int(xy[0]), int(xy[1])), 0, (size, size))).astype(float)
    alpha = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def test_tiles_match_openslide_pixels(sample_slide):
    with openslide.OpenSlide(str(sample_slide)) as ref:
        mpp = float(ref.properties[openslide.PROPERTY_NAME_MPP_X])
    tiles = slide_tiles(sample_slide, 6, tile_px=64, target_mpp=mpp, seed=1)
    assert isinstance(tiles, SlideTiles) and len(tiles) == 6 and tiles.tile_size == 64
    pixels, context = tiles.read(0, 6)
    assert pixels.shape == context.shape == (6, 64, 64, 3) and pixels.dtype == np.uint8
    blocks = tiles.context_origin(tiles.coords)
    for i, xy in enumerate(tiles.coords):
        expected = openslide_rgb(sample_slide, xy, 64)  # level 0, no resizing: the same pixels
        assert np.abs(pixels[i].astype(int) - expected).max() <= 2
        # the scale prompt is the aligned 2 x 2 block around the tile, shrunk to one tile
        assert (blocks[i] <= xy).all() and (xy < blocks[i] + 128).all()
        block = openslide_rgb(sample_slide, blocks[i], 128).astype(float)
        halved = block.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
        assert np.abs(context[i] - halved).max() <= 2.5  # 2 x 2 mean, rounded
    tiles.close()


def test_sampling_is_deterministic_and_bounded(sample_slide):
    a = slide_tiles(sample_slide, 5, tile_px=64, target_mpp=2.0, seed=0, epoch=0)
    b = slide_tiles(sample_slide, 5, tile_px=64, target_mpp=2.0, seed=0, epoch=0)
    c = slide_tiles(sample_slide, 5, tile_px=64, target_mpp=2.0, seed=0, epoch=1)
    every = slide_tiles(sample_slide, 10**6, tile_px=64, target_mpp=2.0)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.array_equal(a.coords, c.coords)
    assert len(every) > 5 and set(map(tuple, a.coords)) <= set(map(tuple, every.coords))
    assert every.tile_size == round(64 * level0_scale(0.499, 2.0)) == 256  # the slide grid's size
    batch = tile_batch([sample_slide], 5, tile_px=64, target_mpp=2.0)
    np.testing.assert_array_equal(batch.slides[0].coords, a.coords)


def write_cohort(tmp_path, n: int):
    from napari_hila.slides.synthetic import write_test_slide

    slides = tmp_path / "slides"
    slides.mkdir()
    rows = []
    seeds = [0, 1, 3, 4, 5, 6, 7]  # synthetic slides with tissue at this size (seed 2 has none)
    for i in range(n):
        write_test_slide(slides / f"s{i}.svs", 1536, 1536, mpp=0.5, seed=seeds[i])
        rows.append(
            {
                "patient_id": f"p{i}",
                "slide_id": f"s{i}",
                "time": 5.0 + 3 * i,
                "event": int(i % 3 != 2),
            }
        )
    cohort = tmp_path / "cohort.csv"
    with open(cohort, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return slides, cohort


def test_train_command_runs_vptsurv_on_slides(tmp_path):
    from napari_hila.commands import train
    from napari_hila.modelfile import load_model

    slides, cohort = write_cohort(tmp_path, 6)
    out = tmp_path / "run"
    settings = [
        f"vit={json.dumps(TINY_VIT)}",
        "train_tiles=4",
        "inference_tiles=8",
        "target_mpp=4.0",
    ]
    settings += ["decoder_dim=32", "tile_chunk=4"]
    argv = ["--model", "vptsurv", "--cohort", str(cohort), "--slides", str(slides)]
    argv += ["--out", str(out), "--folds", "2", "--epochs", "1", "--quiet"]
    argv += [a for s in settings for a in ("--set", s)]
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert train.run(parser.parse_args(argv)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["c_index_per_fold"]) == 2
    loaded = load_model(out / "final_model", device="cpu")
    card = loaded.card
    assert card["model"] == "vptsurv" and card["grid"]["inputs"] == "tiles"
    assert card["encoders"]["patch"] == {
        "name": "vit",
        "version": card["config"]["encoder_source"],
        "dim": 32,
        "dtype": "float32",
        "device": "cpu",
        "preprocessing": {  # vit's owners' transform (timm: bilinear, ImageNet) at 32 px
            "size": 32,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear",
            "source": "vit: its owners' evaluation transform",
        },
    }
    assert card["config"]["preprocessing"] == card["encoders"]["patch"]["preprocessing"]
    assert "random initialisation" in card["config"]["encoder_source"]
    batch = loaded.model.batch_from_bags([slides / "s0.svs"], train=False)
    explanation = loaded.model.explain(batch)
    level = explanation.levels["tiles"]
    assert 0 < len(level.coords) <= 8 and level.tile_size == 256
    np.testing.assert_allclose(level.maps.mean(axis=0), 1.0, atol=1e-5)  # x uniform share
    # the prediction path (CLI and viewer) reads tiles itself for this model
    from napari_hila.predict import predict_slide

    result = predict_slide(slides / "s0.svs", loaded)
    assert set(result.explanation.levels) == {"tiles"}
    assert result.risk == pytest.approx(explanation.risk, abs=1e-6)  # same tiles, same risk
    assert result.mpp == 0.5 and result.slide_fingerprint and result.extra["encoder"] == "vit"
    assert result.risk_group in ("high", "low")
    # a user's pixel size reaches the model's own tile grid: half the mpp, twice the level-0 tile
    user = predict_slide(slides / "s0.svs", loaded, mpp=0.25)
    assert user.mpp == 0.25 and user.extra["mpp_source"] == "user"
    assert user.explanation.levels["tiles"].tile_size == 2 * level.tile_size


def test_missing_slides_are_listed(tmp_path):
    from napari_hila.survival.cohort_csv import read_cohort
    from napari_hila.training.cohort_slides import cohort_slide_refs

    cohort = tmp_path / "cohort.csv"
    cohort.write_text("patient_id,slide_id,time,event\np1,a,3,1\np2,b,4,0\n")
    (tmp_path / "slides").mkdir()
    with pytest.raises(CohortError, match="no slide file for a, b"):
        cohort_slide_refs(read_cohort(cohort), tmp_path / "slides")
