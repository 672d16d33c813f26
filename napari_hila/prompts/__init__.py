"""Prompt sets: survival-related pathology attributes per cancer type, as YAML.

A prompt set file looks like::

    cancer_type: BRCA
    description: Breast invasive carcinoma
    patch:            # cellular findings, one 256 px patch at 20x
      - name: Nuclear pleomorphism        # short label shown in the viewer
        text: Tumour cells with large ...  # what the text encoder embeds
    region:           # architecture, one 4096 px region
      - name: ...
        text: ...

Sets ship in this folder (``<type>.yaml``); a user adds or overrides one by
putting a file in ``~/.napari-hila/prompts`` (or ``$NAPARI_HILA_PROMPTS``), or
passes a path. A malformed file raises :class:`PromptSetError` with its line.

A set may bring its own text embeddings, computed elsewhere (e.g. with a
pathology text tower this machine does not have)::

    embeddings: brca_conch.npz      # next to the YAML; arrays "patch" and "region",
    embedding_encoder: conch-text   # one row per prompt in the order above

Training then uses those rows (unit-normalised) and needs no text encoder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from napari_hila.errors import PromptSetError

LEVELS = ("patch", "region")
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Prompt:
    """One attribute: a short ``name`` for people and the ``text`` that is embedded."""

    name: str
    text: str


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one cancer type; ``embeddings`` (per level, K x D) when the file has them."""

    cancer_type: str
    patch: list[Prompt]
    region: list[Prompt]
    description: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)
    embedding_encoder: str | None = None

    def level(self, level: str) -> list[Prompt]:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
        return self.patch if level == "patch" else self.region

    def names(self, level: str) -> list[str]:
        return [p.name for p in self.level(level)]

    def texts(self, level: str) -> list[str]:
        return [p.text for p in self.level(level)]


