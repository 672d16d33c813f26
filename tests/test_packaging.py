"""The wheel carries what a user needs: built from the source, installed into a
fresh environment away from the checkout, `napari-hila info` and `napari-hila
demo --no-viewer` run on the sample slide found inside the installed package.

The fresh environment sees this environment's third-party packages through a
.pth line (so torch is not downloaded again), never the checkout: a .pth line
adds a folder to sys.path but does not run the .pth files inside it, so the
editable install's import hook stays out. About 30 s on 2 busy cores (most of
it the first descriptor compile in the new environment), so it is in the
default suite and CI's `make test` runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what a source distribution holds; the rest of the checkout must not matter
SOURCE_ITEMS = ("napari_hila", "pyproject.toml", "README.md", "LICENSE")
SHIPPED = (
    "napari_hila/resources/CMU-1-Small-Region.svs",
    "napari_hila/resources/ATTRIBUTION.md",
    "napari_hila/resources/demo_model/card.json",
    "napari_hila/resources/demo_model/model.safetensors",
    "napari_hila/prompts/DEMO.yaml",
    "napari_hila/napari.yaml",
)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    source = tmp / "source"
    source.mkdir()
    for item in SOURCE_ITEMS:
        origin = REPO / item
        if origin.is_dir():
            shutil.copytree(origin, source / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, source / item)
    dist = tmp / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps"]
    if importlib.util.find_spec("setuptools") is not None:
        pip_wheel.append("--no-build-isolation")  # the dev extra has it: no download
    _run([*pip_wheel, "-q", "-w", str(dist), str(source)], tmp, env)
    shutil.rmtree(source)  # nothing of the source tree is left to import from
    (wheel,) = dist.glob("napari_hila-*.whl")
    return wheel


def _fresh_environment(tmp: Path, wheel: Path, env: dict[str, str]) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env
        ).stdout.strip()
    )
    (purelib / "_hila_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip_install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    _run([*pip_install, "-q", str(wheel)], tmp, env)
    return venv


def test_installed_wheel_runs_info_and_demo_on_its_own_sample(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NAPARI_HILA_CACHE"] = str(tmp_path / "cache")
    env.pop("DISPLAY", None)

    wheel = _build_wheel(tmp_path, env)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "napari_hila/resources.py" not in names  # no stale build output

    venv = _fresh_environment(tmp_path, wheel, env)
    where = tmp_path / "elsewhere"
    where.mkdir()
    located = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import napari_hila, napari_hila.resources as r; "
            "print(napari_hila.__file__); print(r.sample_slide_path()); print(r.demo_model_path())",
        ],
        where,
        env,
    ).stdout.split()
    package, sample, model = (Path(line) for line in located)
    for path in (package, sample, model):
        assert path.is_relative_to(venv), f"{path} is not from the installed wheel"
        assert not path.is_relative_to(REPO)

    cli = str(venv / "bin" / "napari-hila")
    info = json.loads(_run([cli, "info", str(sample)], where, env).stdout)
    assert info["dimensions"] == [2220, 2967]

    out = where / "demo-output"
    demo = _run([cli, "demo", "--no-viewer", "--out", str(out)], where, env)
    assert "risk" in demo.stdout.lower()
    result = json.loads((out / "result.json").read_text())
    assert Path(result["model_path"]).is_relative_to(venv)
    assert list(out.glob("*.png")), "the demo wrote no maps"
