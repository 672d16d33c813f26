"""Optional model capabilities are Protocols (models/base.py), and callers dispatch on them."""

from __future__ import annotations

import numpy as np
import pytest
from _model_fixtures import one_torch_thread  # noqa: F401  (one torch thread: tiny models)

from napari_hila.models import available_models, build_model, get_model_spec
from napari_hila.models.base import (
    ExplainsAgainstBaseline,
    InitialisedFromData,
    MakesBenchBatch,
    NeedsBenchConfig,
    ReadsOwnInputs,
    UsesPrompts,
)

CAPABILITIES = {
    UsesPrompts: ("prompt_levels", "set_prompt_embeddings", "prompt_statistics"),
    ReadsOwnInputs: ("batch_from_bags", "card_inputs"),
    ExplainsAgainstBaseline: ("fit_explanation_baseline",),
    InitialisedFromData: ("initialise_from_data",),
    MakesBenchBatch: ("bench_batch",),
    NeedsBenchConfig: ("bench_config",),
}


@pytest.mark.parametrize(
    "name", sorted({get_model_spec(n).model_cls for n in available_models()}, key=str)
)
def test_a_class_has_a_capability_exactly_when_it_defines_all_its_methods(name):
    cls = name
    for protocol, methods in CAPABILITIES.items():
        defines = all(callable(getattr(cls, m, None)) for m in methods)
        assert isinstance(cls, protocol) == defines, (cls.__name__, protocol.__name__)


def test_the_models_declare_what_they_can_do():
    def caps(model_name):
        cls = get_model_spec(model_name).model_cls
        return {p.__name__ for p in CAPABILITIES if isinstance(cls, p)}

    assert caps("hila") >= {"UsesPrompts", "ExplainsAgainstBaseline", "InitialisedFromData"}
    assert "ReadsOwnInputs" not in caps("hila")
    assert caps("vptsurv") >= {"ReadsOwnInputs", "MakesBenchBatch", "NeedsBenchConfig"}
    assert caps("abmil") == set() and "MakesBenchBatch" in caps("crossfusion")
    # the spec's inputs and the capability agree: a model reading its own inputs says so
    for name in available_models():
        spec = get_model_spec(name)
        assert isinstance(spec.model_cls, ReadsOwnInputs) == (spec.inputs == "tiles"), name


def test_the_trainer_installs_prompts_only_into_prompt_models():
    from napari_hila.training.trainer import install_prompt_embeddings, make_batch

    abmil = build_model("abmil", patch_dim=4, attention_dim=4)
    install_prompt_embeddings(abmil, None)  # no prompts needed, nothing asked
    hila = build_model("hila", patch_dim=4, region_dim=4, text_dim=3)
    with pytest.raises(ValueError, match="no 'patch' level"):
        install_prompt_embeddings(hila, {"levels": {}})
    levels = {
        level: {"embeddings": np.eye(len(hila.prompt_names(level)), 3)}
        for level in hila.prompt_levels()
    }
    install_prompt_embeddings(hila, {"levels": levels})
    stored = hila.prompt_embeddings_patch.numpy()
    np.testing.assert_allclose(stored, np.eye(len(hila.prompt_names("patch")), 3), atol=1e-6)

    class OwnBatches(type(abmil)):
        def batch_from_bags(self, bags, epoch=0, train=True):
            return ("own", list(bags), epoch, train)

        def card_inputs(self):
            return {}

    own = OwnBatches(abmil.config)
    assert make_batch(own, ["a", "b"], None, None, epoch=3, train=False) == (
        "own",
        ["a", "b"],
        3,
        False,
    )
