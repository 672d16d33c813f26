"""``descriptor-vocabulary``: prompt words grounded in the hila-descriptor's measurements.

The grounding checks run on real tissue tiles of the bundled sample slide: a
prompt's cosine similarity to each tile's z-scored descriptor must rank the
tiles like the measurement the prompt names (Spearman), far better than the
same weights shuffled over the dimensions or prompts the vocabulary cannot ground.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from napari_hila.encoders import get_text_encoder
from napari_hila.encoders.descriptor import DESCRIPTOR_DIM, DESCRIPTOR_NAMES
from napari_hila.encoders.pairing import choose_text_encoder
from napari_hila.encoders.vocabulary import VOCABULARY, DescriptorVocabularyEncoder
from napari_hila.prompts import load_prompt_set
from napari_hila.training.crossval import embed_prompts

NUCLEAR = "nuclear area fraction (of tissue)"
EOSIN = "eosin mean (tissue)"
BACKGROUND = "background fraction (glass, fat)"
N_SHUFFLES = 200


@pytest.fixture(scope="module")
def tiles():
    """Raw descriptor features and unit z-scored ones of the sample slide's tissue tiles."""
    from napari_hila.demo.tile_library import build_tile_library

    features = build_tile_library(stride_px=256).features.astype(np.float64)
    z = (features - features.mean(0)) / np.maximum(features.std(0), 1e-6)
    return features, z / np.linalg.norm(z, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def encoder():
    return get_text_encoder("descriptor-vocabulary")


def demo_text(name: str) -> str:
    return {p.name: p.text for p in load_prompt_set("DEMO").patch}[name]


def rho(scores, values) -> float:
    return float(spearmanr(scores, values)[0])


@pytest.mark.parametrize(
    ("prompt", "measurement", "floor"),
    [
        ("Dense nuclei", NUCLEAR, 0.8),
        ("Fibrous stroma", EOSIN, 0.7),
        ("Fat or glass", BACKGROUND, 0.9),
    ],
)
def test_grounded_prompts_rank_tiles_by_what_they_name(tiles, encoder, prompt, measurement, floor):
    features, unit_z = tiles
    assert len(features) >= 30  # enough tissue tiles for a rank correlation to mean something
    direction = encoder.encode([demo_text(prompt)])[0]
    values = features[:, DESCRIPTOR_NAMES.index(measurement)]
    grounded = rho(unit_z @ direction, values)
    assert grounded >= floor, f"{prompt}: Spearman {grounded:.3f} with {measurement!r}"
    # control: the same weights on shuffled dimensions rank the tiles far worse
    rng = np.random.default_rng(0)
    shuffled = np.abs([rho(unit_z @ rng.permutation(direction), values) for _ in range(N_SHUFFLES)])
    assert grounded - shuffled.mean() >= 0.4, (grounded, shuffled.mean())
    assert (shuffled >= grounded).mean() <= 0.05


def test_ungrounded_prompts_do_not_track_nuclear_density(tiles, encoder):
    features, unit_z = tiles
    texts = [f"unnamed attribute {i}" for i in range(N_SHUFFLES)]
    assert encoder.grounding(texts) == [None] * len(texts)
    values = features[:, DESCRIPTOR_NAMES.index(NUCLEAR)]
    arbitrary = np.abs([rho(unit_z @ e, values) for e in encoder.encode(texts)])
    dense = rho(unit_z @ encoder.encode([demo_text("Dense nuclei")])[0], values)
    assert dense - arbitrary.mean() >= 0.4, (dense, arbitrary.mean())


def test_rows_are_unit_and_deterministic(encoder):
    texts = ["Dense nuclei", "no such finding here", "Fibrous stroma", ""]
    out = encoder.encode(texts)
    assert out.shape == (4, DESCRIPTOR_DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(out, DescriptorVocabularyEncoder().encode(texts))
    assert not np.allclose(out[1], encoder.encode(["another unknown finding"])[0])


def test_grounding_reports_terms_opposites_and_negations(encoder):
    dense, sparse, uniform, large, solid, necrosis = encoder.grounding(
        [
            "Dense, crowded hypercellular nuclei",
            "Sparse hypocellular tissue",
            "Low-grade uniform nuclei",
            "Pleomorphic large nuclei",
            "Solid sheets without lumina",
            "Mitotic figures",
        ]
    )
    assert dense == "dense nuclei" and sparse == "sparse nuclei"
    assert uniform == "uniform nuclei" and large == "large pleomorphic nuclei"
    assert solid == "solid growth, no lumina" and necrosis is None
    e_dense, e_sparse, e_uniform, e_large = encoder.encode(
        ["Dense nuclei", "Sparse nuclei", "Uniform nuclei", "Pleomorphic nuclei"]
    )
    assert e_dense @ e_sparse < -0.9 and e_uniform @ e_large < 0


def test_every_term_names_real_descriptor_dimensions():
    for term in VOCABULARY:
        assert term.weights and set(term.weights) <= set(DESCRIPTOR_NAMES), term.name


def test_every_demo_prompt_is_grounded(encoder):
    demo = load_prompt_set("DEMO")
    assert 6 <= len(demo.patch) <= 8 and 5 <= len(demo.region) <= 6
    for level in ("patch", "region"):
        assert None not in encoder.grounding(demo.texts(level)), level


def test_auto_pairs_the_descriptor_with_its_vocabulary(capsys):
    assert choose_text_encoder("hila-descriptor")[0] == "descriptor-vocabulary"
    assert choose_text_encoder("uni")[0] == "minilm" and choose_text_encoder(None)[0] == "minilm"
    embedded = embed_prompts("DEMO", "auto", "cpu", vision_encoder="hila-descriptor")
    assert embedded["text_encoder"].startswith("descriptor-vocabulary")
    assert embedded["text_dim"] == DESCRIPTOR_DIM
    assert "text encoder: descriptor-vocabulary" in capsys.readouterr().out
    grounding = embedded["levels"]["patch"]["grounding"]
    assert len(grounding) == len(embedded["levels"]["patch"]["names"]) and None not in grounding
