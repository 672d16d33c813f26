"""HiLa: hierarchical vision-language survival model (MICCAI 2025, METHODS 1).

Patch and region tokens are aligned with language prompts by optimal
transport (OPL), the selected patches recalibrate the regions they lie in
(CLP), the two levels' prototypes contrast against each other (MCL, training
only), and the mean prompt features of both levels predict T hazards.

The variants the paper compares against share this class through settings:
``hila-patch`` (patch level only), ``vl-cosine`` (patch level, softmax over
cosine similarity instead of OT, no selection), ``hila-no-clp``,
``hila-no-mcl``.

Prompts enter as fixed text embeddings held in buffers; set them with
:meth:`HiLa.set_prompt_embeddings` (the training code does, from the prompt
set and the text encoder) and they are saved with the weights, so a saved
model needs no text encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from napari_hila.models.base import SurvivalOutput, survival_from_logits
from napari_hila.models.batch import SlideBatch
from napari_hila.models.explain import eval_mode, forward_for_explanation, level_explanation
from napari_hila.models.hila_layers import (
    AlignmentSettings,
    CrossLevelPropagation,
    LevelAlignment,
    MutualContrastive,
    PromptProjection,
    VisualProjection,
    align_tokens,
)
from napari_hila.models.registry import add_variant, register_model
from napari_hila.results import Explanation, PromptContribution

__all__ = ["HiLa", "HiLaConfig"]

CONTRIBUTION_METHOD = (
    "leave-one-out: the slide's risk minus its risk when prompt k's feature is "
    "left out of its level's mean over prompts (positive: the prompt raises the risk)"
)

# Fallback prompts (METHODS 1.1 examples) so the model builds without a prompt
# set; real use passes the cancer type's prompt set from napari_hila.prompts.
_PATCH_PROMPTS = {
    "nuclear pleomorphism": "tumour cells with marked nuclear pleomorphism",
    "mitotic activity": "numerous mitotic figures among tumour cells",
    "necrosis": "areas of tumour necrosis",
    "lymphocytic infiltrate": "dense lymphocytic infiltrate around tumour cells",
}
_REGION_PROMPTS = {
    "invasion pattern": "infiltrative invasion of tumour into surrounding tissue",
    "tumour-stroma ratio": "tumour with abundant desmoplastic stroma",
    "glandular organisation": "loss of glandular organisation in the tumour",
    "tertiary lymphoid structures": "lymphoid aggregates at the tumour margin",
}


@dataclass
class HiLaConfig:
    """HiLa settings; defaults are the paper's or METHODS' where neither gives one."""

    patch_dim: int = 1024  # patch encoder width D_p
    region_dim: int = 1024  # region encoder width D_r
    text_dim: int = 384  # text encoder width D_t
    hidden_dim: int = 256  # shared width d
    n_bins: int = 4  # T
    dropout: float = 0.25
    patch_prompt_names: list[str] = field(default_factory=lambda: list(_PATCH_PROMPTS))
    patch_prompt_texts: list[str] = field(default_factory=lambda: list(_PATCH_PROMPTS.values()))
    region_prompt_names: list[str] = field(default_factory=lambda: list(_REGION_PROMPTS))
    region_prompt_texts: list[str] = field(default_factory=lambda: list(_REGION_PROMPTS.values()))
    adapter_alpha: float = 0.5
    adapter_reduction: int = 4
    use_region_level: bool = True
    use_clp: bool = True
    use_mcl: bool = True
    alignment: str = "ot"  # "ot" or "cosine" (vl-cosine)
    cosine_temperature: float = 0.1
    sinkhorn_eps: float = 0.1
    sinkhorn_max_iter: int = 100
    sinkhorn_tol: float = 1e-3
    sinkhorn_differentiable: bool = False
    select_ratio: float = 0.6  # r
    min_selected: int = 4
    add_aligned_prompt: bool = True  # Z_k += s_k T_k (gradient path through S)
    mcl_queue_size: int = 256
    mcl_temperature: float = 0.1
    mcl_weight: float = 0.1  # lambda
    mcl_dim: int = 128
    nll_alpha: float = 0.0  # uncensored weight of the NLL, read by the trainer (METHODS 1.6)


@register_model("hila", HiLaConfig, "HiLa: OPL at patch and region level, CLP and MCL (full model)")
class HiLa(nn.Module):
    """HiLa and its ablations; forward(SlideBatch) -> SurvivalOutput.

    Degenerate slides: with fewer tokens than ``min_selected`` all are
    selected; a level with no token at all (a slide without regions) gets the
    learned ``empty_level`` feature for every prompt, so the risk then rests
    on the other level; a region holding no selected patch gets CLP's learned
    empty token.
    """

    def __init__(self, config: HiLaConfig) -> None:
        super().__init__()
        self.config = config
        self.levels: tuple[str, ...] = (
            ("patch", "region") if config.use_region_level else ("patch",)
        )
        self._validate()
        width = config.hidden_dim
        in_dims = {"patch": config.patch_dim, "region": config.region_dim}
        self.visual = nn.ModuleDict(
            {lv: VisualProjection(in_dims[lv], width, config.dropout) for lv in self.levels}
        )
        self.text = nn.ModuleDict(
            {
                lv: PromptProjection(
                    config.text_dim, width, config.adapter_alpha, config.adapter_reduction
                )
                for lv in self.levels
            }
        )
        for lv in self.levels:
            n_prompts = len(self.prompt_names(lv))
            self.register_buffer(f"prompt_embeddings_{lv}", torch.zeros(n_prompts, config.text_dim))
        self.register_buffer(
            "prompt_embeddings_ready", torch.zeros(len(self.levels), dtype=torch.bool)
        )
        # Z for a level where the slide has no token (e.g. no region): learned.
        self.empty_level = nn.ParameterDict(
            {lv: nn.Parameter(torch.zeros(width)) for lv in self.levels}
        )
        hierarchical = config.use_region_level
        self.clp = CrossLevelPropagation(width) if hierarchical and config.use_clp else None
        self.mcl = (
            MutualContrastive(width, config.mcl_dim, config.mcl_queue_size, config.mcl_temperature)
            if hierarchical and config.use_mcl
            else None
        )
        self.fusion = nn.Sequential(
            nn.Linear(width * len(self.levels), width),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(width, config.n_bins),
        )
        self.alignment = AlignmentSettings(
            method=config.alignment,
            eps=config.sinkhorn_eps,
            max_iter=config.sinkhorn_max_iter,
            tol=config.sinkhorn_tol,
            differentiable=config.sinkhorn_differentiable,
            cosine_temperature=config.cosine_temperature,
            select_ratio=config.select_ratio,
            min_selected=config.min_selected,
            add_aligned_prompt=config.add_aligned_prompt,
        )

    def _validate(self) -> None:
        c = self.config
        if c.alignment not in ("ot", "cosine"):
            raise ValueError(f"alignment must be 'ot' or 'cosine', got {c.alignment!r}")
        if not 0.0 < c.select_ratio <= 1.0:
            raise ValueError(f"select_ratio must be in (0, 1], got {c.select_ratio}")
        for lv in self.levels:
            names, texts = self.prompt_names(lv), self.prompt_texts(lv)
            if not names or len(names) != len(texts):
                raise ValueError(
                    f"{lv} prompts: need at least one, and as many texts ({len(texts)}) "
                    f"as names ({len(names)})"
                )

    # -- prompts -------------------------------------------------------------
    def prompt_levels(self) -> tuple[str, ...]:
        """Levels that take a prompt set ("patch", and "region" unless patch-only)."""
        return self.levels

    def prompt_names(self, level: str) -> list[str]:
        return list(getattr(self.config, f"{level}_prompt_names"))

    def prompt_texts(self, level: str) -> list[str]:
        return list(getattr(self.config, f"{level}_prompt_texts"))

    def set_prompt_embeddings(self, level: str, embeddings: np.ndarray | torch.Tensor) -> None:
        """Store the frozen text embeddings (K x D_t) of ``level``'s prompts."""
        if level not in self.levels:
            raise ValueError(f"this model has no {level!r} prompts; levels: {self.levels}")
        buffer = getattr(self, f"prompt_embeddings_{level}")
        if isinstance(embeddings, torch.Tensor):
            values = embeddings.detach().to(buffer.dtype)
        else:
            values = torch.as_tensor(np.asarray(embeddings), dtype=buffer.dtype)
        if tuple(values.shape) != tuple(buffer.shape):
            raise ValueError(
                f"{level} prompt embeddings must be {tuple(buffer.shape)} "
                f"(prompts x text width), got {tuple(values.shape)}"
            )
        buffer.copy_(values.to(buffer.device))
        self.prompt_embeddings_ready[self.levels.index(level)] = True

    def prompt_features(self, level: str) -> torch.Tensor:
        """T (K x d): projected prompt embeddings of ``level``."""
        return self.text[level](getattr(self, f"prompt_embeddings_{level}"))

    # -- forward -------------------------------------------------------------
    def forward(self, batch: SlideBatch) -> SurvivalOutput:
        if not bool(self.prompt_embeddings_ready.all()):
            raise RuntimeError(
                "HiLa has no prompt embeddings yet: call set_prompt_embeddings(level, E) "
                f"for each of {self.levels} before the first forward pass"
            )
        alignments = self._align_levels(batch)
        summaries = [alignments[lv].features.mean(dim=1) for lv in self.levels]
        logits = self.fusion(torch.cat(summaries, dim=-1))
        aux_loss = logits.new_zeros(())
        if self.mcl is not None and self.training:
            aux_loss = self.config.mcl_weight * self.mcl(summaries[0], summaries[1])
        return survival_from_logits(logits, aux_loss, levels=alignments)

    def _align_levels(self, batch: SlideBatch) -> dict[str, LevelAlignment]:
        patch_tokens = self.visual["patch"](batch.patch_features)
        patch = self._align("patch", patch_tokens, batch.patch_mask)
        alignments = {"patch": patch}
        if "region" in self.levels:
            region_mask = batch.region_mask
            region_tokens = self.visual["region"](batch.region_features)
            if self.clp is not None and region_tokens.shape[1] > 0:
                region_tokens = self.clp(
                    patch_tokens, patch.selected, batch.patch_to_region, region_tokens, region_mask
                )
            alignments["region"] = self._align("region", region_tokens, region_mask)
        return alignments

    def _align(self, level: str, tokens: torch.Tensor, mask: torch.Tensor) -> LevelAlignment:
        return align_tokens(
            tokens, mask, self.prompt_features(level), self.alignment, self.empty_level[level]
        )

    # -- explanation ---------------------------------------------------------
    @torch.no_grad()
    def explain(
        self, batch: SlideBatch, tile_sizes: Mapping[str, int] | None = None
    ) -> Explanation:
        """Risk, survival, per-level maps and per-prompt contributions of one slide.

        Runs one forward pass in eval mode (restoring the mode after). Maps are
        the plan columns P*[:, k]; ``tile_sizes`` maps level -> level-0 px side
        (from the feature file); without it the coordinate spacing is used.
        """
        with eval_mode(self):
            output = forward_for_explanation(self, batch)
            contributions = self._contributions(output)
        levels = {}
        for lv, align in output.details["levels"].items():
            coords = batch.patch_coords if lv == "patch" else batch.region_coords
            levels[lv] = level_explanation(
                lv,
                coords,
                align.mask,
                align.scores,
                align.selected,
                align.plan,
                self.prompt_names(lv),
                self.prompt_texts(lv),
                tile_sizes,
                parent=batch.patch_to_region if lv == "patch" else None,
            )
        return Explanation(
            risk=float(output.risk[0]),
            hazards=output.hazards[0].cpu().numpy().astype(np.float32),
            survival=output.survival[0].cpu().numpy().astype(np.float32),
            levels=levels,
            contributions=contributions,
            contribution_method=CONTRIBUTION_METHOD,
        )

    def _contributions(self, output: SurvivalOutput) -> list[PromptContribution]:
        """Leave-one-out change in risk per prompt (see CONTRIBUTION_METHOD)."""
        alignments = output.details["levels"]
        features = [alignments[lv].features[0] for lv in self.levels]  # each (K, d)
        means = [z.mean(dim=0) for z in features]
        variants, labels = [], []
        for index, lv in enumerate(self.levels):
            z = features[index]
            n_prompts = z.shape[0]
            for k in range(n_prompts):
                if n_prompts > 1:
                    without = (z.sum(dim=0) - z[k]) / (n_prompts - 1)
                else:
                    without = self.empty_level[lv]
                parts = list(means)
                parts[index] = without
                variants.append(torch.cat(parts))
                labels.append((lv, k))
        risks = survival_from_logits(self.fusion(torch.stack(variants))).risk
        full = float(output.risk[0])
        return [
            PromptContribution(
                level=lv,
                name=self.prompt_names(lv)[k],
                text=self.prompt_texts(lv)[k],
                delta_risk=full - float(risk),
            )
            for (lv, k), risk in zip(labels, risks, strict=True)
        ]


add_variant("hila-no-clp", HiLa, HiLaConfig, "HiLa without Cross-Level Propagation", use_clp=False)
add_variant(
    "hila-no-mcl", HiLa, HiLaConfig, "HiLa without Mutual Contrastive Learning", use_mcl=False
)
add_variant(
    "hila-patch",
    HiLa,
    HiLaConfig,
    "HiLa with OPL at the patch level only (no region level, CLP or MCL)",
    use_region_level=False,
)
add_variant(
    "vl-cosine",
    HiLa,
    HiLaConfig,
    "one prompt set, softmax attention on cosine similarity, no OT or selection",
    use_region_level=False,
    alignment="cosine",
    select_ratio=1.0,
)
