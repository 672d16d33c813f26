"""Describe a slide as JSON: backend, vendor, levels, mpp, tissue, grid sizes.

Example: ``napari-hila info slide.svs --backend tifffile``
(``--mpp 0.25`` when the file lacks its pixel size or has it wrong)
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from napari_hila.commands.options import add_mpp_argument
from napari_hila.slides import DEFAULT_MIN_TISSUE, detect_tissue, make_grids, open_slide


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", help="slide file (.svs, .ndpi, .mrxs, .tif, OME-TIFF, ...)")
    parser.add_argument(
        "--backend",
        choices=("openslide", "tifffile"),
        default=None,
        help="force a reader (default: the faster one that sees the whole pyramid)",
    )
    add_mpp_argument(parser)
    parser.add_argument(
        "--no-tissue", action="store_true", help="skip tissue detection and grid counts"
    )


def describe_slide(
    path: str, backend: str | None = None, tissue: bool = True, mpp: float | None = None
) -> dict[str, Any]:
    """The JSON description ``napari-hila info`` prints (``mpp`` as in ``open_slide``)."""
    with open_slide(path, backend=backend, mpp=mpp) as slide:
        info: dict[str, Any] = {
            "path": str(slide.path),
            "backend": slide.backend,
            "vendor": slide.vendor,
            "dimensions": list(slide.dimensions),
            "levels": slide.describe_levels(),
            "pyramid_downsamples": slide.pyramid_downsamples(),
            "mpp": slide.mpp,
            "mpp_is_assumed": slide.mpp_is_assumed,
            "mpp_source": slide.mpp_source,
            "mpp_note": slide.mpp_note,
            "warnings": list(slide.open_warnings),
            "objective_power": slide.objective_power,
            "tile_size": list(slide.tile_size),
            "associated_images": {
                name: list(slide.read_associated(name).shape[1::-1])
                for name in slide.associated_image_names
            },
            "fingerprint": slide.fingerprint(),
        }
        if tissue:
            mask = detect_tissue(slide)
            grids = make_grids(slide, mask)  # the default grid (slides.grids)
            info["tissue_fraction"] = round(mask.tissue_fraction, 4)
            info["grid"] = {
                **grids.settings(),
                "min_tissue": DEFAULT_MIN_TISSUE,
                "patch_size_level0": grids.patch_size,
                "region_size_level0": grids.region_size,
                "patches": grids.num_patches,
                "regions": grids.num_regions,
            }
        info["property_count"] = len(slide.properties)
    return info


def run(args: argparse.Namespace) -> int:
    info = describe_slide(args.slide, backend=args.backend, tissue=not args.no_tissue, mpp=args.mpp)
    print(json.dumps(info, indent=2))
    return 0
