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

import _vl_reference as ref
import numpy as np
import pytest
import torch
from _single_thread import one_torch_thread  # noqa: F401
from safetensors.torch import save_file

from napari_hila.encoders import EncoderError, get_text_encoder, get_vision_encoder

IMAGE, CONTEXT, STEPS = 32, 16, 400
OPENAI_MEAN = tuple(ref.MEAN.flatten().tolist())  # open_clip's OPENAI_DATASET_MEAN / _STD
OPENAI_STD = tuple(ref.STD.flatten().tolist())
RETRIEVAL_FLOOR = 0.6  # share of held-out images whose caption ranks first (chance: 1/12)


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


def _train(model, data, tokens, steps: int) -> float:
    """Train ``model`` in place; returns its retrieval before training (the control)."""
    untrained = _retrieval(model, data, tokens)
    if steps:
        ref.train_contrastive(model, data[0], data[1], tokens, steps)
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
    untrained = _train(model, data, tokens, STEPS)
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

    from napari_hila.features.extract import extract_slide
    from napari_hila.features.store import load_features
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


def _make_quiltnet(tmp_path_factory, data, steps: int):
    """A tiny open_clip CLIP (QuiltNet's layout, QuickGELU) as the hub ships it:
    open_clip_pytorch_model.bin, open_clip_config.json and CLIP's tokenizer files."""
    folder = tmp_path_factory.mktemp("quiltnet")
    ref.write_clip_tokenizer(folder)
    torch.manual_seed(1)
    model = _perturbed(ref.OpenClipReference(514, image=IMAGE, ctx=CONTEXT))
    tokens = ref.open_clip_tokens(folder, ref.CAPTIONS, CONTEXT)
    untrained = _train(model, data, tokens, steps)
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
    untrained = _train(model, data, tokens, steps)
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


def test_long_and_empty_texts_are_tokenised_as_the_owners_do(conch, made):
    texts = ["", "a red disc " * 12, "A  Yellow   BAR"]
    conch_text = get_text_encoder("conch-text", weights=conch["weights"], device="cpu")
    expected = ref.conch_tokens(conch["tokenizer"], texts, CONTEXT)[:, :-1]
    np.testing.assert_array_equal(conch_text.tokenize(texts), expected)
    folder = made("quiltnet", 0)["folder"]
    clip_text = get_text_encoder("quiltnet-text", weights=folder, device="cpu")
    np.testing.assert_array_equal(
        clip_text.tokenize(texts), ref.open_clip_tokens(folder, texts, CONTEXT)
    )
    assert (
        np.isfinite(clip_text.encode(texts)).all() and np.isfinite(conch_text.encode(texts)).all()
    )


# -- refusals ------------------------------------------------------------------------------


def _resave(state: dict, path, drop=(), rename=None):
    state = {k: v.contiguous() for k, v in state.items() if k not in drop}
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _copy_beside(src_folder, dst_folder, names):
    import shutil

    dst_folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src_folder / name).exists():
            shutil.copy(src_folder / name, dst_folder / name)


def test_conch_missing_or_renamed_key_is_refused_by_name(conch, tmp_path):
    state = torch.load(conch["weights"], weights_only=True)
    folder = tmp_path / "c"
    _copy_beside(conch["weights"].parent, folder, [conch["tokenizer"].name])
    path = _resave(
        state,
        folder / "renamed.bin",
        rename={"visual.ln_contrast.weight": "visual.ln_contrast.gamma"},
    )
    with pytest.raises(EncoderError) as err:
        get_vision_encoder("conch", weights=path, device="cpu")
    assert "visual.ln_contrast.weight" in str(err.value) and "visual.ln_contrast.gamma" in str(
        err.value
    )
    assert str(path) in str(err.value)
    path = _resave(state, folder / "missing.bin", drop=["text.ln_final.weight"])
    with pytest.raises(EncoderError, match=r"text\.ln_final\.weight"):
        get_text_encoder("conch-text", weights=path, device="cpu")
    path = _resave(state, folder / "trunk.bin", drop=["visual.trunk.norm.bias"])
    with pytest.raises(EncoderError, match=r"norm\.bias"):
        get_vision_encoder("conch", weights=path, device="cpu")


