"""A planted-truth cohort in a shared vision-language space, to verify explanations.

Tile features and prompt embeddings live in one space R^D, as a CONCH-like
encoder gives them: every named patch concept has a random unit direction, a
tile of concept c is ``amplitude * direction_c + slide stain offset + noise``
(cosine to its direction about 0.5-0.7: recoverable, not trivially), and a
prompt's embedding is its concept's direction plus a little "text" noise
(cosine about 0.9). Region concepts (architecture) get the normalised mean of
the directions of the patch concepts they are made of.

Each slide draws its concept abundances from a Dirichlet; in half of the
slides the raising concept's tiles are packed region by region, in the rest
scattered. The log-hazard is planted on two concepts only::

    log_hazard = beta_up * f_up + beta_concentration * concentration - beta_down * f_down

(centred), ``concentration = max over regions of the region's f_up - f_up``
(its weight larger in the patch-only CLAM cohort, where arrangement is what
the region level must find);
times are Weibull, censoring uniform. Everything comes from one seeded
generator: a seed gives one cohort. The truth (hazards, abundances, each
tile's concept) is written beside the features so a verification can score
what a model says against what was planted. Numpy only, no Qt, no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hila.demo.synthetic_cohort import weibull_outcome
from napari_hila.features.store import SlideFeatures, save_features

__all__ = [
    "ENCODER_NAME",
    "PATCH_CONCEPTS",
    "REGION_CONCEPTS",
    "PlantedSettings",
    "PlantedSlide",
    "PlantedPatient",
    "PlantedCohort",
    "make_planted_cohort",
    "write_planted_cohort",
    "oracle_c_index",
    "arrangement_blind_c_index",
    "auc_score",
]

ENCODER_NAME = "planted-shared-space"
ENCODER_VERSION = "1"
PLANTED_NOTE = (
    "SYNTHETIC planted-truth cohort: tile features drawn around named concept directions in a "
    "shared vision-language space, hazard planted on two concepts; not real patients"
)

#: (name, prompt text) of the patch concepts, in prompt order.
PATCH_CONCEPTS: tuple[tuple[str, str], ...] = (
    ("dense tumour nuclei", "sheets of crowded, enlarged, hyperchromatic tumour nuclei"),
    ("lymphocytes", "dense infiltrate of small round lymphocytes"),
    ("necrosis", "coagulative necrosis with nuclear debris"),
    ("fibrous stroma", "fibrous collagenous stroma with sparse spindle cells"),
    ("fat", "mature adipose tissue with large empty fat cells"),
    ("mucin", "pools of pale extracellular mucin"),
    ("glands", "well-formed glands lined by columnar epithelium"),
    ("blood", "red blood cells filling vessels and haemorrhage"),
)

#: (name, prompt text, patch concepts the region is made of), in prompt order.
REGION_CONCEPTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "solid tumour sheets",
        "solid sheets of dense tumour nuclei filling the region",
        ("dense tumour nuclei",),
    ),
    ("lymphoid aggregates", "large lymphoid aggregates in the region", ("lymphocytes",)),
    (
        "necrotic tumour",
        "tumour with extensive central necrosis",
        ("necrosis", "dense tumour nuclei"),
    ),
    (
        "tumour-stroma interface",
        "tumour nests invading fibrous stroma",
        ("dense tumour nuclei", "fibrous stroma"),
    ),
    (
        "glandular architecture",
        "glandular architecture with mucin-filled lumina",
        ("glands", "mucin"),
    ),
)


@dataclass
class PlantedSettings:
    """Knobs of the simulation (the defaults make the verification cohort)."""

    n_patients: int = 240
    seed: int = 0
    dim: int = 64  # D, shared by tile features and prompt embeddings
    patch_concepts: tuple[tuple[str, str], ...] = PATCH_CONCEPTS
    region_concepts: tuple[tuple[str, str, tuple[str, ...]], ...] = REGION_CONCEPTS
    raising: str = "dense tumour nuclei"
    lowering: str = "lymphocytes"
    layout: str = "extract"  # "extract" (patch + region features) or "clam" (patches only)
    tiles_per_slide: tuple[int, int] = (150, 400)  # uniform, inclusive
    tiles_per_region: tuple[int, int] = (40, 70)  # sets how many regions a slide has
    patches_per_region: int = 0  # region side in patches; 0: 8 (extract) or 16 (clam)
    patch_px: int = 256  # at target_mpp, level-0 px here (mpp = target_mpp)
    target_mpp: float = 0.5
    dirichlet: tuple[float, ...] = (1.2, 1.2, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8)  # per patch concept
    clustered_fraction: float = 0.5
    amplitude: tuple[float, float] = (0.8, 1.2)  # a tile's length along its concept
    stain_scale: float = 0.08  # per-dimension SD of a slide's stain offset
    noise_scale: float = 0.145  # per-dimension SD of a tile's own noise
    text_noise: float = 0.48  # length of the text noise added to a unit direction (cos ~0.9)
    beta_up: float = 5.0  # per unit abundance of the raising concept
    # Per unit regional concentration of the raising concept; None: 2 (extract) or 4 (clam).
    # The CLAM cohort is where hila is compared with models blind to arrangement
    # (hila-patch, abmil); at 2 the hazard without its spatial part already reached
    # 0.99-1.02 x oracle on three held-out sets in six, so no comparison could show what
    # the region level adds. At 4 the spatial part is ~45% of the log-hazard's variance.
    beta_concentration: float | None = None
    beta_down: float = 5.0  # per unit abundance of the lowering concept (lowers the hazard)
    weibull_shape: float = 2.0
    weibull_scale: float = 40.0  # months, at the mean log-hazard
    censor_window: tuple[float, float] = (6.0, 120.0)  # uniform censoring time, months

    def __post_init__(self) -> None:
        if self.layout not in ("extract", "clam"):
            raise ValueError(f"layout must be 'extract' or 'clam', not {self.layout!r}")
        names = [n for n, _ in self.patch_concepts]
        if len(self.dirichlet) != len(names):
            raise ValueError(f"dirichlet needs {len(names)} values, one per patch concept")
        for name in (self.raising, self.lowering):
            if name not in names:
                raise ValueError(f"planted concept {name!r} is not a patch concept ({names})")
        for region, _, parts in self.region_concepts:
            missing = [p for p in parts if p not in names]
            if missing:
                raise ValueError(f"region concept {region!r}: unknown patch concepts {missing}")
        if self.beta_concentration is None:
            self.beta_concentration = 4.0 if self.layout == "clam" else 2.0
        if not self.patches_per_region:
            # CLAM files record no region size; pooling then uses 16 patches (4096 px).
            self.patches_per_region = 16 if self.layout == "clam" else 8

    @property
    def region_px(self) -> int:
        return self.patch_px * self.patches_per_region

    @property
    def patch_names(self) -> list[str]:
        return [n for n, _ in self.patch_concepts]

    @property
    def region_names(self) -> list[str]:
        return [n for n, _, _ in self.region_concepts]

    @property
    def raising_index(self) -> int:
        return self.patch_names.index(self.raising)

    @property
    def lowering_index(self) -> int:
        return self.patch_names.index(self.lowering)


@dataclass
class PlantedSlide:
    """One slide: patch features with coordinates, regions, and each tile's true concept."""

    slide_id: str
    features: np.ndarray  # (M, D) float32
    coords: np.ndarray  # (M, 2) int64 level-0 (x, y)
    concept: np.ndarray  # (M,) int64, index into the patch concepts
    patch_to_region: np.ndarray  # (M,) int64
    region_coords: np.ndarray  # (R, 2) int64
    region_features: np.ndarray  # (R, D) float32, mean of the region's patch features
    stain: np.ndarray  # (D,) the slide's stain offset


