"""The package's layers import downward only (docs/ARCHITECTURE.md, "Layers").

Every module's imports of ``napari_hila`` are read from its source (``ast``), at
module level and inside functions alike, and each must land in the module's own
layer or a lower one. A lazy import inside a function hides a cycle from Python
but not from this test. Each module is also imported alone in a fresh
interpreter, so a cycle that only bites in one import order is caught.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import napari_hila

PACKAGE_DIR = Path(napari_hila.__file__).parent

#: Layer of each package or module, lowest first; the longest matching prefix wins.
#: 0 holds what every layer may use: errors, file writes, devices, the bundled
#: resources, the result types (models build an ``Explanation``, so ``results``
#: is plain data below them) and the survival maths.
LAYERS: dict[str, int] = {
    "napari_hila": 0,
    "napari_hila.errors": 0,
    "napari_hila.io_utils": 0,
    "napari_hila.devices": 0,
    "napari_hila.resources": 0,
    "napari_hila.results": 0,
    "napari_hila.survival": 0,
    # the cohort CSV finds each slide's feature file by the feature cache's names
    "napari_hila.survival.cohort_csv": 2,
    "napari_hila.slides": 1,
    "napari_hila.features": 2,
    "napari_hila.encoders": 2,
    "napari_hila.prompts": 2,
    "napari_hila.models": 3,
    "napari_hila.modelfile": 3,
    "napari_hila.training": 4,
    "napari_hila.predict": 4,
    "napari_hila.prediction_job": 4,
    "napari_hila.overlays": 5,
    "napari_hila.plotting": 5,
    "napari_hila.export": 6,
    # many slides' prediction folders: predict, then export's folder writer
    "napari_hila.predict_many": 6,
    "napari_hila._qt": 6,
    "napari_hila._reader": 6,
    "napari_hila._sample_data": 6,
    "napari_hila.commands": 6,
    "napari_hila.cli": 6,
    "napari_hila.bench": 6,
    "napari_hila.demo": 6,
}
LAYER_NAMES = [
    "base",
    "slides",
    "features",
    "models",
    "training/inference",
    "results",
    "exports and _qt",
]

#: Upward imports tolerated for a while, each with the way out (none today); the test
#: fails when a new one appears and when one of these is gone (so the list only shrinks).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def layer_of(module: str) -> int:
    """The layer of ``module`` (dotted name) by its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(f"{module}: no layer; add it to LAYERS here and to docs/ARCHITECTURE.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """Every ``napari_hila`` module ``path`` imports (anywhere in it), with its line.

    ``module`` is the dotted name ``path`` has in the package (by default from its place).
    """
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from napari_hila import overlays` imports the module napari_hila.overlays
            names = [f"{target}.{a.name}" for a in node.names]
            found += [(n if _is_module(n) else target, node.lineno) for n in names]
    return [(name, line) for name, line in found if name.split(".")[0] == "napari_hila"]


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE_DIR / relative).with_suffix(".py").is_file() or (
        PACKAGE_DIR / relative / "__init__.py"
    ).is_file()


SOURCES = sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def upward_imports() -> dict[tuple[str, str], str]:
    """``(importer, imported) -> "file:line"`` for every import into a higher layer."""
    upward = {}
    for path in SOURCES:
        importer = module_name(path)
        for imported, line in package_imports(path):
            if layer_of(imported) > layer_of(importer):
                where = f"{path.relative_to(PACKAGE_DIR.parent)}:{line}"
                upward.setdefault((importer, _owner(imported)), where)
    return upward


def _owner(module: str) -> str:
    """``module`` cut to the :data:`LAYERS` entry that places it."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return ".".join(parts[:end])
    return module


def test_every_module_has_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


def test_imports_go_downward_only():
    upward = upward_imports()
    new = {
        f"{where}: {a} ({LAYER_NAMES[layer_of(a)]}) imports {b} ({LAYER_NAMES[layer_of(b)]})"
        for (a, b), where in upward.items()
        if (a, b) not in KNOWN_UPWARD
    }
    assert not new, "upward imports:\n" + "\n".join(sorted(new))
    gone = KNOWN_UPWARD - set(upward)
    assert not gone, f"fixed, remove from KNOWN_UPWARD: {sorted(gone)}"


def test_checker_sees_imports_inside_functions(tmp_path):
    """The check is not vacuous: lazy and relative upward imports in a function are found."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import numpy\n"
        "from napari_hila.features.store import SlideFeatures\n"
        "def f():\n"
        "    from napari_hila.training.crossval import run_training\n"
        "    from .. import overlays\n"
    )
    found = package_imports(probe, module="napari_hila.models.probe")
    assert found == [
        ("napari_hila.features.store", 2),
        ("napari_hila.training.crossval", 4),
        ("napari_hila.overlays", 5),
    ]
    assert [layer_of(name) for name, _ in found] == [2, 4, 5]
    assert layer_of("napari_hila.models.probe") == 3


#: Third-party libraries loaded once before the children fork, so each child
#: pays only for its own napari_hila modules (a whole interpreter per module
#: would cost minutes here).
PRELOAD = (
    "numpy",
    "torch",
    "scipy",
    "h5py",
    "dask.array",
    "zarr",
    "tifffile",
    "safetensors",
    "numba",
    "PIL.Image",
    "filelock",
    "matplotlib.pyplot",
    "openslide",
)

_ISOLATED_IMPORTS = """
import importlib, os, sys, traceback
for lib in sys.argv[1].split(","):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
failed = []
for name in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:  # child: no napari_hila module loaded yet
        assert not [m for m in sys.modules if m.startswith("napari_hila")]
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]):
        failed.append(name)
print("failed: " + ", ".join(failed) if failed else "ok")
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_each_module_imports_alone():
    """Every module imports on its own first, with no other napari_hila module loaded.

    Catches the cycles that lazy imports hide only in one import order, and any
    module that cannot stand alone. ``_qt`` modules need Qt and are left out.
    """
    modules = [module_name(p) for p in SOURCES if not module_name(p).startswith("napari_hila._qt")]
    run = subprocess.run(
        [sys.executable, "-c", _ISOLATED_IMPORTS, ",".join(PRELOAD), *modules],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert run.stdout.strip() == "ok"
