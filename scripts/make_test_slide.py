#!/usr/bin/env python
"""Write a large pyramidal test slide of real tissue (see napari_hila.slides.synthetic).

python scripts/make_test_slide.py out.svs --size 50000 --layout svs
python scripts/make_test_slide.py out.ome.tif --size 20000 --layout ome --no-mpp
"""

from __future__ import annotations

import argparse
import sys
import time

from napari_hila.slides.synthetic import LAYOUTS, write_test_slide


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "out", help="output file (.svs for the Aperio layout, .tif/.ome.tif otherwise)"
    )
    parser.add_argument("--size", type=int, default=50_000, help="width in px (default 50000)")
    parser.add_argument("--height", type=int, default=None, help="height in px (default: = size)")
    parser.add_argument("--layout", choices=LAYOUTS, default="svs")
    parser.add_argument("--mpp", type=float, default=0.25, help="um per px at level 0")
    parser.add_argument("--no-mpp", action="store_true", help="write no pixel size at all")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = write_test_slide(
        args.out,
        args.size,
        args.height or args.size,
        layout=args.layout,
        mpp=None if args.no_mpp else args.mpp,
        tile=args.tile,
        seed=args.seed,
    )
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
