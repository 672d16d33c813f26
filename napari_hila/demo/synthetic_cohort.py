"""Virtual patients with a known hazard: the demo's SYNTHETIC survival cohort.

A virtual slide is a mosaic of real tiles (from :mod:`napari_hila.demo.tile_library`)
laid out on a grid of regions, each region ``region_px / patch_px`` tiles on a
side. Two things set a patient's log-hazard, and both are measurable from the
slide:

- composition: the fraction of tiles with dense nuclei, ``f_dense``, which
  raises the hazard, and the fraction of sparse tissue-edge tiles (mostly fat
  and glass), ``f_sparse``, which lowers it: two concepts the demo prompt set
  (prompts/DEMO.yaml) names, "Dense nuclei" and "Fat or glass", and that the
  descriptor measures on separate axes (nuclear area, background fraction),
  so the demo's explanations can be checked against what was planted;
- arrangement: whether the dense tiles are packed into a few regions or scattered,
  ``clustering = max over regions of the region's dense fraction - f_dense``.
  A patch-level bag sees composition only; region-level context sees both.

``log_hazard = beta_dense * f_dense + beta_sparse * f_sparse + beta_cluster * clustering``
(centred, ``beta_sparse`` negative),
survival times are Weibull with that hazard, censoring is uniform in a window;
everything is drawn from one seeded generator, so a seed gives one cohort.
Region features are computed as extraction's default "view" mode computes
them: the region's mosaic seen whole, resized to the encoder input, encoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hila.demo.tile_library import DENSE, MIXED, SPARSE, STROMA, TileLibrary
from napari_hila.features.store import SlideFeatures, save_features

__all__ = [
    "DemoSettings",
    "DemoPatient",
    "make_demo_cohort",
    "oracle_c_index",
    "weibull_outcome",
    "write_demo_cohort",
]

SYNTHETIC_NOTE = (
    "SYNTHETIC demo cohort: mosaics of real tiles from the CMU-1-Small-Region sample with a "
    "survival hazard set by the simulation; not real patients, not for clinical use"
)


@dataclass
class DemoSettings:
    """Knobs of the simulation (defaults make the demo cohort)."""

    n_patients: int = 200
    seed: int = 0
    patch_px: int = 256
    region_px: int = 1024
    target_mpp: float = 0.5
    region_grid: tuple[int, int] = (2, 3)  # regions per side drawn from this range (inclusive)
    hole_fraction: float = 0.08  # slots without tissue
    second_slide_fraction: float = 0.15  # patients with two slides
    clustered_fraction: float = 0.5
    beta_dense: float = 5.0
    beta_sparse: float = -5.0  # sparse tissue edge (fat, glass) lowers the hazard
    beta_cluster: float = 5.0
    weibull_shape: float = 2.0
    weibull_scale: float = 40.0  # months, at the mean log-hazard
    censor_window: tuple[float, float] = (6.0, 120.0)  # uniform censoring time, months


@dataclass
class DemoPatient:
    """One virtual patient: its slides' features and its simulated outcome."""

    patient_id: str
    f_dense: float
    f_sparse: float
    clustering: float
    arrangement: str  # "clustered" or "scattered"
    log_hazard: float
    time: float
    event: int
    true_time: float
    slides: dict[str, SlideFeatures] = field(default_factory=dict)


