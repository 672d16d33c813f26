"""Turning one slide's forward pass into a plain-numpy :class:`Explanation`.

Shared by every model here: padded tokens are cut off with the batch's mask,
and tile sizes come from the caller (the feature file knows them) or, failing
that, from the spacing of the coordinates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from napari_hila.models.base import SurvivalOutput
from napari_hila.models.batch import SlideBatch
from napari_hila.results import Explanation, LevelExplanation

__all__ = [
    "DEFAULT_TILE_SIZES",
    "attention_explanation",
    "check_single_slide",
    "eval_mode",
    "forward_for_explanation",
    "level_explanation",
    "tile_size_for",
]

# Level-0 px at 0.5 um/px (20x): 256 px patches, 4096 px regions (METHODS notation).
DEFAULT_TILE_SIZES = {"patch": 256, "region": 4096}


def check_single_slide(batch: SlideBatch) -> None:
    """Explanations are per slide; refuse a batch of several."""
    if batch.batch_size != 1:
        raise ValueError(f"explain() takes a batch of one slide, got {batch.batch_size}")


def forward_for_explanation(model: torch.nn.Module, batch: SlideBatch) -> SurvivalOutput:
    """One forward pass on one slide in eval mode (no dropout, no queue update), mode restored."""
    check_single_slide(batch)
    with eval_mode(model), torch.no_grad():
        return model(batch)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run a block with ``model`` in eval mode and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def tile_size_for(level: str, coords: np.ndarray, tile_sizes: Mapping[str, int] | None) -> int:
    """The level's tile side in level-0 px: given, else the coordinate grid step."""
    if tile_sizes and level in tile_sizes:
        return int(tile_sizes[level])
    steps = [np.diff(np.unique(coords[:, axis])) for axis in (0, 1)] if len(coords) else []
    steps = np.concatenate(steps) if steps else np.empty(0)
    steps = steps[steps > 0]
    if steps.size:
        return int(steps.min())
    return DEFAULT_TILE_SIZES.get(level, 256)


def level_explanation(
    level: str,
    coords: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    selected: torch.Tensor,
    maps: torch.Tensor,
    map_names: list[str],
    map_texts: list[str],
    tile_sizes: Mapping[str, int] | None,
    parent: torch.Tensor | None = None,
) -> LevelExplanation:
    """One level of slide 0 of a batch, padding removed, as numpy."""
    keep = mask[0].cpu().numpy().astype(bool)
    xy = coords[0].cpu().numpy()[keep].astype(np.int64)
    return LevelExplanation(
        level=level,
        coords=xy,
        tile_size=tile_size_for(level, xy, tile_sizes),
        scores=scores[0].detach().cpu().float().numpy()[keep],
        selected=selected[0].cpu().numpy().astype(bool)[keep],
        maps=maps[0].detach().cpu().float().numpy()[keep].reshape(-1, maps.shape[-1]),
        map_names=list(map_names),
        map_texts=list(map_texts),
        parent=None if parent is None else parent[0].cpu().numpy()[keep].astype(np.int64),
    )


def attention_explanation(
    output: SurvivalOutput,
    batch: SlideBatch,
    attention: torch.Tensor,
    tile_sizes: Mapping[str, int] | None,
    text: str,
) -> Explanation:
    """Explanation of an attention-MIL model: its patch attention is the one map.

    Every valid token counts as selected (these models do not select);
    ``scores`` are the attention weights, the map is M a_i, the token's
    attention relative to a uniform share (the scale of every map).
    """
    counts = batch.patch_mask.sum(dim=1).clamp(min=1).to(attention.dtype)
    level = level_explanation(
        "patch",
        batch.patch_coords,
        batch.patch_mask,
        attention,
        batch.patch_mask,
        (attention * counts.unsqueeze(1)).unsqueeze(-1),
        ["attention"],
        [text],
        tile_sizes,
        parent=batch.patch_to_region,
    )
    return Explanation(
        risk=float(output.risk[0]),
        hazards=output.hazards[0].detach().cpu().numpy().astype(np.float32),
        survival=output.survival[0].detach().cpu().numpy().astype(np.float32),
        levels={"patch": level},
        contributions=[],
        contribution_method="none: attention models have no prompts",
    )
