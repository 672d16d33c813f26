"""Feature tensors saved with ``torch.save`` (CLAM's ``pt_files/<slide>.pt``).

A ``.pt`` file holds an (M, D) tensor and no coordinates; CLAM keeps those in
``h5_files/<slide>.h5`` beside it. We look for a sibling ``<stem>.h5`` with a
``coords`` dataset in the same folder or in ``../h5_files``; without one the
coordinates are unknown (all zero, ``attrs["coords_missing"]``), and region
pooling then treats the slide as a single region. Loading never unpickles code.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from napari_hila.errors import FeatureFileError
from napari_hila.features.store import SlideFeatures, add_clam_patch_size


def sibling_coords_file(path: Path) -> Path | None:
    """The CLAM/TRIDENT ``.h5`` that holds the coordinates of ``path``'s patches, if any."""
    for candidate in (path.with_suffix(".h5"), path.parent.parent / "h5_files" / f"{path.stem}.h5"):
        if candidate.is_file():
            return candidate
    return None


def load_pt_features(path: str | Path) -> SlideFeatures:
    """Read a ``.pt`` feature tensor (and its sibling coordinates when present)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: feature file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or a damaged file
        raise FeatureFileError(
            f"{path}: cannot read ({type(err).__name__}); expected a tensor saved with torch.save"
        ) from err
    if isinstance(data, dict):
        data = data.get("features", data.get("feats"))
    if not isinstance(data, torch.Tensor):
        raise FeatureFileError(f"{path}: expected an (M, D) tensor of patch features")
    features = data.detach().float().numpy()
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]
    if features.ndim != 2:
        raise FeatureFileError(f"{path}: features have shape {features.shape}, expected (M, D)")
    attrs: dict = {"encoder": "unknown", "feature_dim": int(features.shape[1]), "source": str(path)}
    coords_file = sibling_coords_file(path)
    if coords_file is None:
        coords = np.zeros((len(features), 2), np.int64)
        attrs["coords_missing"] = True
    else:
        with h5py.File(coords_file, "r") as h5:
            if "coords" not in h5:
                raise FeatureFileError(f"{coords_file}: no 'coords' dataset for {path.name}")
            coords = np.asarray(h5["coords"][()], np.int64).reshape(-1, 2)
            for key, value in h5["coords"].attrs.items():
                attrs[f"coords.{key}"] = value.item() if isinstance(value, np.generic) else value
        if len(coords) != len(features):
            raise FeatureFileError(
                f"{path}: {len(features)} features but {len(coords)} coordinates in {coords_file}"
            )
        add_clam_patch_size(attrs)
    return SlideFeatures(
        features=features,
        coords=coords,
        region_features=np.zeros((0, features.shape[1]), np.float32),
        region_coords=np.zeros((0, 2), np.int64),
        patch_to_region=np.full(len(features), -1, np.int64),
        attrs=attrs,
    )
