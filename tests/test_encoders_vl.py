"""Vision-language pairs in their owners' layouts: CONCH (CoCa), open_clip CLIP, transformers CLIP.

For each layout a tiny model with the real key names (tests/_vl_reference.py,
written from the owners' structure, not from napari-hila's loaders) is trained
for a few hundred steps on coloured shapes and their names, saved, and loaded
through napari-hila: the embeddings must equal the reference's, and zero-shot
retrieval must work through napari-hila's own paths (slide -> extract ->
features; caption -> prompt set -> prompt embedding -> cosine). The same
checkpoints untrained retrieve at chance, so the retrieval check can fail.
"""

from __future__ import annotations

import json
import time

import _vl_reference as ref
import numpy as np
import pytest
import torch
from _single_thread import one_torch_thread  # noqa: F401

from napari_hila.encoders import get_text_encoder, get_vision_encoder

IMAGE, CONTEXT, STEPS = 32, 16, 400
RETRIEVAL_FLOOR = 0.6  # share of held-out images whose caption ranks first (chance: 1/12)
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def data():
    train_images, train_labels = ref.dataset(8, IMAGE, seed=0)
    test_images, test_labels = ref.dataset(10, 64, seed=1)  # 64 px: the loaders resize
    return ref.pixels(train_images, IMAGE), train_labels, test_images, test_labels


def _retrieval(model, data, tokens) -> float:
    _, _, images, labels = data
    with torch.no_grad():
        img = model.encode_image(ref.pixels(images, IMAGE)).numpy()
        txt = model.encode_text(tokens).numpy()
    return ref.top1(img, txt, labels)


def _train(name: str, model, data, tokens, steps: int) -> float:
    """Train ``model`` in place; returns its retrieval before training (the control)."""
    untrained = _retrieval(model, data, tokens)
    t0 = time.perf_counter()
    if steps:
        ref.train_contrastive(model, data[0], data[1], tokens, steps)
    TIMINGS[name] = time.perf_counter() - t0
    return untrained


