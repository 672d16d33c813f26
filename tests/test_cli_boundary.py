"""Bad arguments, bad bytes and failed writes at the command line: one message, never a traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from napari_hila.cli import main
from napari_hila.commands import options


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "value, says",
    [("0", "below 1"), ("-3", "below 1"), ("100000", "at most"), ("two", "not a whole number")],
)
def test_workers_outside_its_bounds_is_refused(value, says, tmp_path, capsys):
    err = _usage_error(["extract", "x.svs", "--out", str(tmp_path), "--workers", value], capsys)
    assert "--workers" in err and says in err


def test_scheduler_addresses_are_parsed(tmp_path, capsys):
    for good in ("tcp://10.0.0.5:8786", "localhost:8786", "tls://head:8786", "[::1]:8786"):
        assert options.scheduler_address(good) == good
    for bad in ("notanaddress", "tcp://head", "http://head:8786", "head:99999"):
        err = _usage_error(["extract", "x.svs", "--out", str(tmp_path), "--scheduler", bad], capsys)
        assert "not a scheduler address" in err and "HOST:PORT" in err


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--epochs", "0", "below 1"),
        ("--lr", "-1", "above 0"),
        ("--lr", "nan", "finite"),
        ("--folds", "1", "below 2"),
        ("--weight-decay", "-0.1", "0 or above"),
    ],
)
def test_training_numbers_are_checked_before_anything_runs(flag, value, says, tmp_path, capsys):
    argv = ["train", "--cohort", "c.csv", "--features", "f", "--out", str(tmp_path / "run")]
    err = _usage_error([*argv, flag, value], capsys)
    assert flag in err and says in err
    assert not (tmp_path / "run").exists()


def test_train_help_lists_every_registered_model(capsys):
    from napari_hila.models.registry import available_models, get_model_spec

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    printed = capsys.readouterr().out
    for name in available_models():
        assert f"  {name}  " in printed or f"  {name} " in printed
        assert get_model_spec(name).description[:40] in printed


def test_non_utf8_cohort_names_line_and_byte(tmp_path, capsys):
    csv = tmp_path / "cohort.csv"
    csv.write_bytes(b"patient_id,slide_id,time,event\nP1,S1,10,1\nP2,Ren\xe9e,12,0\n")
    code = main(["train", "--cohort", str(csv), "--features", str(tmp_path), "--out", "r"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "line 3" in err and "0xE9" in err and "column 7" in err and "UTF-8" in err


def test_empty_fold_cell_is_reported_with_its_line(tmp_path, capsys):
    csv = tmp_path / "cohort.csv"
    csv.write_text("patient_id,slide_id,time,event,fold\nP1,S1,10,1,0\nP2,S2,12,0,\n")
    code = main(["train", "--cohort", str(csv), "--features", str(tmp_path), "--out", "r"])
    err = capsys.readouterr().err
    assert code == 2 and "line 3" in err and "fold is empty" in err


def test_diverging_run_and_full_disk_are_messages(monkeypatch, capsys):
    from napari_hila.commands import info

    def diverge(args):
        raise FloatingPointError("training diverged at epoch 3 (loss nan); lower --lr")

    monkeypatch.setattr(info, "run", diverge)
    assert main(["info", "x.svs"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: training diverged at epoch 3 (loss nan); lower --lr"
    )

    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/fold_0.json")

    monkeypatch.setattr(info, "run", disk_full)
    assert main(["info", "x.svs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /data/run: cannot write") and "the disk is full" in err


def test_closed_pipe_ends_quietly(sample_slide):
    cli = Path(sys.executable).with_name("napari-hila")
    proc = subprocess.Popen(
        [str(cli), "info", str(sample_slide)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # `| head` that has already exited
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert proc.returncode in (0, 141)


def test_predict_into_unwritable_out_fails_before_any_work(sample_slide, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    from napari_hila.commands import predict

    monkeypatch.setattr(predict, "predict_slide", lambda *a, **k: pytest.fail("did the work"))
    code = main(["predict", str(sample_slide), "--out", str(out)])
    assert code == 2


def test_predict_replaces_its_own_stale_outputs_and_keeps_others(
    sample_slide, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "heatmap_patch_99_from-another-model.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    cache = tmp_path / "cache"
    assert main(["predict", str(sample_slide), "--out", str(out), "--cache", str(cache)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "heatmap_patch_99_from-another-model.png" not in names and "notes.txt" in names
    assert "result.json" in names and any(n.startswith("heatmap_") for n in names)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # a failure half-way through writing leaves the folder as it was, and no staging folder
    from napari_hila import export

    def fail_after_one_file(result, folder, **kwargs):
        (Path(folder) / "result.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "km.png"))

    monkeypatch.setattr(export, "write_prediction_outputs", fail_after_one_file)
    code = main(["predict", str(sample_slide), "--out", str(out), "--cache", str(cache)])
    assert code == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_interrupted_cluster_run_cancels_its_tasks(tmp_path, monkeypatch, capsys):
    from napari_hila.features import extract_many

    class Future:
        def __init__(self, finished):
            self.finished = finished

        def done(self):
            return self.finished

    class Client:
        cancelled: list = []

        def __init__(self):
            self.submitted = 0

        def submit(self, *args, **kwargs):
            self.submitted += 1
            return Future(self.submitted == 1)

        def cancel(self, futures, force=False):
            Client.cancelled.extend(futures)

    def interrupted(futures, slides, rows, on_row):
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_many, "_collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_many.extract_on_cluster(["a.svs", "b.svs", "c.svs"], tmp_path, {}, Client())
    assert len(Client.cancelled) == 2 and not any(f.done() for f in Client.cancelled)
    assert "cancelled 2 unfinished slide tasks" in capsys.readouterr().err


def test_write_failures_name_the_folder(tmp_path):
    from napari_hila.io_utils import check_writable_folder, write_failure

    for code, says in ((errno.EROFS, "read-only"), (errno.EACCES, "no permission")):
        message = str(write_failure(tmp_path, OSError(code, os.strerror(code)), "outputs"))
        assert message.startswith(f"{tmp_path}: cannot write outputs") and says in message
    assert check_writable_folder(tmp_path / "new") == tmp_path / "new"
    assert [p.name for p in (tmp_path / "new").iterdir()] == []


FULL_DISK_CLI = """
import resource, sys
from napari_hila.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow  # ~14 s: two child processes (the feature cache's full-disk test is not slow)
def test_train_and_predict_on_a_full_disk_exit_with_one_line(sample_slide, tmp_path):
    """A 256 KB file-size limit: train's first checkpoint and predict's thumbnail exceed it."""
    from test_training import write_synthetic_cohort

    csv_path, feats = write_synthetic_cohort(tmp_path, n_patients=6)
    run = tmp_path / "run"
    train = ["train", "--cohort", str(csv_path), "--features", str(feats), "--out", str(run)]
    train += ["--model", "abmil", "--folds", "2", "--epochs", "1", "--quiet"]
    out = tmp_path / "pred"
    predict = ["predict", str(sample_slide), "--out", str(out), "--cache", str(tmp_path / "c")]
    for argv, folder in ((train, run), ([*predict, "--quiet"], out)):
        done = subprocess.run(
            [sys.executable, "-c", FULL_DISK_CLI, str(2**18), *argv],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).parent,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {folder}") and "file size limit" in last, last
        assert "Traceback" not in done.stderr
        leftovers = [
            p.name for p in folder.rglob("*") if p.name.startswith(".") or "ckpt" in p.name
        ]
        assert not leftovers and not list(folder.glob("*.checkpoint.pt"))
    assert not list(out.iterdir())  # predict wrote none of its outputs
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]
