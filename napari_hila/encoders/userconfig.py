"""Where a user's encoder weights are: a small YAML file, so nobody types paths twice.

``$NAPARI_HILA_ENCODERS`` names the file; without it ``~/.napari-hila/encoders.yaml``
is read when it exists. Each entry maps an encoder name to its weights, either
as a path or as a mapping with ``weights`` and, for text towers that need one,
``tokenizer``; relative paths are relative to the file::

    conch:
      weights: /models/conch/pytorch_model.bin
      tokenizer: /src/CONCH/conch/open_clip_custom/tokenizers/conch_byte_level_bpe_uncased.json
    quiltnet: /models/quiltnet/open_clip_pytorch_model.bin
    plip: /models/plip          # a transformers CLIPModel directory
    uni: /models/uni/pytorch_model.bin

A text tower without its own entry (``conch-text``, ``quiltnet-text``, ...)
uses its vision encoder's entry (``conch``, ``quiltnet``): one file holds both
towers. ``--weights`` / ``--text-weights`` on the command line win over the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_hila.errors import HilaError

ENV = "NAPARI_HILA_ENCODERS"
DEFAULT = Path("~/.napari-hila/encoders.yaml")
FIELDS = ("weights", "tokenizer")


class EncoderConfigError(HilaError):
    """The encoders config file cannot be read or says something it should not."""


def config_path() -> Path:
    """The encoders config file in use (it need not exist)."""
    return Path(os.environ.get(ENV) or DEFAULT).expanduser()


def read_config(path: Path | None = None) -> dict[str, dict[str, Path]]:
    """``{encoder: {"weights": Path, "tokenizer": Path}}`` from the config file ({} if absent)."""
    import yaml

    path = Path(path) if path is not None else config_path()
    if not path.is_file():
        if os.environ.get(ENV) and path == config_path():
            raise EncoderConfigError(
                f"{path}: encoders config not found ({ENV} names it); fix the path or unset {ENV}"
            )
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise EncoderConfigError(f"{path}: not valid YAML{where}: {err}") from None
    if not isinstance(data, dict):
        raise EncoderConfigError(
            f"{path}: expected a mapping of encoder names to weight paths, e.g. "
            "'conch: /models/conch/pytorch_model.bin'"
        )
    out: dict[str, dict[str, Path]] = {}
    for name, entry in data.items():
        if isinstance(entry, str):
            entry = {"weights": entry}
        if not isinstance(entry, dict) or not set(entry) <= set(FIELDS):
            raise EncoderConfigError(
                f"{path}: entry {name!r} must be a path or a mapping with {' and/or '.join(FIELDS)}"
            )
        out[str(name)] = {
            key: (path.parent / Path(str(value)).expanduser()).resolve()
            for key, value in entry.items()
            if value
        }
    return out


def configured(name: str, field: str = "weights") -> Path | None:
    """The configured ``field`` for encoder ``name`` (a text tower falls back to its pair's)."""
    config = read_config()
    for key in (name, name.removesuffix("-text")):
        if field in config.get(key, {}):
            return config[key][field]
    return None