def _perturbed(model):
    """Every parameter moved off its initial value (norms too), so none can be skipped."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _check_towers(pair, data, vision_name, text_name, weights, text_tokens=None):
    """napari-hila's towers give the reference's embeddings (and its tokens); returns them."""
    _, _, images, _ = data
    vision = get_vision_encoder(vision_name, weights=weights, device="cpu")
    text = get_text_encoder(text_name, weights=weights, device="cpu")
    with torch.no_grad():
        expected_img = pair["model"].encode_image(vision.preprocess(images)).numpy()
        expected_txt = torch.nn.functional.normalize(
            pair["model"].encode_text(pair["tokens"]), dim=-1
        ).numpy()
    np.testing.assert_allclose(vision.encode(images), expected_img, atol=2e-5)
    np.testing.assert_allclose(text.encode(ref.CAPTIONS), expected_txt, atol=2e-5)
    if text_tokens is not None:
        np.testing.assert_array_equal(text.tokenize(ref.CAPTIONS), text_tokens)
    return vision, text


@pytest.fixture(scope="module")
def conch(tmp_path_factory, data):
    """A trained tiny CONCH: one state dict (.bin), its model config and tokenizer JSON beside."""
    from tokenizers import Tokenizer

    folder = tmp_path_factory.mktemp("conch")
    tokenizer = ref.conch_tokenizer_file(folder)
    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    model = ref.ConchReference(vocab, image=IMAGE, ctx=CONTEXT)
    tokens = ref.conch_tokens(tokenizer, ref.CAPTIONS, CONTEXT)
    untrained = _train("conch", model, data, tokens, STEPS)
    weights = folder / "pytorch_model.bin"
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    # CONCH's own model-config form (conch_ViT-B-16.json): what shapes cannot tell
    config = {"vision_cfg": {"num_heads": 2, "attn_pooler_heads": 2}, "text_cfg": {"heads": 2}}
    (folder / "pytorch_model.bin.json").write_text(json.dumps(config))
    return {
        "model": model,
        "weights": weights,
        "tokenizer": tokenizer,
        "tokens": tokens,
        "untrained": untrained,
    }


def test_conch_embeddings_equal_the_reference(conch, data):
    # CONCH's tokenisation (its HF tokenizer, 127 + 1 positions) without its last pad column
    vision, text = _check_towers(
        conch, data, "conch", "conch-text", conch["weights"], conch["tokens"][:, :-1]
    )
    assert vision.output_dim == text.output_dim == 32 and vision.input_size == IMAGE
    assert vision.version == text.version and vision.version.startswith("sha256:")
    # the trunk alone stays available, in its own (unprojected) width
    images = data[2]
    trunk = get_vision_encoder("conch-trunk", weights=conch["weights"], device="cpu")
    assert trunk.output_dim == 48
    with torch.no_grad():
        cls = conch["model"].trunk_tokens(trunk.preprocess(images))[:, 0].numpy()
    np.testing.assert_allclose(trunk.encode(images), cls, atol=2e-5)


def _shape_slide(path, images: np.ndarray, columns: int = 6) -> dict[tuple[int, int], int]:
    """A TIFF mosaic of 64 px class images (0.5 um/px); returns {(x, y): index}."""
    import tifffile

    rows = -(-len(images) // columns)
    side = images.shape[1]
    mosaic = np.empty((rows * side, columns * side, 3), np.uint8)
    mosaic[:] = ref.BACKGROUND
    where = {}
    for i, img in enumerate(images):
        y, x = divmod(i, columns)
        mosaic[y * side : (y + 1) * side, x * side : (x + 1) * side] = img
        where[(x * side, y * side)] = i
    tifffile.imwrite(
        path, mosaic, tile=(64, 64), resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    return where


def _prompt_file(folder) -> str:
    import yaml

    prompts = [{"name": c, "text": c} for c in ref.CAPTIONS]
    path = folder / "shapes.yaml"
    path.write_text(yaml.safe_dump({"cancer_type": "SHAPES", "patch": prompts, "region": prompts}))
    return str(path)


def _retrieval_through_napari_hila(tmp_path, monkeypatch, data, vision, text, entries) -> float:
    """slide -> extract_slide -> features; captions -> embed_prompts -> cosine; top-1 share.

    Weights come from an encoders config ($NAPARI_HILA_ENCODERS), as a user's would.
    """
    import yaml

    from napari_hila.features import extract_slide, load_features
    from napari_hila.training.crossval import embed_prompts

    config = tmp_path / "encoders.yaml"
    config.write_text(
        yaml.safe_dump({k: {kk: str(vv) for kk, vv in v.items()} for k, v in entries.items()})
    )
    monkeypatch.setenv("NAPARI_HILA_ENCODERS", str(config))
    _, _, images, labels = data
    slide = tmp_path / "shapes.tif"
    where = _shape_slide(slide, images)
    out = extract_slide(
        slide,
        tmp_path / "feats",
        encoder=vision,
        device="cpu",
        patch_px=64,
        region_px=128,
        region_mode="mean",
    )
    feats = load_features(out)
    assert feats.attrs["encoder_version"].startswith("sha256:")
    rows = [where[(int(x), int(y))] for x, y in feats.coords]
    assert len(rows) == len(images)  # every class image is one patch
    prompts = embed_prompts(_prompt_file(tmp_path), text, "cpu", vision_encoder=vision)
    assert prompts["text_encoder"].startswith(text)
    emb = np.asarray(prompts["levels"]["patch"]["embeddings"])
    return ref.top1(feats.features, emb, labels[rows])


def test_conch_zero_shot_retrieval_end_to_end(conch, data, tmp_path, monkeypatch):
    entry = {"conch": {"weights": conch["weights"], "tokenizer": conch["tokenizer"]}}
    got = _retrieval_through_napari_hila(tmp_path, monkeypatch, data, "conch", "conch-text", entry)
    assert got >= RETRIEVAL_FLOOR, got
    assert conch["untrained"] <= 0.3  # the same check on the untrained checkpoint fails
    assert TIMINGS["conch"] < 20


def _make_quiltnet(tmp_path_factory, data, steps: int):
    """A tiny open_clip CLIP (QuiltNet's layout, QuickGELU) as the hub ships it:
    open_clip_pytorch_model.bin, open_clip_config.json and CLIP's tokenizer files."""
    folder = tmp_path_factory.mktemp("quiltnet")
    ref.write_clip_tokenizer(folder)
    torch.manual_seed(1)
    model = _perturbed(ref.OpenClipReference(514, image=IMAGE, ctx=CONTEXT))
    tokens = ref.open_clip_tokens(folder, ref.CAPTIONS, CONTEXT)
    untrained = _train("quiltnet", model, data, tokens, steps)
    weights = folder / "open_clip_pytorch_model.bin"
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    model_cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": IMAGE, "layers": 2, "width": 48, "patch_size": 8, "heads": 2},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": 514, "width": 48, "heads": 2},
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return {"model": model, "folder": folder, "tokens": tokens, "untrained": untrained}


