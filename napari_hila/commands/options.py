"""Command-line options shared by several sub-commands."""

from __future__ import annotations

import argparse

MPP_HELP = "microns per pixel at level 0; overrides or supplies the file's value"


def mpp_value(text: str) -> float:
    """``--mpp``'s value, checked like ``open_slide(mpp=...)`` so argparse reports a bad one."""
    from napari_hila.errors import SlideError
    from napari_hila.slides.opener import check_mpp

    try:
        return check_mpp(text, "--mpp")
    except SlideError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_mpp_argument(parser: argparse.ArgumentParser) -> None:
    """``--mpp UM_PER_PX``: the slide's pixel size when the file lacks it or has it wrong."""
    parser.add_argument("--mpp", type=mpp_value, default=None, metavar="UM_PER_PX", help=MPP_HELP)
