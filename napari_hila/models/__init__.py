"""Survival models: one registry, one batch type, one output type.

Importing this package imports every model module, which registers its
models; look them up with :func:`build_model` / :func:`get_model_spec`.
"""

# Model modules: imported for their registrations.
from napari_hila.models import baselines, crossfusion, hila, vptsurv  # noqa: F401
from napari_hila.models.base import SurvivalOutput, survival_from_logits
from napari_hila.models.batch import SlideBatch, collate
from napari_hila.models.registry import (
    ModelSpec,
    add_variant,
    available_models,
    build_model,
    get_model_spec,
    register_model,
)
from napari_hila.models.sinkhorn import SinkhornResult, sinkhorn_log

__all__ = [
    "ModelSpec",
    "SinkhornResult",
    "SlideBatch",
    "SurvivalOutput",
    "add_variant",
    "available_models",
    "build_model",
    "collate",
    "get_model_spec",
    "register_model",
    "sinkhorn_log",
    "survival_from_logits",
]