@pytest.fixture(scope="module")
def made(tmp_path_factory, data):
    """``made(name, steps)``: the open_clip or transformers pair, built once per module."""
    built: dict = {}
    builders = {"quiltnet": _make_quiltnet, "plip": _make_plip}

    def get(name: str, steps: int):
        if (name, steps) not in built:
            built[name, steps] = builders[name](tmp_path_factory, data, steps)
        return built[name, steps]

    return get


def test_open_clip_towers_equal_the_reference(made, data):
    quiltnet_fresh = made("quiltnet", 0)
    folder = quiltnet_fresh["folder"]
    for where in (folder, folder / "open_clip_pytorch_model.bin"):  # the folder or the file
        vision, text = _check_towers(
            quiltnet_fresh, data, "quiltnet", "quiltnet-text", where, quiltnet_fresh["tokens"]
        )
        assert vision.model.config.act == "quick_gelu" and text.tower.config.act == "quick_gelu"


@pytest.mark.slow
def test_open_clip_zero_shot_retrieval_end_to_end(made, data, tmp_path, monkeypatch):
    quiltnet = made("quiltnet", STEPS)
    entry = {"quiltnet": {"weights": quiltnet["folder"]}}
    got = _retrieval_through_napari_hila(
        tmp_path, monkeypatch, data, "quiltnet", "quiltnet-text", entry
    )
    assert got >= RETRIEVAL_FLOOR, got
    assert quiltnet["untrained"] <= 0.3
    assert TIMINGS["quiltnet"] < 20


class _HFClip(torch.nn.Module):
    """transformers' CLIPModel with the reference interface (projected embeddings)."""

    def __init__(self, model):
        super().__init__()
        self.clip = model

    @staticmethod
    def _tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def encode_image(self, x):
        return self._tensor(self.clip.get_image_features(pixel_values=x))

    def encode_text(self, tokens):
        ids, mask = tokens
        return self._tensor(self.clip.get_text_features(input_ids=ids, attention_mask=mask))


def _make_plip(tmp_path_factory, data, steps: int):
    """A tiny transformers CLIPModel directory (PLIP's layout) with its tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("plip")
    ref.write_clip_tokenizer(folder)
    torch.manual_seed(2)
    tower = {"hidden_size": 48, "intermediate_size": 192, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "num_attention_heads": 2,
            "vocab_size": 514,
            "max_position_embeddings": CONTEXT,
            "bos_token_id": 512,
            "eos_token_id": 513,
            "pad_token_id": 513,
        },
        vision_config={**tower, "num_attention_heads": 2, "image_size": IMAGE, "patch_size": 8},
        projection_dim=32,
    )
    model = _HFClip(_perturbed(CLIPModel(config)))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok = tokenizer(ref.CAPTIONS, padding=True, return_tensors="pt")
    tokens = (tok["input_ids"], tok["attention_mask"])
    untrained = _train("plip", model, data, tokens, steps)
    model.clip.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"model": model, "folder": folder, "tokens": tokens, "untrained": untrained}


def test_transformers_clip_towers_equal_the_reference(made, data):
    plip_fresh = made("plip", 0)
    _check_towers(plip_fresh, data, "plip", "plip-text", plip_fresh["folder"])


@pytest.mark.slow
def test_transformers_clip_zero_shot_retrieval_end_to_end(made, data, tmp_path, monkeypatch):
    plip = made("plip", STEPS)
    entry = {"plip": {"weights": plip["folder"]}}
    got = _retrieval_through_napari_hila(tmp_path, monkeypatch, data, "plip", "plip-text", entry)
    assert got >= RETRIEVAL_FLOOR, got
    assert plip["untrained"] <= 0.3
    assert TIMINGS["plip"] < 20
