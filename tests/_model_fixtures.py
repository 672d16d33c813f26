"""Small synthetic slides and models shared by the model tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_hila.features.store import SlideFeatures
from napari_hila.models import build_model
from napari_hila.models.base import UsesPrompts

PATCH_DIM, REGION_DIM, TEXT_DIM, WIDTH = 12, 10, 8, 16
PROMPT_MODELS = ("hila", "hila-no-clp", "hila-no-mcl", "hila-patch", "vl-cosine")
ALL_MODELS = (*PROMPT_MODELS, "abmil", "transmil")


def make_slide(rng: np.random.Generator, n_patches: int, n_regions: int) -> SlideFeatures:
    """Patches on a grid of 256 px, regions of 1024 px (4 x 4 patches) holding them."""
    side = max(1, int(np.ceil(np.sqrt(max(n_regions, 1)))))
    region_coords = np.stack(
        [np.arange(n_regions) % side * 1024, np.arange(n_regions) // side * 1024], 1
    ).astype(np.int64)
    parents = rng.integers(0, n_regions, n_patches) if n_regions else np.full(n_patches, -1)
    offsets = rng.integers(0, 4, (n_patches, 2)) * 256
    coords = (region_coords[parents] if n_regions else np.zeros((n_patches, 2), np.int64)) + offsets
    return SlideFeatures(
        features=rng.normal(size=(n_patches, PATCH_DIM)).astype(np.float32),
        coords=coords.astype(np.int64),
        region_features=rng.normal(size=(n_regions, REGION_DIM)).astype(np.float32),
        region_coords=region_coords,
        patch_to_region=parents.astype(np.int64),
        attrs={"patch_size": 256, "region_size": 1024},
    )


def make_model(name: str, seed: int = 0, **settings) -> torch.nn.Module:
    """A tiny model with random (fixed-seed) prompt embeddings installed."""
    torch.manual_seed(seed)
    dims = {"patch_dim": PATCH_DIM, "hidden_dim": WIDTH}
    if name in PROMPT_MODELS:
        dims.update(region_dim=REGION_DIM, text_dim=TEXT_DIM, mcl_dim=8)
    if name == "abmil":
        dims.update(attention_dim=8)
    if name == "transmil":
        dims.update(n_heads=2, landmarks=8)  # bags of 9+ tokens take the Nystrom path
    model = build_model(name, **{**dims, **settings})
    if isinstance(model, UsesPrompts):
        gen = np.random.default_rng(seed + 100)
        for level in model.prompt_levels():
            k = len(model.prompt_names(level))
            model.set_prompt_embeddings(level, gen.normal(size=(k, TEXT_DIM)))
    return model


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models are overhead-bound: one thread avoids contention on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
