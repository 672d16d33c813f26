"""The command-line entry point: every command has help, errors are one line."""

from __future__ import annotations

import pytest

from napari_hila.cli import COMMANDS, main
from napari_hila.commands.bench import BENCHMARKS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: napari-hila" in capsys.readouterr().out


@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_bench_out_option_follows_the_benchmark_name(benchmark, capsys):
    with pytest.raises(SystemExit):
        main(["bench", benchmark, "--help"])
    assert "--out" in capsys.readouterr().out


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.svs"
    assert main(["info", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.svs" in err[0]


def _all_options():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from option_reference import subcommands

    from napari_hila.cli import build_parser

    commands = subcommands(build_parser())
    parsers = {name: p for name, p in commands.items() if name != "bench"}
    parsers.update({f"bench {n}": p for n, p in subcommands(commands["bench"]).items()})
    for name, parser in parsers.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                yield name, action


def test_every_option_has_help():
    missing = [(name, a.option_strings) for name, a in _all_options() if not a.help]
    assert missing == []


def test_readme_option_reference_names_every_option():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Option reference") :]
    missing = [
        (name, a.option_strings[0])
        for name, a in _all_options()
        if f"`{a.option_strings[0]}" not in section
    ]
    assert missing == [], "run scripts/option_reference.py and update README.md"
