"""Prompt sets: the shipped files, user files, malformed files, embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hila.errors import PromptSetError
from napari_hila.prompts import available_prompt_sets, embed_prompt_set, load_prompt_set

SHIPPED = ("BRCA", "LUAD", "UCEC", "BLCA", "KIRC", "GBMLGG")


@pytest.mark.parametrize("cancer_type", SHIPPED)
def test_shipped_sets_are_complete(cancer_type):
    ps = load_prompt_set(cancer_type)
    assert ps.cancer_type == cancer_type
    for level in ("patch", "region"):
        prompts = ps.level(level)
        assert 8 <= len(prompts) <= 16
        assert len({p.name for p in prompts}) == len(prompts)
        assert all(len(p.name) <= 40 and len(p.text) > len(p.name) for p in prompts)
        assert len({p.text for p in prompts}) == len(prompts)


def test_available_and_case_insensitive():
    assert set(SHIPPED) <= set(available_prompt_sets())
    assert load_prompt_set("brca").patch == load_prompt_set("BRCA").patch


def test_user_directory_overrides_and_path_works(tmp_path, monkeypatch):
    good = (
        "cancer_type: COAD\npatch:\n"
        + "".join(f"  - name: P{i}\n    text: patch text {i}\n" for i in range(8))
        + "region:\n"
        + "".join(f"  - name: R{i}\n    text: region text {i}\n" for i in range(8))
    )
    (tmp_path / "COAD.yaml").write_text(good)
    monkeypatch.setenv("NAPARI_HILA_PROMPTS", str(tmp_path))
    assert "COAD" in available_prompt_sets()
    assert load_prompt_set("COAD").names("region")[0] == "R0"
    assert load_prompt_set(tmp_path / "COAD.yaml").texts("patch")[7] == "patch text 7"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            "cancer_type: X\npatch:\n  - name: A\n    text: [unclosed\nregion: []\n",
            5,
            "not valid YAML",
        ),
        (
            "cancer_type: X\npatch:\n  - name: A\n    text: a\n  - name: A\n    text: b\nregion:\n"
            "  - name: R\n    text: r\n",
            5,
            "repeats line 3",
        ),
        ("cancer_type: X\npatch:\n  - name: A\n    text: a\nregion:\n  - name: R\n", 6, "'text:'"),
        (
            "cancer_type: X\npatch:\n  - just a string\nregion:\n  - name: R\n    text: r\n",
            3,
            "'name:'",
        ),
    ],
)
def test_malformed_file_names_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PromptSetError) as err:
        load_prompt_set(path)
    msg = str(err.value)
    assert str(path) in msg and f"line {line}" in msg and fragment in msg


def test_unknown_set_lists_known():
    with pytest.raises(PromptSetError, match="BRCA"):
        load_prompt_set("NOPE")


def test_embed_prompt_set_with_minilm():
    from napari_hila.encoders import get_text_encoder

    ps = load_prompt_set("BRCA")
    emb = embed_prompt_set(ps, get_text_encoder("minilm", device="cpu"))
    assert emb["patch"].shape == (len(ps.patch), 384) and emb["region"].shape == (
        len(ps.region),
        384,
    )
    np.testing.assert_allclose(np.linalg.norm(emb["region"], axis=1), 1.0, atol=1e-5)
    # Prompts about the same finding at the two levels are each other's nearest match.
    sim = emb["patch"] @ emb["region"].T
    names_p, names_r = ps.names("patch"), ps.names("region")
    for patch_name, region_name in [
        ("Tumour necrosis", "Central necrosis and fibrosis"),
        ("Ductal carcinoma in situ", "Extensive intraductal component"),
        ("Desmoplastic stroma", "Tumour-stroma ratio high stroma"),
    ]:
        assert names_r[int(sim[names_p.index(patch_name)].argmax())] == region_name