def _layout(rng: np.random.Generator, s: DemoSettings) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Tissue slots (col, row in patches) and their region index, for a random region grid."""
    lo, hi = s.region_grid
    nx, ny = rng.integers(lo, hi + 1, size=2)
    per = s.region_px // s.patch_px
    cols, rows = np.meshgrid(np.arange(nx * per), np.arange(ny * per))
    slots = np.stack([cols.ravel(), rows.ravel()], 1)
    slots = slots[rng.random(len(slots)) >= s.hole_fraction]
    region = (slots[:, 1] // per) * nx + slots[:, 0] // per
    return slots, region, int(nx), int(ny)


def _assign_categories(
    rng: np.random.Generator, slots, region, nx, ny, f_dense, clustered, mix, s: DemoSettings
) -> np.ndarray:
    """A morphology group per slot: dense tiles packed region by region, or scattered."""
    n = len(slots)
    category = np.full(n, -1, np.int8)
    per = s.region_px // s.patch_px
    edge = (
        (slots[:, 0] == 0)
        | (slots[:, 1] == 0)
        | (slots[:, 0] == nx * per - 1)
        | (slots[:, 1] == ny * per - 1)
    )
    n_dense = int(round(f_dense * n))
    if clustered:
        order = np.concatenate(
            [rng.permutation(np.flatnonzero(region == r)) for r in rng.permutation(nx * ny)]
        )
        dense_slots = order[:n_dense]
    else:
        dense_slots = rng.choice(n, size=n_dense, replace=False)
    category[dense_slots] = DENSE
    free = np.flatnonzero(category < 0)
    # Sparse edge tiles go to the mosaic's border, as at a real tissue margin.
    border = free[edge[free]]
    n_sparse = min(len(border), int(round(mix[0] * n)))
    category[rng.choice(border, size=n_sparse, replace=False)] = SPARSE
    free = np.flatnonzero(category < 0)
    # Stroma is drawn on its own, independent of the dense share: the two planted
    # concepts vary separately, so each prompt's effect can be told apart.
    n_stroma = min(len(free), int(round(mix[1] * n)))
    category[rng.choice(free, size=n_stroma, replace=False)] = STROMA
    category[category < 0] = MIXED
    return category


def _region_features(
    library: TileLibrary, tiles, slots, region, n_regions, s: DemoSettings, encoder
):
    """Encode each region's mosaic seen whole, as extraction's "view" mode does."""
    from napari_hila.features.tile_reader import resize_tile

    px = library.images.shape[1]
    per = s.region_px // s.patch_px
    out_px = int(getattr(encoder, "input_size", None) or s.patch_px)
    views = np.empty((n_regions, out_px, out_px, 3), np.uint8)
    for r in range(n_regions):
        canvas = np.full((per * px, per * px, 3), 255, np.uint8)
        for i in np.flatnonzero(region == r):
            cx, cy = slots[i] % per
            canvas[cy * px : (cy + 1) * px, cx * px : (cx + 1) * px] = library.images[tiles[i]]
        views[r] = resize_tile(canvas, out_px)
    return encoder.encode(views).astype(np.float32)


def _slide(
    rng, library, s: DemoSettings, f_dense, clustered, mix, encoder
) -> tuple[SlideFeatures, float]:
    """One virtual slide and its measured clustering."""
    slots, region, nx, ny = _layout(rng, s)
    category = _assign_categories(rng, slots, region, nx, ny, f_dense, clustered, mix, s)
    tiles = np.empty(len(slots), np.int64)
    for c in np.unique(category):
        pool = library.indices(int(c))
        where = np.flatnonzero(category == c)
        tiles[where] = rng.choice(pool, size=len(where), replace=True)
    n_regions = nx * ny
    present = np.unique(region)
    remap = np.full(n_regions, -1, np.int64)
    remap[present] = np.arange(len(present))
    per = s.region_px // s.patch_px
    region_cells = np.stack([present % nx, present // nx], 1)
    dense = category == DENSE
    frac_per_region = np.array([dense[region == r].mean() for r in present])
    clustering = float(frac_per_region.max() - dense.mean())
    region_feats = _region_features(library, tiles, slots, region, n_regions, s, encoder)[present]
    feats = SlideFeatures(
        features=library.features[tiles].astype(np.float32),
        coords=(slots * s.patch_px).astype(np.int64),
        region_features=region_feats,
        region_coords=(region_cells * per * s.patch_px).astype(np.int64),
        patch_to_region=remap[region],
        attrs={},
    )
    feats.extras["tile_category"] = category.astype(np.int64)
    feats.extras["library_tile"] = tiles
    return feats, clustering


def _attrs(library: TileLibrary, s: DemoSettings, slide_id: str) -> dict:
    return {
        "encoder": library.encoder,
        "encoder_version": library.encoder_version,
        "region_encoder": library.encoder,
        "region_encoder_version": library.encoder_version,
        "region_mode": "view",
        "patch_px": s.patch_px,
        "region_px": s.region_px,
        "target_mpp": s.target_mpp,
        "patch_size": s.patch_px,
        "region_size": s.region_px,
        "mpp": s.target_mpp,
        "mpp_is_assumed": False,
        "slide_fingerprint": f"synthetic-{slide_id}",
        "slide_path": f"synthetic:{slide_id}",
        "synthetic": SYNTHETIC_NOTE,
    }


def make_demo_cohort(
    library: TileLibrary, settings: DemoSettings | None = None
) -> list[DemoPatient]:
    """Draw the virtual patients (same library and settings -> same cohort)."""
    from napari_hila.encoders.registry import get_vision_encoder

    s = settings or DemoSettings()
    encoder = get_vision_encoder(library.encoder, device="cpu")
    rng = np.random.default_rng(s.seed)
    patients = []
    for p in range(s.n_patients):
        f_dense = float(rng.beta(1.5, 2.5) * 0.6)
        clustered = bool(rng.random() < s.clustered_fraction)
        # sparse-edge and stroma shares, each independent of f_dense; mixed fills the rest
        mix = (float(rng.beta(1.5, 2.5) * 0.45), float(rng.beta(1.5, 2.5) * 0.4))
        n_slides = 2 if rng.random() < s.second_slide_fraction else 1
        pid = f"DEMO-{p:03d}"
        slides, f_measured, c_measured, s_measured = {}, [], [], []
        for k in range(n_slides):
            feats, clustering = _slide(rng, library, s, f_dense, clustered, mix, encoder)
            sid = f"{pid}-S{k + 1}"
            feats.attrs = _attrs(library, s, sid)
            slides[sid] = feats
            f_measured.append(float((feats.extras["tile_category"] == DENSE).mean()))
            s_measured.append(float((feats.extras["tile_category"] == SPARSE).mean()))
            c_measured.append(clustering)
        f_mean, c_mean = float(np.mean(f_measured)), float(np.mean(c_measured))
        sparse_mean = float(np.mean(s_measured))
        log_hazard = s.beta_dense * f_mean + s.beta_sparse * sparse_mean + s.beta_cluster * c_mean
        patients.append(
            DemoPatient(
                pid,
                f_mean,
                sparse_mean,
                c_mean,
                "clustered" if clustered else "scattered",
                log_hazard,
                0.0,
                0,
                0.0,
                slides,
            )
        )
    centre = np.mean([pt.log_hazard for pt in patients])
    for pt in patients:
        pt.log_hazard -= centre
        pt.true_time, pt.time, pt.event = weibull_outcome(
            rng, pt.log_hazard, s.weibull_scale, s.weibull_shape, s.censor_window
        )
    return patients


def weibull_outcome(
    rng: np.random.Generator,
    log_hazard: float,
    scale: float,
    shape: float,
    censor_window: tuple[float, float],
) -> tuple[float, float, int]:
    """(true time, observed time, event) of a patient: Weibull with that log-hazard,
    censored at a uniform time in ``censor_window`` (the observed time rounded to 0.01)."""
    u = 1.0 - rng.random()
    true_time = float(scale * (-np.log(u)) ** (1 / shape) * np.exp(-log_hazard / shape))
    censor = float(rng.uniform(*censor_window))
    return true_time, round(min(true_time, censor), 2), int(true_time <= censor)


def oracle_c_index(patients: list[DemoPatient]) -> float:
    """Harrell's C of the true log-hazard: the ceiling any model can reach on this cohort."""
    from napari_hila.survival.metrics import concordance_index

    return concordance_index(
        [p.time for p in patients], [p.event for p in patients], [p.log_hazard for p in patients]
    )


