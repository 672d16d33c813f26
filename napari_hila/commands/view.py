"""Open napari with a slide and the HiLa survival dock.

``napari-hila view SLIDE --model MODEL_DIR`` opens the slide with the
napari-hila reader and docks the HiLa survival and Kaplan-Meier widgets;
``--result DIR`` also draws a saved prediction (from ``napari-hila predict``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_hila.commands.options import add_mpp_argument, add_threads_argument
from napari_hila.devices import configure_torch_threads
from napari_hila.errors import HilaError, ModelFileError
from napari_hila.modelfile import read_card
from napari_hila.slides import open_slide

# napari and the viewer (Qt) are imported when the window opens, after the inputs are
# checked: they are optional and take seconds to load.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", nargs="?", help="whole-slide image to open (optional)")
    parser.add_argument("--model", help="model directory to preselect (default: the shipped demo)")
    parser.add_argument("--result", help="folder with result.json/result.npz to show at once")
    add_mpp_argument(parser)
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    configure_torch_threads(args.threads)  # the prediction job's thread applies it too
    if args.slide:
        # a clear SlideError now rather than a napari dialog later
        with open_slide(args.slide, mpp=args.mpp):
            pass
    if args.model:
        read_card(args.model)
    if args.result and not (Path(args.result) / "result.json").is_file():
        raise ModelFileError(
            f"{args.result}: no result.json here; give the --out folder of `napari-hila predict`"
        )
    import napari

    from napari_hila._qt.app import launch_viewer

    try:
        launch_viewer(args.slide, result=args.result, model=args.model, mpp=args.mpp)
    except (OSError, ValueError) as err:
        raise HilaError(f"{args.slide or args.result}: cannot show it in napari ({err})") from err
    napari.run()
    return 0
