"""The view command's errors (launch_viewer itself: test_export_screenshot.py)."""

from __future__ import annotations

import argparse

import pytest

from napari_hila.commands import view
from napari_hila.errors import HilaError

pytestmark = pytest.mark.gui


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nope.svs"], "nope.svs"),
        (["--model", "{tmp}"], "card.json"),
        (["--result", "{tmp}"], "result.json"),
    ],
)
def test_view_command_rejects_bad_input(tmp_path, argv, message):
    parser = argparse.ArgumentParser()
    view.add_arguments(parser)
    args = parser.parse_args([a.format(tmp=tmp_path) for a in argv])
    with pytest.raises(HilaError, match=message):
        view.run(args)
