"""Encoders: one registry of vision and text encoders (see :mod:`.registry`)."""

from napari_hila.encoders.registry import (
    EncoderError,
    EncoderSpec,
    TextEncoder,
    VisionEncoder,
    available_encoders,
    encoder_version,
    get_encoder_spec,
    get_text_encoder,
    get_vision_encoder,
    register_encoder,
)

__all__ = [
    "EncoderError",
    "EncoderSpec",
    "TextEncoder",
    "VisionEncoder",
    "available_encoders",
    "encoder_version",
    "get_encoder_spec",
    "get_text_encoder",
    "get_vision_encoder",
    "register_encoder",
]
