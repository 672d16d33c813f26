"""VPTSurv: prompts, frozen encoder, masking, chunked encoding, training, explanation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _model_fixtures import one_torch_thread  # noqa: F401  (one torch thread: tiny models)
from lifelines.utils import concordance_index

from napari_hila.errors import HilaError
from napari_hila.features.tile_bags import InMemoryTiles, TileBatch
from napari_hila.models import build_model, get_model_spec
from napari_hila.models.vptsurv import VPTSurv, high_pass

TINY_VIT = dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64)
SMALL = dict(vit=TINY_VIT, decoder_dim=32, decoder_heads=4, dropout=0.0, tile_chunk=8)


def random_tiles(rng: np.random.Generator, n: int, name: str = "slide") -> InMemoryTiles:
    tiles = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    context = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    coords = np.stack([np.arange(n) % 8, np.arange(n) // 8], axis=1).astype(np.int64) * 256
    return InMemoryTiles(tiles, context, coords, 256, name)


def test_registered_as_tiles_with_paper_settings():
    spec = get_model_spec("vptsurv")
    assert spec.inputs == "tiles"
    cfg = spec.make_config()
    assert (cfg.adaptor_dim, cfg.decoder_layers, cfg.train_tiles, cfg.inference_tiles) == (
        24,
        2,
        200,
        1000,
    )


def test_needs_a_vit():
    with pytest.raises(HilaError, match="encoder_weights=PATH"):
        build_model("vptsurv")


def test_high_pass_removes_low_frequencies_only():
    y, x = np.mgrid[0:64, 0:64]
    low = np.sin(2 * np.pi * x / 32)  # 1/32 cycles/px, below the 0.05 cut-off
    high = np.cos(2 * np.pi * (x / 4 + y / 8))  # about 0.28 cycles/px
    image = torch.tensor(3.0 + low + high, dtype=torch.float32)
    out = high_pass(image, 0.05).numpy()
    np.testing.assert_allclose(out, high, atol=1e-4)  # constant and low frequency gone, high kept
    # same as the mask applied with numpy's FFT
    f = np.fft.fftfreq(64)
    keep = np.hypot(f[:, None], f[None, :]) >= 0.05
    keep[0, 0] = False
    reference = np.fft.ifft2(np.fft.fft2(image.numpy()) * keep).real
    np.testing.assert_allclose(out, reference, atol=1e-4)


def frozen_encoder_tokens(model: VPTSurv, tiles: np.ndarray) -> torch.Tensor:
    """What the frozen ViT alone gives: blocks, final norm, mean of the patch tokens."""
    x = model.encoder.embed(model._pixels(tiles))
    for block in model.encoder.blocks:
        x = block(x)
    return model.encoder.norm(x)[:, 1:].mean(dim=1)


def test_untrained_adaptors_leave_the_encoder_output_unchanged():
    rng = np.random.default_rng(0)
    tiles = random_tiles(rng, 6)
    model = build_model("vptsurv", **SMALL).eval()
    with torch.no_grad():
        ours = model.encode_tiles(tiles.tiles, tiles.context)
        torch.testing.assert_close(ours, frozen_encoder_tokens(model, tiles.tiles))
        torch.nn.init.normal_(model.adaptors[0].up.weight)  # a trained adaptor changes it
        assert not torch.allclose(model.encode_tiles(tiles.tiles, tiles.context), ours)


def test_padding_and_chunking_do_not_change_the_output():
    rng = np.random.default_rng(1)
    small, large = random_tiles(rng, 5, "a"), random_tiles(rng, 19, "b")
    model = build_model("vptsurv", **SMALL).eval()
    torch.nn.init.normal_(model.adaptors[1].up.weight, std=0.1)
    with torch.no_grad():
        alone = model(TileBatch([small])).logits
        padded = model(TileBatch([large, small])).logits
        model.config.tile_chunk = 3
        rechunked = model(TileBatch([small])).logits
    torch.testing.assert_close(padded[1:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rechunked, alone, atol=1e-5, rtol=1e-5)


class CountingTiles(InMemoryTiles):
    """Records how many tiles each read asks for."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.reads: list[int] = []

    def read(self, start: int, stop: int):
        self.reads.append(stop - start)
        return super().read(start, stop)


