"""`napari-hila train` from the command line: table, files, bad cohort, resume."""

from __future__ import annotations

import json

from _single_thread import one_torch_thread  # noqa: F401
from test_training import write_synthetic_cohort

from napari_hila.cli import main


def test_train_command_prints_table_and_writes_run(tmp_path, capsys):
    csv, feats = write_synthetic_cohort(tmp_path, n_patients=10)
    out = tmp_path / "run"
    argv = ["train", "--cohort", str(csv), "--features", str(feats), "--out", str(out)]
    argv += [
        "--model",
        "abmil",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--quiet",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['c_index_mean']:.4f}" in printed and "std" in printed
    assert "log-rank p" in printed and "final_model" in printed
    assert (out / "final_model" / "card.json").exists()
    # running again resumes: nothing is retrained, the same numbers come back
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert "already done" in capsys.readouterr().err


def test_bad_cohort_is_reported_before_training(tmp_path, capsys):
    csv, feats = write_synthetic_cohort(tmp_path, n_patients=4)
    text = csv.read_text().splitlines()
    text[2] = text[2].rsplit(",", 1)[0] + ",7"
    csv.write_text("\n".join(text) + "\nP9,S9,-1,1\n")
    code = main(
        [
            "train",
            "--cohort",
            str(csv),
            "--features",
            str(feats),
            "--out",
            str(tmp_path / "r"),
            "--model",
            "abmil",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "line 3:" in err and "event '7'" in err and "negative" in err and "no feature file" in err
    )
    assert not (tmp_path / "r").exists()


def test_prompt_defaults_name_a_shipped_set():
    from napari_hila.cli import build_parser
    from napari_hila.prompts import load_prompt_set

    args = build_parser().parse_args(
        ["train", "--cohort", "c.csv", "--features", "f", "--out", "o"]
    )
    assert args.model == "hila" and args.text_encoder == "auto"
    assert load_prompt_set(args.prompts).patch  # the default set exists and has prompts
