"""The model file (weights + card): what training writes and prediction reads.

One module both sides use, below them in the layers (models -> modelfile ->
training / inference), so prediction never imports the training code.
"""

from napari_hila.modelfile.files import (
    CARD_KEYS,
    CARD_NAME,
    WEIGHTS_NAME,
    LoadedModel,
    check_features_match,
    config_for_loading,
    config_to_dict,
    load_model,
    prompt_statistics,
    read_card,
    save_model,
)
from napari_hila.modelfile.model_card import CohortRecord, EncoderInfo, GridSettings, ModelCard

__all__ = [
    "CohortRecord",
    "EncoderInfo",
    "GridSettings",
    "ModelCard",
    "CARD_KEYS",
    "CARD_NAME",
    "WEIGHTS_NAME",
    "LoadedModel",
    "check_features_match",
    "config_for_loading",
    "config_to_dict",
    "load_model",
    "prompt_statistics",
    "read_card",
    "save_model",
]
