"""Encoder registry, the weight-free descriptor and the MiniLM text encoder."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hila.encoders import (
    EncoderError,
    available_encoders,
    get_encoder_spec,
    get_text_encoder,
    get_vision_encoder,
)
from napari_hila.encoders.descriptor import DESCRIPTOR_DIM, DESCRIPTOR_NAMES, describe_tiles


@pytest.fixture(scope="module")
def sample_tiles(sample_slide):
    """All full 256 px tiles of the sample, with their level-0 coordinates."""
    import openslide

    with openslide.OpenSlide(str(sample_slide)) as s:
        w, h = s.dimensions
        coords = [(x, y) for y in range(0, h - 255, 256) for x in range(0, w - 255, 256)]
        tiles = np.stack(
            [np.asarray(s.read_region(c, 0, (256, 256)).convert("RGB")) for c in coords]
        )
    return tiles, coords


def test_registry_lists_and_describes_encoders():
    assert "hila-descriptor" in available_encoders("vision")
    assert "minilm" in available_encoders("text")
    assert "minilm" not in available_encoders("vision")
    spec = get_encoder_spec("hila-descriptor")
    assert spec.output_dim == DESCRIPTOR_DIM and not spec.needs_weights
    assert get_encoder_spec("uni").needs_weights


def test_registry_errors_are_clear(tmp_path):
    with pytest.raises(EncoderError, match="known encoders"):
        get_vision_encoder("no-such-encoder")
    with pytest.raises(EncoderError, match="text encoder"):
        get_vision_encoder("minilm")
    with pytest.raises(EncoderError, match="--weights"):
        get_vision_encoder("uni")
    with pytest.raises(EncoderError, match="not found"):
        get_vision_encoder("uni", weights=tmp_path / "missing.safetensors")


def test_descriptor_is_deterministic_with_fixed_width(sample_tiles):
    tiles, _ = sample_tiles
    enc = get_vision_encoder("hila-descriptor", device="cpu")
    a = enc.encode(tiles[:10])
    b = enc.encode(tiles[:10].copy())
    assert a.shape == (10, DESCRIPTOR_DIM) == (10, len(DESCRIPTOR_NAMES))
    assert a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # Batch composition must not change a tile's vector.
    np.testing.assert_allclose(enc.encode(tiles[3:4])[0], a[3], rtol=1e-5, atol=1e-6)
    assert len(set(DESCRIPTOR_NAMES)) == DESCRIPTOR_DIM


def test_descriptor_reads_stains_nuclei_and_background(sample_tiles):
    tiles, _ = sample_tiles
    d = describe_tiles(tiles)
    col = {n: i for i, n in enumerate(DESCRIPTOR_NAMES)}
    bg, hem = d[:, col["background fraction (glass, fat)"]], d[:, col["haematoxylin mean (tissue)"]]
    nuclei = (
        d[:, col["small nuclei count (about 5-8 um)"]]
        + d[:, col["large nuclei count (about 10-18 um)"]]
    )
    tissue_tiles = bg < 0.2
    assert tissue_tiles.sum() >= 5 and (bg > 0.95).sum() >= 5
    # A pure white tile is all background with no nuclei.
    white = describe_tiles(np.full((1, 256, 256, 3), 242, np.uint8))[0]
    assert white[col["background fraction (glass, fat)"]] == 1.0
    assert white[col["small nuclei count (about 5-8 um)"]] == 0
    # Nuclei-rich tissue tiles have more haematoxylin than nuclei-poor (stromal) ones.
    t = np.flatnonzero(tissue_tiles)
    order = t[np.argsort(nuclei[t])]
    rich, poor = order[-3:], order[:3]
    assert hem[rich].mean() > hem[poor].mean() + 0.05
    # A synthetic pink (eosin only) tile has eosin but little haematoxylin.
    pink = describe_tiles(np.tile(np.array([235, 150, 200], np.uint8), (1, 256, 256, 1)))[0]
    assert pink[col["eosin mean (tissue)"]] > 2 * pink[col["haematoxylin mean (tissue)"]]


def test_descriptor_resizes_other_tile_sizes(sample_tiles):
    tiles, _ = sample_tiles
    big = np.repeat(np.repeat(tiles[:2], 2, axis=1), 2, axis=2)  # 512 px, same content
    a, b = describe_tiles(tiles[:2]), describe_tiles(big)
    col = DESCRIPTOR_NAMES.index("haematoxylin mean (tissue)")
    np.testing.assert_allclose(a[:, col], b[:, col], atol=0.02)


@pytest.fixture(scope="module")
def minilm():
    return get_text_encoder("minilm", device="cpu")


def test_minilm_offline_normalised_and_meaningful(minilm):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    texts = [
        "marked nuclear pleomorphism with large atypical nuclei",
        "enlarged, irregular tumour cell nuclei of varying size and shape",
        "a sunny beach with palm trees",
    ]
    e = minilm.encode(texts)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    np.testing.assert_allclose(minilm.encode(texts[:1]), e[:1], atol=1e-5)


def test_descriptor_matches_stored_reference(sample_slide):
    """Descriptor values on sample tiles (six tissue tiles, one of glass) equal the ones
    stored before the extraction pipeline was reworked: the shipped demo model was
    trained on them, so a speed-up must not move them beyond float rounding."""
    import json
    from pathlib import Path

    from napari_hila.features.tile_reader import read_batch
    from napari_hila.slides import open_slide

    ref = json.loads((Path(__file__).parent / "data" / "descriptor_reference.json").read_text())
    with open_slide(sample_slide) as slide:
        tiles = read_batch(slide, np.array(ref["coords"]), ref["patch_size"], 256, 0)
    expected = np.array(ref["features"], np.float32)
    got = describe_tiles(tiles)
    assert got.shape == expected.shape == (7, DESCRIPTOR_DIM)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_descriptor_of_a_tile_does_not_depend_on_its_batch(sample_tiles):
    tiles, _ = sample_tiles
    batch = describe_tiles(tiles[:40])  # several internal chunks
    singles = np.concatenate([describe_tiles(tiles[i : i + 1]) for i in (0, 17, 39)])
    np.testing.assert_allclose(batch[[0, 17, 39]], singles, rtol=1e-5, atol=1e-6)