def test_tiles_are_read_chunk_by_chunk():
    rng = np.random.default_rng(2)
    base = random_tiles(rng, 10)
    counting = CountingTiles(base.tiles, base.context, base.coords, 256)
    model = build_model("vptsurv", **{**SMALL, "tile_chunk": 4}).eval()
    with torch.no_grad():
        model(TileBatch([counting]))
    assert counting.reads == [4, 4, 2]


def test_batch_from_bags_samples_train_and_inference_tiles():
    rng = np.random.default_rng(3)
    tiles = random_tiles(rng, 30, "slide-7")
    model = build_model("vptsurv", **{**SMALL, "train_tiles": 8, "inference_tiles": 20})
    first = model.batch_from_bags([tiles], epoch=0).slides[0]
    again = model.batch_from_bags([tiles], epoch=0).slides[0]
    later = model.batch_from_bags([tiles], epoch=1).slides[0]
    assert len(first) == 8
    np.testing.assert_array_equal(first.coords, again.coords)  # deterministic
    assert not np.array_equal(first.coords, later.coords)  # new tiles each epoch
    assert len(model.batch_from_bags([tiles], train=False).slides[0]) == 20
    model.config.inference_tiles = 1000
    assert len(model.batch_from_bags([tiles], train=False).slides[0]) == 30  # all when fewer


def test_checkpointing_gives_the_same_gradients():
    rng = np.random.default_rng(4)
    batch = TileBatch([random_tiles(rng, 6)])
    grads = []
    for use in (True, False):
        torch.manual_seed(0)
        model = build_model("vptsurv", **{**SMALL, "checkpoint_tiles": use}).train()
        torch.nn.init.normal_(model.adaptors[0].up.weight, std=0.1)
        model(batch).risk.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0], grads[1])