def prompt_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml``, first match wins (user folders first)."""
    dirs = []
    if os.environ.get("NAPARI_HILA_PROMPTS"):
        dirs.append(Path(os.environ["NAPARI_HILA_PROMPTS"]).expanduser())
    dirs.append(Path.home() / ".napari-hila" / "prompts")
    dirs.append(_PACKAGE_DIR)
    return dirs


def available_prompt_sets() -> list[str]:
    """Names of all prompt sets found (shipped and the user's)."""
    names = set()
    for folder in prompt_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def find_prompt_file(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise PromptSetError(f"{path}: prompt set file not found")
        return path
    for folder in prompt_dirs():
        for candidate in (
            folder / f"{name_or_path}.yaml",
            folder / f"{str(name_or_path).upper()}.yaml",
        ):
            if candidate.is_file():
                return candidate
    known = ", ".join(available_prompt_sets())
    raise PromptSetError(
        f"no prompt set {str(name_or_path)!r}; known sets: {known}; or pass a path to a YAML file"
    )


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _prompts(path: Path, node: yaml.Node, level: str) -> list[Prompt]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise PromptSetError(
            f"{path}, line {_line(node)}: '{level}' must be a non-empty list of prompts"
        )
    out, seen = [], {}
    for item in node.value:
        if not isinstance(item, yaml.MappingNode):
            raise PromptSetError(
                f"{path}, line {_line(item)}: each {level} prompt needs 'name:' and 'text:' keys"
            )
        fields = {k.value: v for k, v in item.value}
        for key in ("name", "text"):
            value = fields.get(key)
            if not isinstance(value, yaml.ScalarNode) or not str(value.value).strip():
                raise PromptSetError(
                    f"{path}, line {_line(item)}: {level} prompt is missing a non-empty '{key}:'"
                )
        name = str(fields["name"].value).strip()
        if name in seen:
            raise PromptSetError(
                f"{path}, line {_line(item)}: {level} prompt name {name!r} repeats line {seen[name]}; "
                "names must be unique within a level"
            )
        seen[name] = _line(item)
        out.append(Prompt(name, " ".join(str(fields["text"].value).split())))
    return out


def load_prompt_set(name_or_path: str | os.PathLike) -> PromptSet:
    """Load a prompt set by cancer type (``"BRCA"``) or from a YAML path."""
    path = find_prompt_file(name_or_path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}" if mark else ""
        raise PromptSetError(f"{path}{where}: not valid YAML ({err.problem or err})") from err
    except UnicodeDecodeError as err:
        raise PromptSetError(f"{path}: not a UTF-8 text file") from err
    if not isinstance(root, yaml.MappingNode):
        line = _line(root) if root is not None else 1
        raise PromptSetError(f"{path}, line {line}: expected keys cancer_type, patch and region")
    top = {k.value: v for k, v in root.value}
    for key in ("patch", "region"):
        if key not in top:
            raise PromptSetError(
                f"{path}: missing '{key}:' list (see napari_hila/prompts/BRCA.yaml)"
            )
    plain = yaml.safe_load(path.read_text(encoding="utf-8"))
    known = ("cancer_type", "description", "embeddings", "embedding_encoder", *LEVELS)
    extra = {k: v for k, v in plain.items() if k not in known}
    prompts = {level: _prompts(path, top[level], level) for level in LEVELS}
    embeddings, encoder = _stored_embeddings(path, plain, {k: len(v) for k, v in prompts.items()})
    return PromptSet(
        cancer_type=str(plain.get("cancer_type") or path.stem),
        patch=prompts["patch"],
        region=prompts["region"],
        description=str(plain.get("description", "")),
        source=str(path),
        extra=extra,
        embeddings=embeddings,
        embedding_encoder=encoder,
    )


_EMBEDDINGS_FIX = (
    "write it with numpy.savez(FILE, patch=P, region=R): P is (patch prompts x D) and R "
    "(region prompts x D), one finite row per prompt in the YAML's order, the same D for both"
)


def _stored_embeddings(
    path: Path, plain: Mapping[str, object], counts: Mapping[str, int]
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The ``embeddings:`` file of a prompt set, checked against its prompts (or None, None)."""
    name, encoder = plain.get("embeddings"), plain.get("embedding_encoder")
    if name is None:
        if encoder is not None:
            raise PromptSetError(
                f"{path}: 'embedding_encoder:' is given without 'embeddings:'; add "
                "'embeddings: FILE.npz' (the precomputed rows) or remove 'embedding_encoder:'"
            )
        return None, None
    if not isinstance(name, str) or not name.strip():
        raise PromptSetError(f"{path}: 'embeddings:' must be a file name (FILE.npz, next to it)")
    if not isinstance(encoder, str) or not encoder.strip():
        raise PromptSetError(
            f"{path}: 'embeddings: {name}' needs 'embedding_encoder: NAME', the text encoder "
            "that produced them (shown on the model card)"
        )
    npz = (path.parent / name.strip()).expanduser()

    def fail(problem: str) -> PromptSetError:
        return PromptSetError(f"{path}: embeddings {npz}: {problem}; {_EMBEDDINGS_FIX}")

    if not npz.is_file():
        raise fail("file not found (the path is relative to the YAML file)")
    try:
        archive = np.load(npz, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # not numpy data, truncated, or pickled
        raise fail(f"not a readable .npz archive ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise fail("a single .npy array, not an .npz archive of named arrays")
    with archive:
        missing = [level for level in LEVELS if level not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "none"
            raise fail(f"no array {' or '.join(map(repr, missing))} (arrays found: {found})")
        try:
            arrays = {level: archive[level] for level in LEVELS}
        except (OSError, ValueError, EOFError) as err:  # object arrays, corrupt members
            raise fail(f"arrays unreadable without unpickling or corrupt ({err})") from err
    for level, values in arrays.items():
        if values.ndim != 2:
            raise fail(f"{level!r} has shape {values.shape}, expected 2-D (prompts x D)")
        if values.shape[0] != counts[level]:
            raise fail(
                f"{level!r} has {values.shape[0]} rows but the YAML has {counts[level]} prompts"
            )
        if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
            raise fail(f"{level!r} holds {values.dtype} values, expected real numbers")
        if not np.isfinite(values).all():
            raise fail(f"{level!r} holds NaN or infinite values")
        if not (np.abs(values).sum(axis=1) > 0).all():
            raise fail(f"{level!r} has an all-zero row, which has no direction")
    widths = {level: values.shape[1] for level, values in arrays.items()}
    if len(set(widths.values())) != 1:
        raise fail(f"'patch' is {widths['patch']} wide but 'region' {widths['region']}")
    return {k: v.astype(np.float32) for k, v in arrays.items()}, encoder.strip()


def stored_embeddings(prompt_set: PromptSet) -> dict[str, np.ndarray] | None:
    """The set's precomputed embeddings as unit rows (float32), or None when it has none."""
    if prompt_set.embeddings is None:
        return None
    out = {}
    for level in LEVELS:
        values = np.asarray(prompt_set.embeddings[level], np.float64)
        out[level] = (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)
    return out


def embed_prompt_set(prompt_set: PromptSet, text_encoder) -> dict[str, np.ndarray]:
    """Embed every prompt: ``{"patch": (Kp, D), "region": (Kr, D)}`` float32."""
    return {
        lvl: np.asarray(text_encoder.encode(prompt_set.texts(lvl)), np.float32) for lvl in LEVELS
    }


def prompt_set_to_dict(prompt_set: PromptSet) -> Mapping[str, object]:
    """Plain data (for a model card): cancer type and per-level names and texts."""
    return {
        "cancer_type": prompt_set.cancer_type,
        **{lvl: {"names": prompt_set.names(lvl), "texts": prompt_set.texts(lvl)} for lvl in LEVELS},
    }


__all__ = [
    "LEVELS",
    "Prompt",
    "PromptSet",
    "available_prompt_sets",
    "embed_prompt_set",
    "load_prompt_set",
    "prompt_dirs",
    "prompt_set_to_dict",
    "stored_embeddings",
]
