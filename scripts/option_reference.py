"""Print the README's option reference from the commands' own argparse help.

Run `python scripts/option_reference.py` after changing a command's options and
paste the output over the README's "Option reference" section
(tests/test_cli.py checks that the README names every option).
"""

from __future__ import annotations

import argparse

from napari_hila.cli import COMMANDS, build_parser
from napari_hila.commands.bench import BENCHMARKS

_FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of a parser's sub-commands, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_rows(parser: argparse.ArgumentParser) -> list[str]:
    """One markdown table row per option: its spelling and its help."""
    rows = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        spelling = ", ".join(action.option_strings)
        if not isinstance(action, _FLAGS):
            spelling += " " + (action.metavar or action.dest.upper())
        text = (action.help or "").replace("|", "/")
        rows.append(f"| `{spelling}` | {text} |")
    return rows


def _table(title: str, parser: argparse.ArgumentParser) -> str:
    header = "| option | what it does |\n| --- | --- |\n"
    return f"### `{title}`\n\n" + header + "\n".join(option_rows(parser)) + "\n"


def reference() -> str:
    """The whole section, commands then benchmarks."""
    commands = subcommands(build_parser())
    parts = [
        "## Option reference\n",
        "Every option of every command, as its `--help` gives it.\n",
    ]
    parts += [_table(f"napari-hila {name}", commands[name]) for name in COMMANDS if name != "bench"]
    benches = subcommands(commands["bench"])
    parts += [_table(f"napari-hila bench {name}", benches[name]) for name in BENCHMARKS]
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference())