def write_demo_cohort(patients: list[DemoPatient], out_dir: str | os.PathLike) -> Path:
    """Write ``features/<slide>.h5``, ``cohort.csv`` (what training sees) and ``truth.csv``."""
    from napari_hila.io_utils import atomic_path

    out = Path(out_dir)
    (out / "features").mkdir(parents=True, exist_ok=True)
    rows = ["patient_id,slide_id,time,event"]
    truth = ["patient_id,log_hazard,f_dense,f_sparse,clustering,arrangement,true_time,time,event"]
    for pt in patients:
        for sid, feats in pt.slides.items():
            save_features(out / "features" / f"{sid}.h5", feats)
            rows.append(f"{pt.patient_id},{sid},{pt.time},{pt.event}")
        truth.append(
            f"{pt.patient_id},{pt.log_hazard:.6f},{pt.f_dense:.4f},{pt.f_sparse:.4f},"
            f"{pt.clustering:.4f},"
            f"{pt.arrangement},{pt.true_time:.3f},{pt.time},{pt.event}"
        )
    for name, lines in (("cohort.csv", rows), ("truth.csv", truth)):
        with atomic_path(out / name) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out / "README.txt") as tmp:
        tmp.write_text(
            SYNTHETIC_NOTE
            + ".\ncohort.csv is what training sees; truth.csv holds the simulated hazard.\n"
        )
    return out / "cohort.csv"
