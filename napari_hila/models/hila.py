"""HiLa: hierarchical vision-language survival model (MICCAI 2025, METHODS 1).

Patch and region tokens are aligned with language prompts by optimal
transport (OPL), the selected patches recalibrate the regions they lie in
(CLP), the two levels' prototypes contrast against each other (MCL, training
only), and an additive head over the prompts of both levels predicts T hazards.

Each prompt reaches the risk on its own path (METHODS 1.6 and 5): an additive
head gives every prompt of both levels one scalar term from its presence and,
where features and prompts come from different spaces, its transport-weighted
similarity and its feature Z_k (``prompt_similarity_term``,
``prompt_feature_term``); the terms add up to the
linear predictor eta, and the T hazard logits are eta plus one learned offset
per bin. The risk -sum_j S_j rises with eta, so each prompt's contribution to
the risk is exact (see :data:`CONTRIBUTION_METHOD`). Models saved before this
head (``head="mean"``) still load and explain, with a note.

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

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_hila.models.base import SurvivalOutput, survival_from_logits
from napari_hila.models.batch import SlideBatch
from napari_hila.models.explain import eval_mode, forward_for_explanation, level_explanation
from napari_hila.models.hila_layers import (
    AdditivePromptHead,
    AlignmentSettings,
    CrossLevelPropagation,
    LevelAlignment,
    MutualContrastive,
    PromptProjection,
    VisualProjection,
    align_tokens,
    init_shared_space,
    mean_pairwise_cosine,
    prompt_anchor_loss,
)
from napari_hila.models.registry import add_variant, register_model
from napari_hila.results import COLLAPSE_COSINE, Explanation, PromptContribution, collapse_warning

__all__ = ["HiLa", "HiLaConfig"]

CONTRIBUTION_METHOD = (
    "additive head, exact: each prompt's term minus its training-cohort mean, mapped to risk "
    "units along the path from the baseline (integrated gradients of the risk over the prompt "
    "terms, exact because the risk depends on their sum); the contributions add up to "
    "risk - baseline_risk (positive: the prompt raises the risk)"
)
LEGACY_CONTRIBUTION_METHOD = (
    "leave-one-out (older model): the slide's risk minus its risk when prompt k's feature is "
    "left out of its level's mean over prompts; these do not add up to the risk: retrain the "
    "model for exact contributions"
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
    add_aligned_prompt: bool = False  # older models: Z_k += s_k T_k (let prompts collapse)
    head: str = "additive"  # "additive" (a term per prompt) or "mean" (older models)
    visual_skip: bool = True  # linear skip in the visual projection (shared-space start)
    shared_space: bool = False  # features and prompts from one vision-language space
    prompt_anchor_weight: float = 1.0  # keeps the prompts' pairwise cosines their texts'
    # Shared spaces: keeps S near cos(feature, embedding). At 1 the trained region path
    # (CLP, projections) drifted enough to overfit the planted cohort (region presences
    # fell from 0.92 to 0.80 x oracle in a Cox fit); at 20 hila reached 0.930/0.949/0.956
    # x oracle on CLAM-layout seeds 0-2 where a Cox fit on the space's own cosines
    # reaches 0.96-1.0, and the raising prompt ranked third on one extract seed in four;
    # at 100, 0.949/0.940/0.993 and both planted prompts ranked first and second on all
    # four (README, "Planted truth"). With ~160 patients the space knows its cosines
    # better than the risk can teach them.
    similarity_anchor_weight: float = 100.0
    presence_temperature: float = 0.1  # softness of each prompt's presence detector
    explanation_resamples: int = 8  # patch resamples for the contributions' noise floor
    # Whether the head reads Z_k too. None: only when features and prompts do not share
    # a space. In a shared space a prompt's meaning comes from the space, and the
    # balanced plan spills an abundant attribute's tokens into other prompts' Z, which
    # then carry its effect under their names (measured on the planted-truth cohort:
    # misattributed contributions and a lower C-index); in unrelated spaces the prompt
    # directions are learned anyway and Z_k's detail helps the risk.
    prompt_feature_term: bool | None = None
    # Whether the head reads s_k, the prompt's transport-weighted similarity (PLOT), too.
    # None: only outside a shared space. In a shared space presence already says how much
    # of attribute k there is, and s_k (the mean similarity of the tokens the balanced
    # plan gives prompt k, however few show it) mostly adds the slide's stain and mix
    # (planted CLAM seed 1: a Cox fit on the model's presences reached 0.98 x oracle, 0.95
    # with its s_k added; hila went from 0.940 to 0.970 x oracle without them).
    prompt_similarity_term: bool | None = None
    prompt_feature_penalty: float = 0.0  # L2 on the head's Z_k weights
    prompt_sparsity: float = 0.0  # L1 on the head's per-prompt weights: few prompts explain
    # L2 on the head's per-prompt weights, per level. Patch and region prompts often see
    # one attribute twice (dense nuclei; regions made of them): the level penalised less
    # takes the shared effect, so a stronger region penalty leaves to the regions what
    # only the regions show (arrangement, concentration), as CLP reads patches first.
    # Chosen on planted-truth seeds 0-2 (README, "Planted truth"): at 1.0 the raising
    # attribute's effect still went to a region prompt on one seed in three; at 5.0 a region
    # prompt keeps a weight only where the regions show what the patches do not.
    patch_prompt_ridge: float = 0.05
    region_prompt_ridge: float = 5.0
    # The region head also reads each prompt's peak (its clearest region): what only the
    # regions show, penalised at the patch rate (planted cohort: a Cox fit on fixed-cosine
    # presences went from 0.90 to 0.97 x oracle with the regions' peaks added).
    region_peak_term: bool = True
    head_gain: float = 10.0  # the head's scalars learn this much faster (equalised lr)
    mcl_queue_size: int = 256
    mcl_temperature: float = 0.1
    mcl_weight: float = 0.1  # lambda
    mcl_dim: int = 128
    nll_alpha: float = 0.0  # uncensored weight of the NLL, read by the trainer (METHODS 1.6)

    #: Values of settings added since a model was first saved, for cards that
    #: lack them: such a model was built this way.
    LEGACY_DEFAULTS: ClassVar[dict] = {
        "head": "mean",
        "visual_skip": False,
        "region_peak_term": False,
        "prompt_similarity_term": True,
    }


@register_model("hila", HiLaConfig, "HiLa: OPL at patch and region level, CLP and MCL (full model)")
class HiLa(nn.Module):
    """HiLa and its ablations; forward(SlideBatch) -> SurvivalOutput.

    Degenerate slides: with fewer tokens than ``min_selected`` all are
    selected; a level with no token at all (a slide without regions) has no
    presence and gets the learned ``empty_level`` feature (zeros where Z
    reaches no output) for every prompt, so the risk then rests
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
            {
                lv: VisualProjection(in_dims[lv], width, config.dropout, config.visual_skip)
                for lv in self.levels
            }
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
        hierarchical = config.use_region_level
        self.reads_prompt_features = (
            not config.shared_space
            if config.prompt_feature_term is None
            else bool(config.prompt_feature_term)
        )
        self.reads_prompt_similarity = (
            not config.shared_space
            if config.prompt_similarity_term is None
            else bool(config.prompt_similarity_term)
        )
        # Z for a level where the slide has no token (e.g. no region): learned, where
        # Z reaches an output (the older mean head, the Z_k head term, MCL's prototypes).
        uses_z = (
            config.head == "mean" or self.reads_prompt_features or (hierarchical and config.use_mcl)
        )
        self.empty_level = (
            nn.ParameterDict({lv: nn.Parameter(torch.zeros(width)) for lv in self.levels})
            if uses_z
            else None
        )
        self.clp = CrossLevelPropagation(width) if hierarchical and config.use_clp else None
        self.mcl = (
            MutualContrastive(width, config.mcl_dim, config.mcl_queue_size, config.mcl_temperature)
            if hierarchical and config.use_mcl
            else None
        )
        if config.head == "additive":
            self.heads = nn.ModuleDict(
                {
                    lv: AdditivePromptHead(
                        len(self.prompt_names(lv)),
                        width,
                        config.dropout,
                        self.reads_prompt_features,
                        config.presence_temperature,
                        config.head_gain,
                        peak_term=lv == "region" and config.region_peak_term,
                        similarity_term=self.reads_prompt_similarity,
                    )
                    for lv in self.levels
                }
            )
            self.bin_offsets = nn.Parameter(torch.zeros(config.n_bins))
            for lv in self.levels:  # each prompt term's training-cohort mean (the baseline)
                self.register_buffer(
                    f"term_reference_{lv}", torch.zeros(len(self.prompt_names(lv)))
                )
            self.register_buffer("term_reference_ready", torch.zeros((), dtype=torch.bool))
        else:
            self.fusion = nn.Sequential(
                nn.Linear(width * len(self.levels), width),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(width, config.n_bins),
            )
        # Levels whose features share the prompts' space: they start from its cosine and
        # are held near it, so a prompt keeps the meaning the vision-language space gives.
        self.shared_levels = tuple(
            lv
            for lv in self.levels
            if config.shared_space and in_dims[lv] == config.text_dim and config.visual_skip
        )
        for lv in self.shared_levels:
            init_shared_space(self.visual[lv], self.text[lv], seed=self.levels.index(lv))
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
        if c.head not in ("additive", "mean"):
            raise ValueError(f"head must be 'additive' or 'mean', got {c.head!r}")
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
        terms = None
        if self.config.head == "additive":
            terms = self._prompt_terms(alignments)
            eta = sum(t.sum(dim=-1) for t in terms.values())
            logits = eta.unsqueeze(-1) + self.bin_offsets
        else:
            logits = self.fusion(torch.cat(summaries, dim=-1))
        aux_loss = logits.new_zeros(())
        if self.training:
            if self.mcl is not None:
                aux_loss = aux_loss + self.config.mcl_weight * self.mcl(summaries[0], summaries[1])
            if self.config.prompt_anchor_weight > 0:
                anchor = sum(
                    prompt_anchor_loss(
                        self.prompt_features(lv), getattr(self, f"prompt_embeddings_{lv}")
                    )
                    for lv in self.levels
                )
                aux_loss = aux_loss + self.config.prompt_anchor_weight * anchor
            if self.shared_levels and self.config.similarity_anchor_weight > 0:
                aux_loss = aux_loss + self.config.similarity_anchor_weight * sum(
                    self._similarity_drift(lv, batch, alignments[lv]) for lv in self.shared_levels
                )
            if terms is not None:
                aux_loss = aux_loss + sum(
                    self.heads[lv].penalty(
                        self.config.prompt_sparsity,
                        self.config.prompt_feature_penalty,
                        getattr(self.config, f"{lv}_prompt_ridge"),
                        self.config.patch_prompt_ridge,
                    )
                    for lv in self.levels
                )
        return survival_from_logits(logits, aux_loss, levels=alignments, terms=terms)

    def _similarity_drift(
        self, level: str, batch: SlideBatch, align: LevelAlignment
    ) -> torch.Tensor:
        """Mean squared change of S from the shared space's own cosine(feature, embedding)."""
        raw = batch.patch_features if level == "patch" else batch.region_features
        embeddings = getattr(self, f"prompt_embeddings_{level}")
        reference = F.normalize(raw, dim=-1) @ F.normalize(embeddings, dim=-1).T
        valid = align.mask.unsqueeze(-1).to(reference.dtype)
        squared = (align.similarity - reference.detach()) ** 2 * valid
        return squared.sum() / (valid.sum() * reference.shape[-1]).clamp(min=1.0)

    def _prompt_terms(self, alignments: Mapping[str, LevelAlignment]) -> dict[str, torch.Tensor]:
        """Per level, the (B, K) additive terms of the prompts."""
        terms = {}
        for lv, alignment in alignments.items():
            terms[lv], alignment.presence = self.heads[lv](alignment)
        return terms

    def _align_levels(
        self, batch: SlideBatch, patch_tokens: torch.Tensor | None = None
    ) -> dict[str, LevelAlignment]:
        """OPL at both levels; ``patch_tokens`` reuses already projected patch tokens."""
        if patch_tokens is None:
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
            tokens,
            mask,
            self.prompt_features(level),
            self.alignment,
            self.empty_level[level] if self.empty_level is not None else tokens.new_zeros(()),
        )

    @torch.no_grad()
    def initialise_from_data(
        self, batches: Iterable[SlideBatch], max_tokens: int = 200_000
    ) -> None:
        """Start each presence detector's threshold from the training cohort's similarities.

        theta_k is the (1 - 1/K) quantile of S_k over up to ``max_tokens``
        tokens per level drawn evenly from all training slides, so about 1/K
        of the cohort's tokens pass at first whatever the first slide holds.
        """
        if self.config.head != "additive":
            return
        was_training = self.training
        self.eval()
        gathered: dict[str, list[torch.Tensor]] = {lv: [] for lv in self.levels}
        for batch in batches:
            for lv, alignment in self._align_levels(batch).items():
                gathered[lv].append(alignment.similarity[alignment.mask].float().cpu())
        generator = torch.Generator().manual_seed(0)
        for lv, parts in gathered.items():
            if not parts:
                continue
            values = torch.cat(parts)
            if values.shape[0] > max_tokens:
                values = values[torch.randperm(values.shape[0], generator=generator)[:max_tokens]]
            self.heads[lv].start_thresholds(values.to(self.heads[lv].threshold.device))
        self.train(was_training)

    # -- explanation ---------------------------------------------------------
    def prompt_statistics(self) -> dict[str, dict[str, float]]:
        """Per level: mean pairwise cosine of the projected prompts T and of their texts E.

        Above :data:`COLLAPSE_COSINE` the prompts have collapsed onto one
        direction and cannot mean different things (METHODS 5).
        """
        with torch.no_grad():
            return {
                lv: {
                    "mean_pairwise_cosine": mean_pairwise_cosine(self.prompt_features(lv)),
                    "text_mean_pairwise_cosine": mean_pairwise_cosine(
                        getattr(self, f"prompt_embeddings_{lv}")
                    ),
                }
                for lv in self.levels
            }

    def collapsed_levels(self) -> list[str]:
        """Levels whose projected prompts have collapsed (mean cosine above 0.9)."""
        stats = self.prompt_statistics()
        return [lv for lv in self.levels if stats[lv]["mean_pairwise_cosine"] > COLLAPSE_COSINE]

    @torch.no_grad()
    def fit_explanation_baseline(self, batches: Iterable[SlideBatch]) -> float | None:
        """Store each prompt term's mean over ``batches`` (the training cohort) as the baseline.

        Returns the baseline risk: the risk at the cohort's mean prompt terms,
        which for the linear terms is the risk at the cohort's mean prompt
        features. Models with the older mean head have no baseline (None).
        """
        if self.config.head != "additive":
            return None
        sums = {lv: torch.zeros_like(getattr(self, f"term_reference_{lv}")) for lv in self.levels}
        count = 0
        with eval_mode(self):
            for batch in batches:
                terms = self(batch.to(self.bin_offsets.device)).details["terms"]
                for lv in self.levels:
                    sums[lv] += terms[lv].sum(dim=0)
                count += int(batch.batch_size)
        if count == 0:
            return None
        for lv in self.levels:
            getattr(self, f"term_reference_{lv}").copy_(sums[lv] / count)
        self.term_reference_ready.fill_(True)
        return self.baseline_risk()

    def baseline_risk(self) -> float | None:
        """The risk at the stored baseline terms, or None before a baseline was fitted."""
        if self.config.head != "additive" or not bool(self.term_reference_ready):
            return None
        eta = sum(getattr(self, f"term_reference_{lv}").sum() for lv in self.levels)
        return float(self._risk_of_eta(eta.reshape(1))[0].detach())

    def _risk_of_eta(self, eta: torch.Tensor) -> torch.Tensor:
        return survival_from_logits(eta.unsqueeze(-1) + self.bin_offsets).risk

    @torch.no_grad()
    def explain(
        self,
        batch: SlideBatch,
        tile_sizes: Mapping[str, int] | None = None,
        resamples: int | None = None,
    ) -> Explanation:
        """Risk, survival, per-level maps and per-prompt contributions of one slide.

        Runs one forward pass in eval mode (restoring the mode after). The map
        of prompt k is each token's plan mass relative to a uniform share,
        M K P*[i, k] (1 = the share a uniform plan gives, 0 = none; METHODS 5).
        ``tile_sizes`` maps level -> level-0 px side (from the feature file);
        without it the coordinate spacing is used. ``resamples`` patch
        resamplings (default the config's) give each contribution's noise floor.
        """
        with eval_mode(self):
            output = forward_for_explanation(self, batch)
            if self.config.head == "additive":
                contributions, baseline, notes = self._additive_contributions(
                    batch,
                    output,
                    self.config.explanation_resamples if resamples is None else resamples,
                )
                method = CONTRIBUTION_METHOD
            else:
                contributions, baseline = self._contributions(output), None
                notes = [
                    "this model was saved before contributions that add up (older mean head): "
                    "the prompt bars are leave-one-out changes; retrain for exact contributions"
                ]
                method = LEGACY_CONTRIBUTION_METHOD
        levels = {}
        for lv, align in output.details["levels"].items():
            coords = batch.patch_coords if lv == "patch" else batch.region_coords
            counts = align.mask.sum(dim=1).clamp(min=1).to(align.plan.dtype)
            relative = align.plan * counts.view(-1, 1, 1) * align.plan.shape[-1]
            levels[lv] = level_explanation(
                lv,
                coords,
                align.mask,
                align.scores,
                align.selected,
                relative,
                self.prompt_names(lv),
                self.prompt_texts(lv),
                tile_sizes,
                parent=batch.patch_to_region if lv == "patch" else None,
            )
        collapsed = collapse_warning(self.prompt_statistics())
        if collapsed:
            notes.append(collapsed)
        return Explanation(
            risk=float(output.risk[0]),
            hazards=output.hazards[0].cpu().numpy().astype(np.float32),
            survival=output.survival[0].cpu().numpy().astype(np.float32),
            levels=levels,
            contributions=contributions,
            contribution_method=method,
            baseline_risk=baseline,
            notes=notes,
        )

    def _term_contributions(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K_all) contributions in risk units of every prompt, patch level first."""
        deltas = torch.cat(
            [terms[lv] - getattr(self, f"term_reference_{lv}") for lv in self.levels], dim=-1
        )
        eta = deltas.new_zeros(deltas.shape[0]) + sum(
            getattr(self, f"term_reference_{lv}").sum() for lv in self.levels
        )
        moved = deltas.sum(dim=-1)
        risk_change = self._risk_of_eta(eta + moved) - self._risk_of_eta(eta)
        # d risk / d eta where the path is too short for a quotient.
        with torch.enable_grad():
            point = (eta + moved).detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(self._risk_of_eta(point).sum(), point)
        small = moved.abs() < 1e-6
        ratio = torch.where(small, slope, risk_change / torch.where(small, 1.0, moved))
        return deltas * ratio.unsqueeze(-1)

    def _additive_contributions(
        self, batch: SlideBatch, output: SurvivalOutput, resamples: int
    ) -> tuple[list[PromptContribution], float | None, list[str]]:
        notes = []
        if not bool(self.term_reference_ready):
            notes.append(
                "this model stores no cohort baseline: contributions are measured from zero "
                "prompt terms, not from the training cohort's mean"
            )
        values = self._term_contributions(output.details["terms"])[0]
        floor = self._noise_floor(batch, output, resamples)
        labels = [(lv, k) for lv in self.levels for k in range(len(self.prompt_names(lv)))]
        contributions = []
        for j, (lv, k) in enumerate(labels):
            noise = None if floor is None else float(floor[j])
            contributions.append(
                PromptContribution(
                    level=lv,
                    name=self.prompt_names(lv)[k],
                    text=self.prompt_texts(lv)[k],
                    delta_risk=float(values[j]),
                    noise_floor=noise,
                    negligible=None if noise is None else bool(abs(float(values[j])) < noise),
                )
            )
        baseline = self.baseline_risk()
        if baseline is None:
            baseline = float(self._risk_of_eta(values.new_zeros(1))[0].detach())
        return contributions, baseline, notes

    def _noise_floor(
        self, batch: SlideBatch, output: SurvivalOutput, resamples: int
    ) -> torch.Tensor | None:
        """Twice the SD of each contribution when the slide's patches are resampled.

        Patches are drawn with replacement (a bootstrap of the slide); regions
        are kept. The visual projection acts on each token alone, so the
        slide's projected tokens are resampled instead of projected again.
        A contribution inside this floor is "negligible".
        """
        n = int(batch.patch_mask[0].sum())
        if resamples < 2 or n < 2:
            return None
        tokens = output.details["levels"]["patch"].tokens
        generator = torch.Generator().manual_seed(0)
        draws = []
        for _ in range(resamples):
            pick = torch.randint(0, n, (n,), generator=generator).to(tokens.device)
            resampled = dataclasses.replace(
                batch,
                patch_features=batch.patch_features[:, pick],
                patch_mask=batch.patch_mask[:, pick],
                patch_coords=batch.patch_coords[:, pick],
                patch_to_region=batch.patch_to_region[:, pick],
            )
            alignments = self._align_levels(resampled, patch_tokens=tokens[:, pick])
            draws.append(self._term_contributions(self._prompt_terms(alignments))[0])
        return 2.0 * torch.stack(draws).std(dim=0)

    def _contributions(self, output: SurvivalOutput) -> list[PromptContribution]:
        """Leave-one-out change in risk per prompt, for older mean-head models."""
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
    prompt_feature_term=True,  # the baseline reads its attention-pooled features
)