def test_open_clip_missing_or_renamed_key_is_refused_by_name(made, tmp_path):
    folder = made("quiltnet", 0)["folder"]
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    dst = tmp_path / "q"
    _copy_beside(folder, dst, ["vocab.json", "merges.txt", "open_clip_config.json"])
    path = _resave(state, dst / "renamed.bin", rename={"ln_final.weight": "ln_final.scale"})
    with pytest.raises(EncoderError) as err:
        get_text_encoder("quiltnet-text", weights=path, device="cpu")
    assert "ln_final.weight" in str(err.value) and "ln_final.scale" in str(err.value)
    path = _resave(state, dst / "missing.bin", drop=["visual.ln_post.weight"])
    with pytest.raises(EncoderError, match=r"norm\.weight"):  # reported in the ViT's names
        get_vision_encoder("quiltnet", weights=path, device="cpu")


def test_transformers_clip_missing_key_is_refused_by_name(made, tmp_path):
    from safetensors.torch import load_file

    folder = made("plip", 0)["folder"]
    state = load_file(str(folder / "model.safetensors"))
    for drop, name, what in (
        ("text_model.final_layer_norm.weight", "plip-text", "text"),
        ("vision_model.post_layernorm.weight", "plip", "vision"),
    ):
        dst = tmp_path / what
        _copy_beside(
            folder,
            dst,
            [
                "config.json",
                "vocab.json",
                "merges.txt",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ],
        )
        _resave(state, dst / "model.safetensors", drop=[drop])
        load = get_text_encoder if what == "text" else get_vision_encoder
        with pytest.raises(EncoderError) as err:
            load(name, weights=dst, device="cpu")
        short = drop.split(".", 1)[1] if what == "vision" else drop
        assert short.replace("post_layernorm", "") in str(err.value) or drop in str(err.value)


def test_pickled_checkpoints_are_refused(conch, made, tmp_path):
    folder = tmp_path / "pickled"
    _copy_beside(conch["weights"].parent, folder, [conch["tokenizer"].name])
    torch.save({"model": conch["model"]}, folder / "pytorch_model.bin")  # code, not tensors
    for load, name in ((get_vision_encoder, "conch"), (get_text_encoder, "conch-text")):
        with pytest.raises(EncoderError, match="pickled checkpoint.*never unpickles"):
            load(name, weights=folder / "pytorch_model.bin", device="cpu")
    quilt = tmp_path / "quilt"
    _copy_beside(made("quiltnet", 0)["folder"], quilt, ["vocab.json", "merges.txt"])
    torch.save(made("quiltnet", 0)["model"], quilt / "open_clip_pytorch_model.bin")
    with pytest.raises(EncoderError, match="pickled checkpoint.*never unpickles"):
        get_text_encoder("quiltnet-text", weights=quilt, device="cpu")


def test_weights_of_another_model_are_refused(conch, made):
    quilt = made("quiltnet", 0)["folder"]
    with pytest.raises(EncoderError, match="not a CONCH checkpoint"):
        get_vision_encoder("conch", weights=quilt, device="cpu")
    with pytest.raises(EncoderError, match="CONCH's CoCa checkpoint.*open_clip CLIP"):
        get_vision_encoder("quiltnet", weights=conch["weights"], device="cpu")
    with pytest.raises(EncoderError, match="transformers CLIPModel"):
        get_vision_encoder("plip", weights=quilt, device="cpu")
    with pytest.raises(EncoderError, match="no text tower"):
        get_text_encoder(
            "conch-text", weights=made("plip", 0)["folder"] / "model.safetensors", device="cpu"
        )


def test_wrong_shapes_are_refused_as_another_models_weights(conch, tmp_path):
    state = torch.load(conch["weights"], weights_only=True)
    state["visual.proj_contrast"] = torch.zeros(32, 20)
    path = _resave(state, tmp_path / "w" / "pytorch_model.bin")
    with pytest.raises(EncoderError, match="another model") as err:
        get_vision_encoder("conch", weights=path, device="cpu")
    assert "visual.proj_contrast" in str(err.value) and str(path) in str(err.value)