def planted_tiles(rng: np.random.Generator, share: float, n: int, name: str) -> InMemoryTiles:
    """Pink smooth tiles; a ``share`` of them carry dark purple nuclei-like dots."""
    tiles = np.empty((n, 32, 32, 3), np.uint8)
    tiles[:] = (235, 170, 200)
    tiles = (tiles + rng.integers(-10, 10, tiles.shape)).clip(0, 255).astype(np.uint8)
    for i in np.flatnonzero(rng.random(n) < share):
        for _ in range(12):
            y, x = rng.integers(2, 30, 2)
            tiles[i, y - 2 : y + 2, x - 2 : x + 2] = (70, 30, 120)
    coords = np.stack([np.arange(n) % 4, np.arange(n) // 4], axis=1).astype(np.int64) * 256
    return InMemoryTiles(tiles, tiles.copy(), coords, 256, name)


def test_trains_on_a_planted_signal_and_keeps_the_encoder_frozen():
    from napari_hila.survival.losses import make_time_bins, time_to_bin
    from napari_hila.training.trainer import FitSettings, fit_model, slide_risks

    rng = np.random.default_rng(5)
    n, k = 48, 32  # 32 patients train, 16 are held out
    share = rng.uniform(0.0, 0.9, n)
    time = rng.exponential(1.0 / np.exp(4.0 * share)) * 30 + 1
    event = (rng.random(n) < 0.75).astype(int)
    bags = [planted_tiles(rng, s, 12, f"p{i}") for i, s in enumerate(share)]
    torch.manual_seed(0)
    model = build_model("vptsurv", **{**SMALL, "train_tiles": 8, "inference_tiles": 12})
    encoder_before = {key: v.clone() for key, v in model.encoder.state_dict().items()}
    edges = make_time_bins(time[:k], event[:k])
    settings = FitSettings(epochs=10, lr=3e-3, batch_size=4, show_progress=False)
    losses = fit_model(model, bags[:k], time_to_bin(time[:k], edges), event[:k], settings)
    assert losses[-1] < 0.9 * losses[0]
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), f"frozen encoder weight {key} changed"
    assert any(bool(a.up.weight.abs().sum() > 0) for a in model.adaptors)  # adaptors did train
    risk = slide_risks(model, bags)
    # lifelines wants higher score = longer survival: pass -risk
    assert concordance_index(time[:k], -risk[:k], event[:k]) > 0.7
    # held out: 0.79 here, where the planted share itself (the oracle) scores 0.81
    assert concordance_index(time[k:], -risk[k:], event[k:]) > 0.7


def test_explanation_is_the_decoder_attention_over_the_tiles():
    rng = np.random.default_rng(6)
    tiles = random_tiles(rng, 9)
    model = build_model("vptsurv", **SMALL).eval()
    batch = TileBatch([tiles])
    exp = model.explain(batch)
    with torch.no_grad():
        out = model(batch, need_weights=True)
    assert exp.risk == pytest.approx(float(out.risk[0]), abs=1e-6)
    level = exp.levels["tiles"]
    np.testing.assert_array_equal(level.coords, tiles.coords)
    assert level.tile_size == 256
    q = model.config.num_queries
    assert level.maps.shape == (9, 2 + q) and len(level.map_names) == len(level.map_texts) == 2 + q
    np.testing.assert_allclose(level.maps.mean(axis=0), 1.0, atol=1e-5)  # x uniform share
    expected = out.details["cross_attention"][-1][0].mean(dim=0).numpy()
    np.testing.assert_allclose(level.scores, expected, atol=1e-6)
    assert level.selected.sum() == 1 and level.scores[level.selected][0] == level.scores.max()
    with pytest.raises(ValueError, match="one slide"):
        model.explain(TileBatch([tiles, tiles]))


def test_model_file_round_trip_keeps_the_frozen_encoder(tmp_path):
    from napari_hila.modelfile import config_to_dict, load_model, save_model

    rng = np.random.default_rng(7)
    batch = TileBatch([random_tiles(rng, 5)])
    model = build_model("vptsurv", **SMALL).eval()
    torch.nn.init.normal_(model.adaptors[0].up.weight, std=0.1)
    save_model(tmp_path / "m", model, {"model": "vptsurv", "config": config_to_dict(model.config)})
    loaded = load_model(tmp_path / "m", device="cpu").model
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, model(batch).logits)


def test_explain_reports_progress_and_can_be_cancelled():
    import threading

    from napari_hila.errors import Cancelled

    rng = np.random.default_rng(8)
    batch = TileBatch([random_tiles(rng, 10)])
    model = build_model("vptsurv", **{**SMALL, "tile_chunk": 4}).eval()
    seen = []
    model.explain(batch, progress=lambda stage, fraction: seen.append((stage, round(fraction, 2))))
    assert seen == [("tiles", 0.4), ("tiles", 0.8), ("tiles", 1.0)]
    stop = threading.Event()

    def stop_after_first(stage: str, fraction: float) -> None:
        stop.set()

    with pytest.raises(Cancelled):
        model.explain(batch, progress=stop_after_first, cancel=stop)


def test_builds_from_local_vit_weights(tmp_path):
    from safetensors.torch import save_file

    from napari_hila.encoders.vit import VisionTransformer, ViTConfig

    torch.manual_seed(3)
    vit = VisionTransformer(ViTConfig(**TINY_VIT))
    path = tmp_path / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    model = build_model("vptsurv", **{**SMALL, "vit": {}, "encoder_weights": str(path)})
    for key, value in vit.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert model.config.vit["width"] == 32 and model.config.vit["depth"] == 2
    assert model.config.encoder_weights == "" and model.config.encoder_source == str(path)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    with pytest.raises(HilaError, match="missing.safetensors: ViT weights for VPTSurv not found"):
        build_model("vptsurv", encoder_weights=str(tmp_path / "missing.safetensors"))


