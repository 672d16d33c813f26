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
