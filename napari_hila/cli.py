"""``napari-hila`` command line: one sub-command per module in ``commands/``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``
and imports its heavy dependencies inside ``run`` so ``--help`` stays fast.
A :class:`~napari_hila.errors.HilaError` becomes one ``error:`` line and exit 2,
and so does a write that fails for a full, read-only or forbidden folder.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_hila import __version__
from napari_hila.errors import HilaError
from napari_hila.io_utils import is_write_failure, write_failure

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("napari_hila.commands.info", "describe a slide as JSON"),
    "extract": ("napari_hila.commands.extract", "extract patch and region features for slides"),
    "train": ("napari_hila.commands.train", "train and cross-validate a survival model"),
    "predict": ("napari_hila.commands.predict", "run a trained model on one slide"),
    "demo": ("napari_hila.commands.demo", "run the whole pipeline on the bundled sample"),
    "view": ("napari_hila.commands.view", "open napari with a slide and the HiLa dock"),
    "bench": ("napari_hila.commands.bench", "benchmarks that print JSON"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-hila",
        description="Explainable survival prediction on whole-slide images (HiLa, CrossFusion, VPTSurv).",
    )
    parser.add_argument("--version", action="version", version=f"napari-hila {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name, help=help_text, description=(module.__doc__ or help_text).strip()
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except HilaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a diverging training run names its fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            return _reader_went_away()
        if not is_write_failure(err):
            raise
        folder = Path(err.filename).parent if err.filename else None
        print(f"error: {write_failure(folder, err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _reader_went_away() -> int:
    """``napari-hila info x.svs | head``: the pipe closed; stop quietly, as cat does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    return 141  # 128 + SIGPIPE, what a shell reports for such a writer


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
