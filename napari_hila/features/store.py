"""The per-slide feature file.

Layout (HDF5): ``features`` (M, D) and ``coords`` (M, 2) at the patch level, the
datasets CLAM and TRIDENT write, so their files open here unchanged; then
``region_features`` (R, Dr), ``region_coords`` (R, 2) and ``patch_to_region``
(M,). Coordinates are level-0 pixels (x, y) of the tile's top-left corner.
Optional multi-magnification groups (``scales/<name>/features|coords``) and a
cross-scale index serve CrossFusion. Attributes record the encoder, tile sizes,
mpp and the slide fingerprint so a mismatch is caught, not silently used.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from napari_hila.errors import FeatureFileError
from napari_hila.io_utils import atomic_path, check_free_space, write_failure
from napari_hila.slides.grids import PATCH_PX, REGION_PX

# features.pt_format (torch.load; 1.7 s to import torch) is imported when a .pt file is
# read: the HDF5 path and the cohort tools that read feature files need no torch.

FORMAT_VERSION = 1


@dataclass
class SlideFeatures:
    """Everything a features-based model needs from one slide."""

    features: np.ndarray  # (M, D) float32, patch level
    coords: np.ndarray  # (M, 2) int64, level-0 (x, y)
    region_features: np.ndarray  # (R, Dr) float32
    region_coords: np.ndarray  # (R, 2) int64
    patch_to_region: np.ndarray  # (M,) int64, index into the regions, -1 if none
    attrs: dict[str, Any] = field(default_factory=dict)
    # Extra magnifications for CrossFusion: name -> (features, coords); plus
    # "cross_scale_index" arrays, all keyed by name.
    scales: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_regions(self) -> int:
        return int(self.region_features.shape[0])

    @property
    def patch_size(self) -> int:
        """Patch side in level-0 pixels (e.g. 256 at 0.5 um/px, 512 at 0.25)."""
        return int(self.attrs.get("patch_size", PATCH_PX))  # the default grid at its own mpp

    @property
    def region_size(self) -> int:
        """Region side in level-0 pixels."""
        return int(self.attrs.get("region_size", REGION_PX))

    @property
    def encoder(self) -> str:
        return str(self.attrs.get("encoder", "unknown"))

    @property
    def region_encoder(self) -> str:
        return str(self.attrs.get("region_encoder", self.encoder))


def save_features(path: str | os.PathLike, feats: SlideFeatures) -> Path:
    """Write ``feats`` to ``path`` atomically (temporary file, then rename).

    The HDF5 file is built in memory and written with plain file I/O after a
    free-space check: HDF5 crashes the process when its own write hits a full
    disk, a plain write raises an OSError, which becomes one message naming the
    folder (the temporary file is removed; the old file, if any, stays).
    """
    path = Path(path)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        _write_datasets(h5, feats)
    data = buffer.getbuffer()
    try:
        check_free_space(path.parent, data.nbytes, f"the feature file {path.name}")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise write_failure(path.parent, err, f"the feature file {path.name}") from err
    return path


def _write_datasets(h5: h5py.File, feats: SlideFeatures) -> None:
    h5.create_dataset("features", data=np.asarray(feats.features, np.float32))
    coords = h5.create_dataset("coords", data=np.asarray(feats.coords, np.int64))
    h5.create_dataset("region_features", data=np.asarray(feats.region_features, np.float32))
    h5.create_dataset("region_coords", data=np.asarray(feats.region_coords, np.int64))
    h5.create_dataset("patch_to_region", data=np.asarray(feats.patch_to_region, np.int64))
    for name, (f, c) in feats.scales.items():
        grp = h5.require_group(f"scales/{name}")
        grp.create_dataset("features", data=np.asarray(f, np.float32))
        grp.create_dataset("coords", data=np.asarray(c, np.int64))
    for name, arr in feats.extras.items():
        h5.create_dataset(f"extras/{name}", data=np.asarray(arr))
    h5.attrs["format_version"] = FORMAT_VERSION
    for key, value in feats.attrs.items():
        if not key.startswith("coords."):  # a loaded file's coords attributes go back below
            h5.attrs[key] = value
    for key, value in clam_coords_attrs(feats.attrs).items():
        coords.attrs[key] = value


def clam_coords_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes CLAM and TRIDENT put on ``coords``, from ours.

    CLAM's ``create_patches_fp`` writes ``patch_size`` at ``patch_level`` with
    that level's ``downsample``; TRIDENT writes ``patch_size_level0`` (the
    level-0 side its slide encoders read) and the magnifications. Patches here
    are read at level 0, so ``patch_size`` is the level-0 side at level 0 with
    downsample 1; a file without ``patch_size`` gets none.
    """
    if "patch_size" not in attrs:
        return {}
    size = int(attrs["patch_size"])
    out: dict[str, Any] = {
        "patch_size": size,
        "patch_level": 0,
        "downsample": np.array([1.0, 1.0]),
        "patch_size_level0": size,
    }
    if attrs.get("target_mpp"):  # 10x is 1 um/px
        out["target_magnification"] = int(round(10.0 / float(attrs["target_mpp"])))
    if attrs.get("mpp"):
        out["level0_magnification"] = int(round(10.0 / float(attrs["mpp"])))
    return out


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def add_clam_patch_size(attrs: dict[str, Any]) -> None:
    """Set ``patch_size`` (level-0 px) from CLAM's or TRIDENT's attributes on the coords dataset.

    TRIDENT records the level-0 side itself (``patch_size_level0``); CLAM records
    ``patch_size`` at ``patch_level`` with that level's ``downsample`` (x, y).
    """
    if "patch_size" in attrs:
        return
    level0 = float(np.ravel(attrs.get("coords.patch_size_level0", 0))[0])
    if level0 > 0:
        attrs["patch_size"] = int(round(level0))
    elif "coords.patch_size" in attrs:
        level = int(attrs.get("coords.patch_level", 0))
        raw = attrs.get("coords.level_downsample", attrs.get("coords.downsample", 1.0))
        downsample = float(np.ravel(raw)[0]) if level else 1.0
        attrs["patch_size"] = int(round(int(attrs["coords.patch_size"]) * downsample))