@dataclass
class PlantedPatient:
    """One virtual patient: one slide, its planted truth and its simulated outcome."""

    patient_id: str
    slide: PlantedSlide
    abundance: np.ndarray  # (K,) measured fraction of tiles per patch concept
    concentration: float
    arrangement: str  # "clustered" or "scattered"
    log_hazard: float = 0.0
    true_time: float = 0.0
    time: float = 0.0
    event: int = 0


@dataclass
class PlantedCohort:
    """The patients plus the shared space: concept directions and prompt embeddings."""

    settings: PlantedSettings
    patch_directions: np.ndarray  # (K_patch, D) unit rows
    region_directions: np.ndarray  # (K_region, D) unit rows
    patch_prompts: np.ndarray  # (K_patch, D) unit rows, prompt embeddings
    region_prompts: np.ndarray  # (K_region, D) unit rows
    patients: list[PlantedPatient] = field(default_factory=list)

    def patient(self, patient_id: str) -> PlantedPatient:
        for p in self.patients:
            if p.patient_id == patient_id:
                return p
        raise KeyError(patient_id)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _directions(rng: np.random.Generator, s: PlantedSettings):
    """Concept directions and prompt embeddings (direction plus text noise, unit length)."""
    patch = _unit(rng.standard_normal((len(s.patch_concepts), s.dim)))
    names = s.patch_names
    region = _unit(
        np.stack(
            [patch[[names.index(p) for p in parts]].mean(0) for _, _, parts in s.region_concepts]
        )
    )

    def prompts(dirs: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal(dirs.shape)
        noise -= (noise * dirs).sum(1, keepdims=True) * dirs  # orthogonal to the direction
        return _unit(dirs + s.text_noise * _unit(noise))

    return patch, region, prompts(patch), prompts(region)


def _layout(rng: np.random.Generator, s: PlantedSettings, n_tiles: int):
    """Tile cells (col, row in patches) and their region, regions filled to similar counts."""
    per = s.patches_per_region
    fewest = int(np.ceil(n_tiles / (0.9 * per * per)))  # a region holds at most 90% tissue
    n_regions = max(int(round(n_tiles / rng.uniform(*s.tiles_per_region))), fewest, 2)
    nx = int(np.ceil(np.sqrt(n_regions)))
    sizes = np.full(n_regions, n_tiles // n_regions)
    sizes[: n_tiles % n_regions] += 1
    cells, region = [], []
    for r in range(n_regions):
        picked = rng.choice(per * per, size=int(sizes[r]), replace=False)
        gx, gy = r % nx, r // nx
        cells.append(np.stack([gx * per + picked % per, gy * per + picked // per], 1))
        region.append(np.full(len(picked), r))
    return np.concatenate(cells), np.concatenate(region), nx, n_regions


def _assign_concepts(rng, s: PlantedSettings, region, n_regions, counts, clustered) -> np.ndarray:
    """A concept per tile: the raising concept packed region by region, or scattered."""
    n = len(region)
    concept = np.full(n, -1, np.int64)
    up = s.raising_index
    if clustered:
        order = np.concatenate(
            [rng.permutation(np.flatnonzero(region == r)) for r in rng.permutation(n_regions)]
        )
        concept[order[: counts[up]]] = up
    else:
        concept[rng.choice(n, size=counts[up], replace=False)] = up
    free = rng.permutation(np.flatnonzero(concept < 0))
    others = np.concatenate([np.full(counts[k], k) for k in range(len(counts)) if k != up]).astype(
        np.int64
    )
    concept[free] = others
    return concept


def _slide(rng, s: PlantedSettings, directions, slide_id: str, clustered: bool):
    n_tiles = int(rng.integers(s.tiles_per_slide[0], s.tiles_per_slide[1] + 1))
    cells, region, nx, n_regions = _layout(rng, s, n_tiles)
    share = rng.dirichlet(np.asarray(s.dirichlet, float))
    counts = rng.multinomial(n_tiles, share)
    concept = _assign_concepts(rng, s, region, n_regions, counts, clustered)
    stain = rng.normal(0.0, s.stain_scale, s.dim)
    amplitude = rng.uniform(*s.amplitude, size=n_tiles)
    noise = rng.normal(0.0, s.noise_scale, (n_tiles, s.dim))
    feats = (directions[concept] * amplitude[:, None] + stain + noise).astype(np.float32)
    region_feats = np.stack([feats[region == r].mean(0) for r in range(n_regions)])
    per = s.patches_per_region
    region_cells = np.stack([np.arange(n_regions) % nx, np.arange(n_regions) // nx], 1)
    slide = PlantedSlide(
        slide_id=slide_id,
        features=feats,
        coords=(cells * s.patch_px).astype(np.int64),
        concept=concept,
        patch_to_region=region.astype(np.int64),
        region_coords=(region_cells * per * s.patch_px).astype(np.int64),
        region_features=region_feats.astype(np.float32),
        stain=stain,
    )
    abundance = np.bincount(concept, minlength=len(s.patch_concepts)) / n_tiles
    up = concept == s.raising_index
    per_region = np.array([up[region == r].mean() for r in range(n_regions)])
    concentration = float(per_region.max() - up.mean())
    return slide, abundance, concentration


def make_planted_cohort(settings: PlantedSettings | None = None) -> PlantedCohort:
    """Draw the shared space and the patients (same settings -> same cohort)."""
    s = settings or PlantedSettings()
    rng = np.random.default_rng(s.seed)
    patch_dirs, region_dirs, patch_prompts, region_prompts = _directions(rng, s)
    cohort = PlantedCohort(s, patch_dirs, region_dirs, patch_prompts, region_prompts)
    for p in range(s.n_patients):
        pid = f"PL-{p:03d}"
        clustered = bool(rng.random() < s.clustered_fraction)
        slide, abundance, concentration = _slide(rng, s, patch_dirs, f"{pid}-S1", clustered)
        cohort.patients.append(
            PlantedPatient(
                pid, slide, abundance, concentration, "clustered" if clustered else "scattered"
            )
        )
    raw = np.array([_planted_log_hazard(s, pt) for pt in cohort.patients])
    raw -= raw.mean()
    for pt, log_hazard in zip(cohort.patients, raw, strict=True):
        pt.log_hazard = float(log_hazard)
        pt.true_time, pt.time, pt.event = weibull_outcome(
            rng, pt.log_hazard, s.weibull_scale, s.weibull_shape, s.censor_window
        )
    return cohort


def _planted_log_hazard(s: PlantedSettings, patient: PlantedPatient, spatial: bool = True):
    """The planted log-hazard before centring; ``spatial=False`` leaves out concentration."""
    value = (
        s.beta_up * patient.abundance[s.raising_index]
        - s.beta_down * patient.abundance[s.lowering_index]
    )
    return value + s.beta_concentration * patient.concentration if spatial else value


def _c_index_of(cohort: PlantedCohort, patient_ids, score) -> float:
    """Harrell's C of ``score(patient)`` on ``patient_ids`` (all patients if None)."""
    from napari_hila.survival.metrics import concordance_index

    chosen = cohort.patients
    if patient_ids is not None:
        wanted = set(patient_ids)
        chosen = [p for p in cohort.patients if p.patient_id in wanted]
    return concordance_index(
        [p.time for p in chosen], [p.event for p in chosen], [score(p) for p in chosen]
    )


def oracle_c_index(cohort: PlantedCohort, patient_ids=None) -> float:
    """Harrell's C of the planted log-hazard (on ``patient_ids`` if given): the ceiling."""
    return _c_index_of(cohort, patient_ids, lambda p: p.log_hazard)


def arrangement_blind_c_index(cohort: PlantedCohort, patient_ids=None) -> float:
    """Harrell's C of the planted log-hazard without its concentration term.

    About the most a model blind to how the tiles are arranged (hila-patch,
    abmil) can reach; near the oracle, a comparison with them cannot show what
    a region level adds.
    """
    s = cohort.settings
    return _c_index_of(cohort, patient_ids, lambda p: _planted_log_hazard(s, p, spatial=False))


def auc_score(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count one half)."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(np.asarray(scores, float))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _attrs(s: PlantedSettings, slide_id: str) -> dict:
    return {
        "encoder": ENCODER_NAME,
        "encoder_version": ENCODER_VERSION,
        "region_encoder": ENCODER_NAME,
        "region_encoder_version": ENCODER_VERSION,
        "region_mode": "mean",
        "patch_px": s.patch_px,
        "region_px": s.region_px,
        "target_mpp": s.target_mpp,
        "patch_size": s.patch_px,
        "region_size": s.region_px,
        "mpp": s.target_mpp,
        "mpp_is_assumed": False,
        "slide_fingerprint": f"planted-{s.seed}-{slide_id}",
        "slide_path": f"synthetic:{slide_id}",
        "synthetic": PLANTED_NOTE,
    }


def _write_clam(path: Path, slide: PlantedSlide, s: PlantedSettings) -> None:
    """CLAM's patch-only layout: ``features`` and ``coords`` (with patch_size, patch_level)."""
    import h5py

    from napari_hila.io_utils import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=slide.features)
        coords = h5.create_dataset("coords", data=slide.coords)
        coords.attrs["patch_size"] = s.patch_px
        coords.attrs["patch_level"] = 0


def _write_text(path: Path, text: str) -> None:
    from napari_hila.io_utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_prompt_set(cohort: PlantedCohort, out_dir: str | os.PathLike) -> Path:
    """``prompts.npz`` (``patch``, ``region`` embeddings) and ``PLANTED.yaml`` beside it."""
    import yaml

    from napari_hila.io_utils import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = cohort.settings
    with atomic_path(out / "prompts.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            patch=cohort.patch_prompts.astype(np.float32),
            region=cohort.region_prompts.astype(np.float32),
        )
    doc = {
        "cancer_type": "PLANTED",
        "description": PLANTED_NOTE,
        "embedding_encoder": ENCODER_NAME,
        "embeddings": "prompts.npz",
        "patch": [{"name": n, "text": t} for n, t in s.patch_concepts],
        "region": [{"name": n, "text": t} for n, t, _ in s.region_concepts],
    }
    path = out / "PLANTED.yaml"
    header = "# Planted-truth prompt set: embeddings in prompts.npz, rows in prompt order.\n"
    _write_text(path, header + yaml.safe_dump(doc, sort_keys=False, width=100))
    return path


def write_planted_cohort(cohort: PlantedCohort, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write features, cohort.csv, truth.csv, tile_concepts.npz and the prompt set.

    ``features/<slide_id>.h5`` follow ``settings.layout``: with region features
    (``extract``) or CLAM's patch-only datasets (``clam``). Returns the paths.
    """
    s = cohort.settings
    out = Path(out_dir)
    (out / "features").mkdir(parents=True, exist_ok=True)
    rows = ["patient_id,slide_id,time,event"]
    names = [n.replace(" ", "_") for n in s.patch_names]
    truth = [
        "patient_id,slide_id,log_hazard,concentration,arrangement,true_time,time,event,"
        + ",".join(f"f_{n}" for n in names)
    ]
    tiles: dict[str, np.ndarray] = {}
    for pt in cohort.patients:
        sl = pt.slide
        path = out / "features" / f"{sl.slide_id}.h5"
        if s.layout == "clam":
            _write_clam(path, sl, s)
        else:
            feats = SlideFeatures(
                features=sl.features,
                coords=sl.coords,
                region_features=sl.region_features,
                region_coords=sl.region_coords,
                patch_to_region=sl.patch_to_region,
                attrs=_attrs(s, sl.slide_id),
            )
            save_features(path, feats)
        rows.append(f"{pt.patient_id},{sl.slide_id},{pt.time},{pt.event}")
        truth.append(
            f"{pt.patient_id},{sl.slide_id},{pt.log_hazard:.6f},{pt.concentration:.4f},"
            f"{pt.arrangement},{pt.true_time:.3f},{pt.time},{pt.event},"
            + ",".join(f"{a:.4f}" for a in pt.abundance)
        )
        tiles[sl.slide_id] = sl.concept
        tiles[f"{sl.slide_id}/coords"] = sl.coords
    from napari_hila.io_utils import atomic_path

    _write_text(out / "cohort.csv", "\n".join(rows) + "\n")
    _write_text(out / "truth.csv", "\n".join(truth) + "\n")
    with atomic_path(out / "tile_concepts.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **tiles)
    prompts = write_prompt_set(cohort, out)
    _write_text(
        out / "README.txt",
        PLANTED_NOTE + f".\nlayout: {s.layout}; raising concept: {s.raising!r}, lowering: "
        f"{s.lowering!r}.\ncohort.csv is what training sees; truth.csv the planted hazard and "
        "abundances; tile_concepts.npz each tile's concept (key slide_id) and its coords "
        "(slide_id/coords).\n",
    )
    return {
        "cohort": out / "cohort.csv",
        "truth": out / "truth.csv",
        "features": out / "features",
        "tile_concepts": out / "tile_concepts.npz",
        "prompts": prompts,
        "embeddings": out / "prompts.npz",
    }
