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


THREADS_HELP = (
    "torch CPU threads (default: %(default)s; 0: torch's own default, one per core). "
    "Measured on a busy 2-core machine: one thread ran HiLa steps fastest (README, Threads)"
)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU thread count (``devices.configure_torch_threads``)."""
    from napari_hila.devices import DEFAULT_TORCH_THREADS

    parser.add_argument(
        "--threads", type=int, default=DEFAULT_TORCH_THREADS, metavar="N", help=THREADS_HELP
    )