def test_tokenizer_problems_are_one_clear_error(conch, made, tmp_path):
    # no tokenizer beside the weights and none configured
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "pytorch_model.bin").write_bytes(conch["weights"].read_bytes())
    with pytest.raises(EncoderError, match="conch_byte_level_bpe_uncased.json") as err:
        get_text_encoder("conch-text", weights=bare / "pytorch_model.bin", device="cpu")
    assert "'tokenizer:' under conch in the encoders config" in str(err.value)
    # a tokenizer of another vocabulary
    other = ref.conch_tokenizer_file(tmp_path, vocab_size=280)
    (bare / other.name).write_bytes(other.read_bytes())
    with pytest.raises(EncoderError, match="does not match") as err:
        get_text_encoder("conch-text", weights=bare / "pytorch_model.bin", device="cpu")
    assert str(bare / other.name) in str(err.value)
    # open_clip: no tokenizer files, then a vocabulary of another size
    quilt = tmp_path / "quilt"
    _copy_beside(made("quiltnet", 0)["folder"], quilt, ["open_clip_pytorch_model.bin"])
    with pytest.raises(EncoderError, match="tokenizer"):
        get_text_encoder("quiltnet-text", weights=quilt, device="cpu")
    vocab = json.loads((made("quiltnet", 0)["folder"] / "vocab.json").read_text())
    vocab["extra</w>"] = len(vocab)
    (quilt / "vocab.json").write_text(json.dumps(vocab))
    (quilt / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(EncoderError, match="does not match"):
        get_text_encoder("quiltnet-text", weights=quilt, device="cpu")
    # transformers: no tokenizer files (transformers itself would build an empty one), then
    # a vocabulary of another size
    plip = tmp_path / "plip"
    _copy_beside(made("plip", 0)["folder"], plip, ["config.json", "model.safetensors"])
    with pytest.raises(EncoderError, match="needs the tokenizer files") as err:
        get_text_encoder("plip-text", weights=plip, device="cpu")
    assert str(plip) in str(err.value)
    vocab = json.loads((made("plip", 0)["folder"] / "vocab.json").read_text())
    vocab["extra</w>"] = len(vocab)
    (plip / "vocab.json").write_text(json.dumps(vocab))
    (plip / "merges.txt").write_bytes((made("plip", 0)["folder"] / "merges.txt").read_bytes())
    with pytest.raises(EncoderError, match="do not match the checkpoint .vocabulary 515 tokens"):
        get_text_encoder("plip-text", weights=plip, device="cpu")


# -- where weights are found ------------------------------------------------------------------


def test_encoders_config_finds_weights_and_tokenizers(conch, tmp_path, monkeypatch):
    from napari_hila.encoders.registry import weights_status
    from napari_hila.encoders.userconfig import EncoderConfigError, read_config

    config = tmp_path / "cfg" / "encoders.yaml"
    config.parent.mkdir()
    rel = conch["weights"]  # absolute here; relative paths are relative to the file
    config.write_text(
        f"conch:\n  weights: {rel}\n  tokenizer: {conch['tokenizer']}\nuni: models/uni.bin\n"
    )
    monkeypatch.setenv("NAPARI_HILA_ENCODERS", str(config))
    assert read_config()["uni"]["weights"] == (config.parent / "models" / "uni.bin").resolve()
    vision = get_vision_encoder("conch", device="cpu")
    text = get_text_encoder("conch-text", device="cpu")  # falls back to conch's entry
    assert vision.version == text.version
    assert weights_status("conch-text") == (True, f"conch-text: {conch['weights'].resolve()}")
    found, sentence = weights_status("quiltnet")
    assert not found and str(config) in sentence and "quiltnet: PATH" in sentence
    with pytest.raises(EncoderError, match="uni.bin") as err:
        get_vision_encoder("uni", device="cpu")
    assert str(config) in str(err.value)
    config.write_text(f"conch:\n  weights: {rel}\n  tokenizer: {tmp_path / 'gone.json'}\n")
    with pytest.raises(EncoderError, match="gone.json: the tokenizer named in the encoders"):
        get_text_encoder("conch-text", device="cpu")
    config.write_text("conch:\n  weights: [unclosed\n")
    with pytest.raises(EncoderConfigError, match="line 2"):
        get_vision_encoder("conch", device="cpu")
    config.write_text("conch:\n  wieghts: /x\n")
    with pytest.raises(EncoderConfigError, match="'conch'"):
        get_vision_encoder("conch", device="cpu")
    monkeypatch.setenv("NAPARI_HILA_ENCODERS", str(tmp_path / "nowhere.yaml"))
    with pytest.raises(EncoderConfigError, match="nowhere.yaml"):
        get_vision_encoder("conch", device="cpu")
    monkeypatch.delenv("NAPARI_HILA_ENCODERS")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.napari-hila/encoders.yaml
    with pytest.raises(EncoderError, match="--text-weights"):
        get_text_encoder("conch-text", device="cpu")


# -- the owners' preprocessing, through the loaders -----------------------------------------


def _owner_check(encoder, mean, std, filt: str = "bicubic") -> None:
    from test_encoders_preprocess import LEVELS, crafted, grey_levels, owner_pixels

    for shape in ((64, 64), (20, 20)):  # down and up to the tiny towers' 32 px
        img = crafted(*shape)
        got = encoder.preprocess(img[None])[0].numpy()
        want = owner_pixels(img, encoder.input_size, mean, std, filt)
        assert grey_levels(got, want, std).max() <= LEVELS, (encoder.name, shape)


def test_each_layout_prepares_tiles_as_its_owners_do(conch, made, tmp_path):
    """CONCH, open_clip and transformers towers resize bicubic with OpenAI mean/std, and
    read overrides from the hub files beside the weights (preprocess_cfg,
    preprocessor_config.json), as open_clip and transformers themselves do."""
    import shutil

    for name, weights in (
        ("conch", conch["weights"]),
        ("conch-trunk", conch["weights"]),
        ("quiltnet", made("quiltnet", 0)["folder"]),
        ("plip", made("plip", 0)["folder"]),
    ):
        encoder = get_vision_encoder(name, weights=weights, device="cpu")
        assert encoder.preprocessing.interpolation == "bicubic"
        _owner_check(encoder, OPENAI_MEAN, OPENAI_STD)
    quiltnet = shutil.copytree(made("quiltnet", 0)["folder"], tmp_path / "quiltnet")
    cfg = json.loads((quiltnet / "open_clip_config.json").read_text())
    cfg["preprocess_cfg"] = {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    (quiltnet / "open_clip_config.json").write_text(json.dumps(cfg))
    _owner_check(
        get_vision_encoder("quiltnet", weights=quiltnet), (0.5,) * 3, (0.25,) * 3, "bilinear"
    )
    plip = shutil.copytree(made("plip", 0)["folder"], tmp_path / "plip")
    processor = {"image_mean": [0.4] * 3, "image_std": [0.3] * 3, "resample": 2}
    (plip / "preprocessor_config.json").write_text(json.dumps(processor))
    _owner_check(get_vision_encoder("plip", weights=plip), (0.4,) * 3, (0.3,) * 3, "bilinear")
    processor["resample"] = 1  # LANCZOS: not what CLIP's processors use
    (plip / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(EncoderError, match="preprocessor_config.json: resample 1"):
        get_vision_encoder("plip", weights=plip)


# -- mixed precision --------------------------------------------------------------------------


#: 1 - cosine to float32, at most. Measured on the CPU (torch 2.13): the tiny trained
#: towers here 1.7e-5 (CONCH), 3.0e-5 (open_clip, transformers) in bfloat16 and 5e-7 in
#: float16; a random-weights ViT-B/16 at 224 px 1.0e-5 and 2e-7. Bounds ~15x the worst.
MIXED_TOLERANCE = {"bfloat16": 5e-4, "float16": 1e-5}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_agrees_with_float32(conch, made, data, precision):
    """Autocast on the CPU runs the GPU code path; its embeddings stay within a measured cosine."""
    from napari_hila.encoders.vit import resolve_precision

    if precision == "float16" and not _cpu_autocast_supports(torch.float16):
        pytest.skip("this torch has no float16 autocast on the CPU")
    images, labels = data[2], data[3]
    for name, weights in (
        ("conch", conch["weights"]),
        ("quiltnet", made("quiltnet", 0)["folder"]),
        ("plip", made("plip", 0)["folder"]),
    ):
        full = get_vision_encoder(name, weights=weights, device="cpu")
        assert full.dtype == resolve_precision(None, torch.device("cpu")) == torch.float32
        mixed = get_vision_encoder(name, weights=weights, device="cpu")
        mixed.dtype = resolve_precision(precision, torch.device("cpu"))
        a, b = full.encode(images), mixed.encode(images)
        assert not np.array_equal(a, b)  # autocast did run in the low precision
        assert 1 - _cosines(a, b).min() < MIXED_TOLERANCE[precision], name
    text = get_text_encoder("conch-text", weights=conch["weights"], device="cpu")
    emb = text.encode(ref.CAPTIONS)
    a = get_vision_encoder("conch", weights=conch["weights"], device="cpu").encode(images)
    mixed = get_vision_encoder("conch", weights=conch["weights"], device="cpu")
    mixed.dtype = resolve_precision(precision, torch.device("cpu"))
    assert abs(ref.top1(a, emb, labels) - ref.top1(mixed.encode(images), emb, labels)) <= 0.05


def test_feature_files_record_dtype_device_and_preprocessing(conch, data, tmp_path, monkeypatch):
    """extract_slide under $NAPARI_HILA_PRECISION=bfloat16 (the GPU path, on the CPU): the file
    says so, has its own name, and agrees with float32 within the tolerance; under auto
    (float32 here) the file says float32; files from before the owners' preprocessing
    are extracted again."""
    import h5py

    from napari_hila.features.extract import extract_slide
    from napari_hila.features.store import load_features

    slide = tmp_path / "shapes.tif"
    _shape_slide(slide, data[2])
    kw = dict(encoder="conch", weights=conch["weights"], device="cpu", patch_px=64)
    kw.update(region_px=128, region_mode="mean")
    auto = extract_slide(slide, tmp_path / "feats", **kw)
    monkeypatch.setenv("NAPARI_HILA_PRECISION", "bfloat16")
    bf16 = extract_slide(slide, tmp_path / "feats", **kw)
    assert bf16 != auto  # asked for: its own file
    a, b = load_features(auto), load_features(bf16)
    assert a.attrs["encoder_dtype"] == "float32" and b.attrs["encoder_dtype"] == "bfloat16"
    assert a.attrs["encoder_device"] == b.attrs["encoder_device"] == "cpu"
    recorded = json.loads(a.attrs["encoder_preprocessing"])
    assert recorded["interpolation"] == "bicubic" and recorded["size"] == IMAGE
    np.testing.assert_allclose(recorded["mean"], OPENAI_MEAN)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert 1 - _cosines(a.features, b.features).min() < MIXED_TOLERANCE["bfloat16"]
    assert not np.array_equal(a.features, b.features)
    stamp = bf16.stat().st_mtime_ns
    assert extract_slide(slide, tmp_path / "feats", **kw) == bf16
    assert bf16.stat().st_mtime_ns == stamp  # a cache hit: the file was not rewritten
    monkeypatch.setenv("NAPARI_HILA_PRECISION", "float64")
    with pytest.raises(EncoderError, match="float64"):
        extract_slide(slide, tmp_path / "feats", **kw)
    monkeypatch.delenv("NAPARI_HILA_PRECISION")
    with h5py.File(auto, "a") as h5:  # as a file of the bilinear days had it
        del h5.attrs["preprocess_version"]
        h5.attrs["extraction_seconds"] = -1.0
    again = extract_slide(slide, tmp_path / "feats", **kw)
    assert again == auto and load_features(again).attrs["extraction_seconds"] >= 0


def _cpu_autocast_supports(dtype) -> bool:
    try:
        with torch.autocast("cpu", dtype=dtype):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except RuntimeError:
        return False


# -- pairing, digests and prediction through the CLI -----------------------------------------


def test_text_encoder_defaults_to_the_vision_encoders_own_tower():
    from napari_hila.encoders.pairing import choose_text_encoder, pairing_warning

    for vision in ("conch", "plip", "quiltnet", "clip"):
        assert choose_text_encoder(vision)[0] == f"{vision}-text"
        assert pairing_warning(vision, f"{vision}-text (sha256:0123)") is None
    warning = pairing_warning("conch", "minilm (all-MiniLM-L6-v2)")
    assert "'conch'" in warning and "'minilm'" in warning and "--text-encoder conch-text" in warning
    assert pairing_warning("uni", "minilm (all-MiniLM-L6-v2)") is None  # nothing better exists
    assert choose_text_encoder("conch-trunk")[0] == "minilm"  # the trunk is not in text's space


def _shape_cohort(folder, data, n_slides: int = 6):
    """Slides of shape mosaics (one class subset each) and a cohort CSV for them."""
    _, _, images, labels = data
    rng = np.random.default_rng(3)
    (folder / "slides").mkdir(parents=True)
    rows = ["patient_id,slide_id,time,event"]
    for i in range(n_slides):
        pick = rng.choice(len(images), 12, replace=False)
        _shape_slide(folder / "slides" / f"S{i}.tif", images[pick], columns=4)
        hazard = float(np.mean([ref.CLASSES[k][0] == "red" for k in labels[pick]]))
        rows.append(f"P{i},S{i},{10 * np.exp(-2 * hazard) + i:.2f},{int(i % 3 != 0)}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "slides", folder / "cohort.csv"


def test_card_pairing_and_weights_digests_through_train_and_predict(
    conch, data, tmp_path, monkeypatch, capsys
):
    """extract -> train (text side: conch's own tower, from the config) -> card with both
    digests -> predict from the cache without weights; other weights are refused by digest."""
    import shutil

    from napari_hila.cli import main
    from napari_hila.features.extract import extract_slide

    config = tmp_path / "encoders.yaml"
    config.write_text(f"conch:\n  weights: {conch['weights']}\n")
    monkeypatch.setenv("NAPARI_HILA_ENCODERS", str(config))
    slides, csv = _shape_cohort(tmp_path, data)
    feats = tmp_path / "feats"
    grid = {"patch_px": 64, "region_px": 128, "region_mode": "mean", "device": "cpu"}
    for slide in sorted(slides.glob("*.tif")):
        extract_slide(slide, feats, encoder="conch", **grid)
    out = tmp_path / "run"
    argv = ["train", "--cohort", str(csv), "--features", str(feats), "--out", str(out)]
    argv += ["--model", "vl-cosine", "--prompts", _prompt_file(tmp_path), "--folds", "2"]
    argv += ["--epochs", "1", "--quiet", "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "text encoder: conch-text" in printed.out and "warning" not in printed.err
    card = json.loads((out / "final_model" / "card.json").read_text())
    digest = get_vision_encoder("conch", device="cpu").version
    patch = card["encoders"]["patch"]
    assert patch | {"preprocessing": None} == {
        "name": "conch",
        "version": digest,
        "dim": 32,
        "dtype": "float32",  # how the features ran (auto on the CPU), from the feature files
        "device": "cpu",
        "preprocessing": None,
    }
    assert patch["preprocessing"]["interpolation"] == "bicubic"
    assert patch["preprocessing"]["size"] == IMAGE
    np.testing.assert_allclose(patch["preprocessing"]["mean"], OPENAI_MEAN)
    assert card["prompts"]["text_encoder"] == f"conch-text ({digest})"
    assert card["config"]["shared_space"] is True

    # predict: the cache holds features of the card's weights, so no weights are needed
    monkeypatch.setenv("NAPARI_HILA_ENCODERS", str(tmp_path / "empty.yaml"))
    (tmp_path / "empty.yaml").write_text("{}\n")
    slide = slides / "S0.tif"
    args = ["predict", str(slide), "--model", str(out / "final_model"), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "p1"), "--cache", str(feats)]) == 0
    # a fresh cache and no weights: one clear error naming the flag and the config file
    assert main([*args, "--out", str(tmp_path / "p2"), "--cache", str(tmp_path / "c2")]) == 2
    assert "--weights" in capsys.readouterr().err
    # other weights of the same encoder: refused, both digests named
    other = tmp_path / "other"
    other.mkdir()
    state = torch.load(conch["weights"], weights_only=True)
    state["visual.proj_contrast"] = state["visual.proj_contrast"] * 1.01
    torch.save(state, other / "pytorch_model.bin")
    shutil.copy(conch["weights"].with_suffix(".bin.json"), other / "pytorch_model.bin.json")
    other_digest = get_vision_encoder("conch", weights=other / "pytorch_model.bin").version
    code = main(
        [*args, "--out", str(tmp_path / "p3"), "--cache", str(feats)]
        + ["--weights", str(other / "pytorch_model.bin")]
    )
    err = capsys.readouterr().err
    assert code == 2 and digest in err and other_digest in err
    # and features of those weights, extracted beside the others, get their own file
    before = set(feats.glob("S0-*.h5"))
    path = extract_slide(slide, feats, encoder="conch", weights=other / "pytorch_model.bin", **grid)
    assert path not in before and len(set(feats.glob("S0-*.h5"))) == len(before) + 1
    from napari_hila.errors import ModelFileError
    from napari_hila.features.store import load_features
    from napari_hila.modelfile import check_features_match

    with pytest.raises(ModelFileError) as refused:
        check_features_match(card, load_features(path), str(path))
    assert digest in str(refused.value) and other_digest in str(refused.value)


def test_region_encoder_weights_get_their_own_feature_file(conch, data, tmp_path):
    from napari_hila.features.extract import extract_slide
    from napari_hila.features.store import load_features

    slide = tmp_path / "s.tif"
    _shape_slide(slide, data[2][:12], columns=4)
    other = tmp_path / "other.bin"
    state = torch.load(conch["weights"], weights_only=True)
    state["visual.trunk.norm.weight"] = state["visual.trunk.norm.weight"] * 1.01
    torch.save(state, other)
    other.with_suffix(".bin.json").write_text(conch["weights"].with_suffix(".bin.json").read_text())
    grid = {"patch_px": 64, "region_px": 128, "device": "cpu", "encoder": "hila-descriptor"}
    paths = [
        extract_slide(slide, tmp_path / "f", region_encoder="conch-trunk", region_weights=w, **grid)
        for w in (conch["weights"], other, conch["weights"])
    ]
    assert paths[0] != paths[1] and paths[0] == paths[2]
    a, b = (load_features(p).region_features for p in paths[:2])
    assert a.shape == b.shape and not np.allclose(a, b)


def test_embed_prompts_takes_text_weights_and_warns_outside_the_pair(conch, tmp_path, capsys):
    from napari_hila.training.crossval import embed_prompts

    prompts = _prompt_file(tmp_path)
    own = embed_prompts(
        prompts, "auto", "cpu", vision_encoder="conch", text_weights=str(conch["weights"])
    )
    printed = capsys.readouterr()
    assert own["text_encoder"].startswith("conch-text (sha256:") and "warning" not in printed.err
    assert own["text_dim"] == 32
    other = embed_prompts(prompts, "descriptor-vocabulary", "cpu", vision_encoder="conch")
    assert other["text_encoder"].startswith("descriptor-vocabulary")
    assert "--text-encoder conch-text" in capsys.readouterr().err


def test_extract_with_a_missing_weights_file_fails_before_reading_the_slide(tmp_path, monkeypatch):
    import napari_hila.slides
    from napari_hila.features.extract import extract_slide

    def refuse(*args, **kwargs):
        raise AssertionError("the slide was opened")

    monkeypatch.setattr(napari_hila.slides, "open_slide", refuse)
    missing = tmp_path / "conch" / "pytorch_model.bin"
    with pytest.raises(EncoderError, match="not found") as err:
        extract_slide(tmp_path / "s.tif", tmp_path / "f", encoder="conch", weights=missing)
    assert str(missing) in str(err.value)
    config = tmp_path / "encoders.yaml"
    config.write_text(f"conch: {missing}\n")
    monkeypatch.setenv("NAPARI_HILA_ENCODERS", str(config))
    with pytest.raises(EncoderError, match=f"named in {config}.*not found"):
        extract_slide(tmp_path / "s.tif", tmp_path / "f", encoder="conch")


def test_extract_cli_refuses_unloadable_weights_once_before_any_slide(
    conch, made, data, tmp_path, capsys
):
    """Another model's checkpoint, a pickled one: one error line, exit 2, no slide read."""
    from napari_hila.cli import main

    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(2):
        _shape_slide(slides / f"s{i}.tif", data[2][:6])
    pickled = tmp_path / "pickled" / "pytorch_model.bin"
    pickled.parent.mkdir()
    torch.save({"model": conch["model"]}, pickled)
    quilt = made("quiltnet", 0)["folder"] / "open_clip_pytorch_model.bin"
    for weights, says in ((quilt, "not a CONCH checkpoint"), (pickled, "pickled checkpoint")):
        out = tmp_path / f"out-{weights.parent.name}"
        argv = ["extract", str(slides), "--out", str(out), "--encoder", "conch", "--quiet"]
        code = main(argv + ["--weights", str(weights), "--patch-px", "64", "--region-px", "128"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("error:") == 1 and says in err and str(weights) in err
        assert "s0.tif" not in err and not out.exists()
    code = main(argv[:-1] + ["--weights", str(conch["weights"]), "--patch-px", "64"])
    assert code == 0 and "2 of 2 slides extracted" in capsys.readouterr().out
