"""Command-line options shared by several sub-commands."""

from __future__ import annotations

import argparse
import functools
import math
import re
from collections.abc import Callable

from napari_hila.devices import DEFAULT_TORCH_THREADS
from napari_hila.errors import SlideError
from napari_hila.slides.opener import check_mpp, slide_warnings_printed

# features.extract (torch, 2.7 s) is imported where used: every napari-hila command builds
# its parser with these options (tests/test_startup_imports.py).

MPP_HELP = "microns per pixel at level 0; overrides or supplies the file's value"


def mpp_value(text: str) -> float:
    """``--mpp``'s value, checked like ``open_slide(mpp=...)`` so argparse reports a bad one."""
    try:
        return check_mpp(text, "--mpp")
    except SlideError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (``--epochs 0`` is refused, not run)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (a learning rate, a step)."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (a weight decay)."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number, 0 or above")
    return value


def add_slide_search_arguments(parser: argparse.ArgumentParser, scope: str, example: str) -> None:
    """--recursive and --pattern for commands that take folders of slides or files."""
    parser.add_argument("--recursive", action="store_true", help=f"{scope}: search sub-folders too")
    parser.add_argument(
        "--pattern",
        default=None,
        metavar="GLOB",
        help=f"{scope}: only files whose names match, e.g. '{example}'",
    )


# A local Dask cluster: each worker is a process reading and encoding with its
# share of the cores; more than this per core only adds memory and start-up.
WORKERS_PER_CORE = 4


def workers_value(text: str) -> int:
    """``--workers N``: 1 to WORKERS_PER_CORE x the machine's cores."""
    from napari_hila.features.extract import available_cores

    value = at_least(1)(text)
    limit = WORKERS_PER_CORE * available_cores()
    if value > limit:
        raise argparse.ArgumentTypeError(
            f"{value} workers on {available_cores()} cores: at most {limit} "
            f"({WORKERS_PER_CORE} per core); for more, start a cluster and give --scheduler"
        )
    return value


SCHEDULER_PROTOCOLS = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


def scheduler_address(text: str) -> str:
    """``--scheduler``: ``[PROTOCOL://]HOST:PORT`` (a scheduler file path is not an address)."""
    match = re.fullmatch(
        r"(?:([a-z]+)://)?(\[[0-9a-fA-F:]+\]|[^\s:/\[\]]+):(\d{1,5})", text.strip()
    )
    if (
        not match
        or (match.group(1) and match.group(1) not in SCHEDULER_PROTOCOLS)
        or not 0 < int(match.group(3)) < 65536
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a scheduler address; expected HOST:PORT or tcp://HOST:PORT "
            "(the address the scheduler prints, e.g. tcp://10.0.0.5:8786)"
        )
    return text.strip()


def add_mpp_argument(parser: argparse.ArgumentParser) -> None:
    """``--mpp UM_PER_PX``: the slide's pixel size when the file lacks it or has it wrong."""
    parser.add_argument("--mpp", type=mpp_value, default=None, metavar="UM_PER_PX", help=MPP_HELP)


def threads_help() -> str:
    """``--threads``' help, with the default and the measurements behind it."""
    return (
        f"torch CPU threads (default {DEFAULT_TORCH_THREADS}; 0: torch's own default). Measured on "
        "a busy 2-core machine, a HiLa training step on 500 / 5,000 patches took 17 / 68-150 ms "
        "on 1 thread, 38-700 / 180-820 ms on 2 and 900-1000 / 180-1040 ms with torch's default"
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU thread count (``devices.configure_torch_threads``)."""
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_TORCH_THREADS, metavar="N", help=threads_help()
    )


def printing_slide_warnings(run: Callable[[argparse.Namespace], int]):
    """A command's ``run`` that prints each slide's warnings once (pixel size assumed,
    levels left out), however often it opens the slide."""

    @functools.wraps(run)
    def run_printing(args: argparse.Namespace) -> int:
        with slide_warnings_printed():
            return run(args)

    return run_printing
