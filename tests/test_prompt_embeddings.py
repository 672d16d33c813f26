"""Prompt sets that bring precomputed embeddings (``embeddings: FILE.npz``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _single_thread import one_torch_thread  # noqa: F401

from napari_hila.errors import PromptSetError
from napari_hila.prompts import load_prompt_set, stored_embeddings
from napari_hila.training.crossval import embed_prompts

N_PATCH, N_REGION, WIDTH = 3, 2, 5


def write_prompt_set(folder, npz_name="emb.npz", extra="embedding_encoder: my-text-tower\n"):
    """A YAML with 3 patch and 2 region prompts pointing at ``npz_name``; returns its path."""
    text = (
        "cancer_type: TEST\n"
        + (f"embeddings: {npz_name}\n" if npz_name else "")
        + extra
        + "patch:\n"
        + "".join(f"  - name: P{i}\n    text: patch prompt {i}\n" for i in range(N_PATCH))
        + "region:\n"
        + "".join(f"  - name: R{i}\n    text: region prompt {i}\n" for i in range(N_REGION))
    )
    path = folder / "set.yaml"
    path.write_text(text)
    return path


def good_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "patch": rng.normal(size=(N_PATCH, WIDTH)) * 3,
        "region": rng.normal(size=(N_REGION, WIDTH)) * 0.1,
    }


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def no_text_encoder(monkeypatch):
    """Fail the test if anything loads a text encoder."""

    def refuse(*args, **kwargs):
        raise AssertionError("a text encoder was loaded although the set has embeddings")

    monkeypatch.setattr("napari_hila.encoders.registry.get_text_encoder", refuse)


def test_embeddings_load_and_are_used_unit_normalised(tmp_path, no_text_encoder, capsys):
    arrays = good_arrays()
    np.savez(tmp_path / "emb.npz", **arrays)
    path = write_prompt_set(tmp_path)

    ps = load_prompt_set(path)
    assert ps.embedding_encoder == "my-text-tower"
    assert "embeddings" not in ps.extra and "embedding_encoder" not in ps.extra
    for level in ("patch", "region"):
        np.testing.assert_allclose(ps.embeddings[level], arrays[level], rtol=1e-6)
        np.testing.assert_allclose(stored_embeddings(ps)[level], unit(arrays[level]), rtol=1e-6)

    embedded = embed_prompts(str(path), "auto", "cpu")
    assert embedded["text_encoder"] == embedded["embedding_encoder"] == "my-text-tower"
    assert embedded["text_dim"] == WIDTH
    for level in ("patch", "region"):
        rows = np.array(embedded["levels"][level]["embeddings"])
        np.testing.assert_allclose(rows, unit(arrays[level]), rtol=1e-6, atol=1e-7)
        assert embedded["levels"][level]["grounding"] is None
    assert "ignored" not in capsys.readouterr().err


def test_an_explicit_other_text_encoder_is_ignored_with_a_note(tmp_path, no_text_encoder, capsys):
    np.savez(tmp_path / "emb.npz", **good_arrays())
    path = write_prompt_set(tmp_path)
    embedded = embed_prompts(str(path), "minilm", "cpu")
    assert embedded["text_encoder"] == "my-text-tower"
    err = capsys.readouterr().err
    assert "--text-encoder minilm ignored" in err and "set.yaml" in err
    embed_prompts(str(path), "my-text-tower", "cpu")  # the same name: nothing to say
    assert "ignored" not in capsys.readouterr().err


def test_train_with_an_embeddings_file_needs_no_text_encoder(tmp_path, no_text_encoder):
    from test_training import write_synthetic_cohort

    from napari_hila.cli import main

    csv, feats = write_synthetic_cohort(tmp_path, n_patients=6)
    np.savez(tmp_path / "emb.npz", **good_arrays())
    path = write_prompt_set(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--cohort", str(csv), "--features", str(feats), "--out", str(out)]
    argv += ["--prompts", str(path), "--model", "hila", "--folds", "2", "--epochs", "1"]
    argv += ["--quiet", "--device", "cpu", "--no-final"]
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["c_index_per_fold"]


def _write(tmp_path, name, arrays=None, raw=None):
    """Bytes, one bare array (``.npy`` content under the ``.npz`` name) or an npz archive."""
    target = tmp_path / name
    if raw is not None:
        target.write_bytes(raw)
    elif isinstance(arrays, np.ndarray):
        with open(target, "wb") as handle:
            np.save(handle, arrays)
    else:
        np.savez(target, **arrays)


BAD_CASES = {
    "missing file": (lambda t: None, "file not found"),
    "not numpy at all": (lambda t: _write(t, "emb.npz", raw=b"patch,region\n1,2\n"), "readable"),
    "a single npy": (lambda t: _write(t, "emb.npz", arrays=np.ones((3, 5))), "single .npy"),
    "missing region": (
        lambda t: _write(t, "emb.npz", {"patch": np.ones((3, 5))}),
        "no array 'region'",
    ),
    "not 2-D": (
        lambda t: _write(t, "emb.npz", {"patch": np.ones(15), "region": np.ones((2, 5))}),
        "expected 2-D",
    ),
    "wrong row count": (
        lambda t: _write(t, "emb.npz", {"patch": np.ones((4, 5)), "region": np.ones((2, 5))}),
        "4 rows but the YAML has 3",
    ),
    "widths differ": (
        lambda t: _write(t, "emb.npz", {"patch": np.ones((3, 5)), "region": np.ones((2, 4))}),
        "5 wide but 'region' 4",
    ),
    "nan": (
        lambda t: _write(
            t, "emb.npz", {"patch": np.full((3, 5), np.nan), "region": np.ones((2, 5))}
        ),
        "NaN or infinite",
    ),
    "inf": (
        lambda t: _write(
            t, "emb.npz", {"patch": np.ones((3, 5)), "region": np.full((2, 5), np.inf)}
        ),
        "NaN or infinite",
    ),
    "zero row": (
        lambda t: _write(t, "emb.npz", {"patch": np.zeros((3, 5)), "region": np.ones((2, 5))}),
        "all-zero row",
    ),
    "pickled objects": (
        lambda t: _write(
            t,
            "emb.npz",
            {"patch": np.array([object()] * 15).reshape(3, 5), "region": np.ones((2, 5))},
        ),
        "unpickling",
    ),
    "strings": (
        lambda t: _write(t, "emb.npz", {"patch": np.full((3, 5), "x"), "region": np.ones((2, 5))}),
        "expected real numbers",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_embeddings_name_the_yaml_the_npz_and_the_fix(tmp_path, case):
    make, fragment = BAD_CASES[case]
    make(tmp_path)
    path = write_prompt_set(tmp_path)
    with pytest.raises(PromptSetError) as err:
        load_prompt_set(path)
    message = str(err.value)
    assert str(path) in message and "emb.npz" in message, message
    assert fragment in message, message
    assert "numpy.savez" in message  # the fix


def test_embeddings_need_an_encoder_name_and_vice_versa(tmp_path):
    np.savez(tmp_path / "emb.npz", **good_arrays())
    path = write_prompt_set(tmp_path, extra="")
    with pytest.raises(PromptSetError, match="needs 'embedding_encoder: NAME'") as err:
        load_prompt_set(path)
    assert str(path) in str(err.value)
    path = write_prompt_set(tmp_path, npz_name=None)
    with pytest.raises(PromptSetError, match="without 'embeddings:'") as err:
        load_prompt_set(path)
    assert str(path) in str(err.value)


def test_a_set_without_embeddings_has_none():
    ps = load_prompt_set("BRCA")
    assert ps.embeddings is None and ps.embedding_encoder is None
    assert stored_embeddings(ps) is None
