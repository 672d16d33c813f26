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


def threads_help() -> str:
    """``--threads``' help, with the default and the measurements behind it."""
    from napari_hila.devices import DEFAULT_TORCH_THREADS

    return (
        f"torch CPU threads (default {DEFAULT_TORCH_THREADS}; 0: torch's own default). Measured on "
        "a busy 2-core machine, a HiLa training step on 500 / 5,000 patches took 17 / 68-150 ms "
        "on 1 thread, 38-700 / 180-820 ms on 2 and 900-1000 / 180-1040 ms with torch's default"
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU thread count (``devices.configure_torch_threads``)."""
    from napari_hila.devices import DEFAULT_TORCH_THREADS

    parser.add_argument(
        "--threads", type=int, default=DEFAULT_TORCH_THREADS, metavar="N", help=threads_help()
    )
