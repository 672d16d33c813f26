"""Every local-weights loader, with tiny random checkpoints written here.

Each test builds a reference module in the checkpoint's own layout, saves it in
one format, loads it through the registry and compares the embeddings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _vl_reference import OpenClipReference, write_clip_tokenizer
from torch import nn

from napari_hila.encoders import EncoderError, get_text_encoder, get_vision_encoder
from napari_hila.encoders.vit import VisionTransformer, ViTConfig

TINY = ViTConfig(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64)


def _tiles(n: int = 3, size: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _reference_output(model: nn.Module, enc, tiles: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(enc.preprocess(tiles)).numpy()


def _timm_model(layer_scale: bool) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = ViTConfig(**{**TINY.to_dict(), "layer_scale": layer_scale})
    model = VisionTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # layer scale and norms away from their init
    return model


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".safetensors"])
@pytest.mark.parametrize("layer_scale", [False, True])
def test_timm_layout_checkpoint_loads_exactly(tmp_path, suffix, layer_scale):
    model = _timm_model(layer_scale)
    path = tmp_path / f"uni{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"model": state} if suffix == ".pt" else state, path)
    (tmp_path / "config.json").write_text(json.dumps({"heads": 2}))
    enc = get_vision_encoder("uni", weights=path, device="cpu")
    assert enc.output_dim == 32 and enc.input_size == 32
    assert enc.model.config.layer_scale == layer_scale and enc.model.config.depth == 2
    tiles = _tiles()
    np.testing.assert_allclose(enc.encode(tiles), _reference_output(model, enc, tiles), atol=1e-5)
    # The documented block structure that layer adaptors rely on.
    block = enc.model.blocks[1]
    assert {"norm1", "attn", "norm2", "mlp"} <= set(dict(block.named_children()))


def test_open_clip_visual_tower_loads_exactly(tmp_path):
    """GELU towers (no QuickGELU in a config) and heads from a side-car JSON."""
    torch.manual_seed(1)
    model = OpenClipReference(20, width=32, embed=16, quick=False).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "quilt.bin"
    torch.save(state, path)
    path.with_name("quilt.bin.json").write_text(json.dumps({"heads": 2}))
    enc = get_vision_encoder("quiltnet", weights=path, device="cpu")
    assert enc.output_dim == 16 and enc.model.config.act == "gelu"
    tiles = _tiles()
    with torch.no_grad():
        expected = model.encode_image(enc.preprocess(tiles)).numpy()
    np.testing.assert_allclose(enc.encode(tiles), expected, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("plip")
    torch.manual_seed(2)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": 514,
            "max_position_embeddings": 40,
            "bos_token_id": 512,
            "eos_token_id": 513,
            "pad_token_id": 513,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    write_clip_tokenizer(folder)
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    return folder, model


def test_transformers_clip_directory_vision_tower(tiny_clip_dir):
    folder, model = tiny_clip_dir
    enc = get_vision_encoder("plip", weights=folder, device="cpu")
    assert enc.output_dim == 16 and enc.model.config.heads == 4
    tiles = _tiles()
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=enc.preprocess(tiles))
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    np.testing.assert_allclose(enc.encode(tiles), ref.numpy(), atol=1e-5)


def test_transformers_clip_text_tower(tiny_clip_dir):
    from transformers import CLIPTokenizer

    folder, model = tiny_clip_dir
    enc = get_text_encoder("plip-text", weights=folder, device="cpu")
    texts = ["tumour necrosis", "dense lymphocytes"]
    emb = enc.encode(texts)
    tok = CLIPTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_text_features(**tok)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    ref = ref / ref.norm(dim=1, keepdim=True)
    assert emb.shape == (2, 16)
    np.testing.assert_allclose(emb, ref.numpy(), atol=1e-5)


def test_unknown_layout_lists_keys(tmp_path):
    model = _timm_model(False)
    state = model.state_dict()
    state["blocks.0.attn.rel_pos_bias"] = torch.zeros(3)
    del state["norm.weight"]
    path = tmp_path / "odd.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(EncoderError) as err:
        get_vision_encoder("vit", weights=path, device="cpu")
    msg = str(err.value)
    assert "rel_pos_bias" in msg and "norm.weight" in msg and str(path) in msg


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _timm_model(False)}, path)  # a whole module, not a state dict
    with pytest.raises(EncoderError, match="pickled checkpoint.*never unpickles") as err:
        get_vision_encoder("vit", weights=path, device="cpu")
    assert str(path) in str(err.value) and "state_dict" in str(err.value)
    assert "weights_only=False" not in str(err.value)  # torch's advice to unpickle is not relayed
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="cannot read weights"):
        get_vision_encoder("vit", weights=path, device="cpu")


def test_conch_style_trunk_loads_and_heads_are_skipped(tmp_path):
    model = _timm_model(False)
    state = {f"visual.trunk.{k}": v for k, v in model.state_dict().items()}
    state["visual.attn_pool_contrast.attn.in_proj_weight"] = torch.randn(96, 32)
    state["text.token_embedding.weight"] = torch.randn(10, 32)
    state["logit_scale"] = torch.tensor(1.0)
    path = tmp_path / "conch.pt"
    torch.save(state, path)
    path.with_suffix(".json").write_text(json.dumps({"heads": 2}))
    enc = get_vision_encoder("conch-trunk", weights=path, device="cpu")
    tiles = _tiles()
    np.testing.assert_allclose(enc.encode(tiles), _reference_output(model, enc, tiles), atol=1e-5)


def test_uni_prepares_tiles_as_its_model_card_does(tmp_path):
    """UNI's card: transforms.Resize(224) (torchvision's default, PIL bilinear), ImageNet mean/std."""
    from test_encoders_preprocess import LEVELS, crafted, grey_levels, owner_pixels

    path = tmp_path / "uni.bin"
    torch.save(_timm_model(False).state_dict(), path)
    (tmp_path / "config.json").write_text(json.dumps({"heads": 2}))
    enc = get_vision_encoder("uni", weights=path, device="cpu")
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert enc.preprocessing.interpolation == "bilinear"
    for shape in ((64, 64), (20, 20)):
        img = crafted(*shape)
        want = owner_pixels(img, 32, *imagenet, "bilinear")
        got = enc.preprocess(img[None])[0].numpy()
        assert grey_levels(got, want, imagenet[1]).max() <= LEVELS
