"""One model registry: a name maps to a config dataclass and a model class.

Training, prediction and the viewer look models up here and never branch on
the model's name. A model module registers itself with ``@register_model``;
``napari_hila.models`` imports every model module so the registry is full.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from napari_hila.errors import ModelConfigError


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What the registry knows about one model name (built by keyword)."""

    name: str
    model_cls: type[torch.nn.Module]
    config_cls: type
    description: str
    # What the model consumes: "features" (cached patch/region features),
    # "multiscale" (features at 5x/10x/20x) or "tiles" (raw tiles, end to end).
    inputs: str = "features"
    # Config overrides applied on top of the config class defaults (variants).
    overrides: tuple[tuple[str, Any], ...] = ()

    def make_config(self, **values: Any):
        merged = dict(self.overrides)
        merged.update(values)
        known = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            known_list = ", ".join(sorted(known))
            raise ModelConfigError(
                f"model {self.name!r} has no setting(s) {', '.join(unknown)}; its settings are: {known_list}"
            )
        try:
            return self.config_cls(**merged)
        except (TypeError, ValueError) as err:
            raise ModelConfigError(f"model {self.name!r}: {err}") from err


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    config_cls: type,
    description: str,
    inputs: str = "features",
    **overrides: Any,
) -> Callable[[type[torch.nn.Module]], type[torch.nn.Module]]:
    """Class decorator: register ``cls`` under ``name`` (call again for variants)."""

    def decorator(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
        add_variant(name, cls, config_cls, description, inputs, **overrides)
        return cls

    return decorator


def add_variant(
    name: str,
    model_cls: type[torch.nn.Module],
    config_cls: type,
    description: str,
    inputs: str = "features",
    **overrides: Any,
) -> None:
    """Register an extra name for an existing class with some settings fixed."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is registered twice")
    _REGISTRY[name] = ModelSpec(
        name=name,
        model_cls=model_cls,
        config_cls=config_cls,
        description=description,
        inputs=inputs,
        overrides=tuple(overrides.items()),
    )


def get_model_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelConfigError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None


def available_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def build_model(name: str, **config_values: Any) -> torch.nn.Module:
    """Instantiate model ``name`` with its config defaults overridden by ``config_values``."""
    spec = get_model_spec(name)
    config = spec.make_config(**config_values)
    try:
        return spec.model_cls(config)
    except ModelConfigError:
        raise
    except ValueError as err:  # settings validated by the model itself
        raise ModelConfigError(f"model {name!r}: {err}") from err


def _ensure_loaded() -> None:
    # Importing the package imports every model module, which registers them.
    import napari_hila.models  # noqa: F401