def load_features(path: str | os.PathLike) -> SlideFeatures:
    """Read a feature file written here, by CLAM or by TRIDENT (``.h5`` or CLAM ``.pt``).

    CLAM/TRIDENT files carry only ``features`` and ``coords``; region arrays are
    then left empty and ``features.pooling.ensure_regions`` pools them.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: feature file not found; run `napari-hila extract` first")
    if path.suffix in (".pt", ".pth"):  # CLAM's pt_files: a bare tensor
        from napari_hila.features.pt_format import load_pt_features

        return load_pt_features(path)
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5 or "coords" not in h5:
                raise FeatureFileError(
                    f"{path}: not a feature file (needs datasets 'features' and 'coords')"
                )
            features = np.asarray(h5["features"][()], np.float32)
            coords = np.asarray(h5["coords"][()], np.int64)
            if features.ndim == 3 and features.shape[0] == 1:  # some tools keep a batch axis
                features = features[0]
            if coords.ndim == 3 and coords.shape[0] == 1:
                coords = coords[0]
            attrs = {k: _attr_value(v) for k, v in h5.attrs.items()}
            attrs.update({f"coords.{k}": _attr_value(v) for k, v in h5["coords"].attrs.items()})
            empty = np.zeros((0, features.shape[1] if features.ndim == 2 else 0), np.float32)
            region_features = (
                np.asarray(h5["region_features"][()], np.float32)
                if "region_features" in h5
                else empty
            )
            region_coords = (
                np.asarray(h5["region_coords"][()], np.int64)
                if "region_coords" in h5
                else np.zeros((0, 2), np.int64)
            )
            patch_to_region = (
                np.asarray(h5["patch_to_region"][()], np.int64)
                if "patch_to_region" in h5
                else np.full(len(coords), -1, np.int64)
            )
            scales = {}
            if "scales" in h5:
                for name, grp in h5["scales"].items():
                    scales[name] = (
                        np.asarray(grp["features"][()], np.float32),
                        np.asarray(grp["coords"][()], np.int64),
                    )
            extras = {}
            if "extras" in h5:
                extras = {name: np.asarray(ds[()]) for name, ds in h5["extras"].items()}
    except FeatureFileError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise FeatureFileError(
            f"{path}: cannot read feature file ({err}); delete it and run `napari-hila extract` again"
        ) from err
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise FeatureFileError(
            f"{path}: 'features' {features.shape} and 'coords' {coords.shape} do not match "
            "(expected (M, D) and (M, 2))"
        )
    add_clam_patch_size(attrs)
    return SlideFeatures(
        features=features,
        coords=coords,
        region_features=region_features,
        region_coords=region_coords,
        patch_to_region=patch_to_region,
        attrs=attrs,
        scales=scales,
        extras=extras,
    )