def test_tiles_are_prepared_as_the_encoders_owners_do():
    """Tiles of another size reach the ViT as PIL's bicubic resize + CLIP mean/std gives them
    (encoder "clip"), within 2 grey levels; the bilinear resize used before is off by > 10."""
    from test_encoders_preprocess import _old_bilinear, crafted, grey_levels, owner_pixels

    from napari_hila.encoders.registry import CLIP_MEAN, CLIP_STD

    model = build_model("vptsurv", **{**SMALL, "encoder": "clip"}).eval()
    assert model.preprocessing.interpolation == "bicubic" and model.preprocessing.size == 32
    tiles = np.stack([crafted(64, 64, seed) for seed in range(2)])
    got = model._pixels(tiles).numpy()
    for tile, pixels in zip(tiles, got, strict=True):
        want = owner_pixels(tile, 32, CLIP_MEAN, CLIP_STD, "bicubic")
        assert grey_levels(pixels, want, CLIP_STD).max() <= 2
        old = _old_bilinear(tile, 32, CLIP_MEAN, CLIP_STD)
        assert grey_levels(old, want, CLIP_STD).max() > 10


def test_preprocessing_is_the_weights_own_and_travels_with_the_model(tmp_path):
    """A preprocessor_config.json beside the ViT's weights changes mean, std and filter for
    VPTSurv exactly as for that encoder's features; the model file keeps them once the
    weights' folder is gone."""
    import json

    from safetensors.torch import save_file

    from napari_hila.encoders import get_vision_encoder
    from napari_hila.encoders.vit import VisionTransformer, ViTConfig
    from napari_hila.modelfile import config_to_dict, load_model, save_model

    torch.manual_seed(4)
    vit = VisionTransformer(ViTConfig(**TINY_VIT))
    folder = tmp_path / "weights"
    folder.mkdir()
    path = folder / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    mean, std = [0.7, 0.6, 0.5], [0.1, 0.2, 0.3]
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": mean, "image_std": std, "resample": 3})
    )
    model = build_model("vptsurv", **{**SMALL, "vit": {}, "encoder_weights": str(path)}).eval()
    features = get_vision_encoder("vit", weights=path, device="cpu")
    assert model.preprocessing == features.preprocessing
    assert model.preprocessing.interpolation == "bicubic"  # the file's, not vit's bilinear
    np.testing.assert_allclose(model.preprocessing.mean, mean)
    tiles = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    torch.testing.assert_close(model._pixels(tiles), features.preprocess(tiles))
    save_model(tmp_path / "m", model, {"model": "vptsurv", "config": config_to_dict(model.config)})
    (folder / "preprocessor_config.json").unlink()
    loaded = load_model(tmp_path / "m", device="cpu").model
    assert loaded.preprocessing == model.preprocessing
    torch.testing.assert_close(loaded._pixels(tiles), model._pixels(tiles))


def test_a_model_saved_before_preprocessing_was_recorded_keeps_bilinear(tmp_path):
    """Cards without config.preprocessing load with the bilinear resize they were trained
    with (LEGACY_DEFAULTS), the encoder's own mean/std; a bad entry is one clear error."""
    from napari_hila.errors import ModelConfigError
    from napari_hila.modelfile import config_to_dict, load_model, save_model

    model = build_model("vptsurv", **{**SMALL, "encoder": "clip"}).eval()
    config = config_to_dict(model.config)
    del config["preprocessing"]
    save_model(tmp_path / "old", model, {"model": "vptsurv", "config": config})
    loaded = load_model(tmp_path / "old", device="cpu").model
    assert loaded.preprocessing.interpolation == "bilinear"
    assert loaded.preprocessing.mean == model.preprocessing.mean  # clip's, from the registry
    with pytest.raises(ModelConfigError, match="preprocessing: unknown keys"):
        build_model("vptsurv", **{**SMALL, "preprocessing": {"filter": "bicubic"}})
    with pytest.raises(ModelConfigError, match="interpolation"):
        build_model("vptsurv", **{**SMALL, "preprocessing": {"interpolation": "nearest"}})
