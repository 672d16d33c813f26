"""Which text encoder to embed prompts with, given the vision encoder of the features.

Prompt alignment means something only when the prompt embeddings and the tile
features live in one space. A vision-language pair shares one by training
(CONCH, PLIP, QuiltNet, CLIP: the image embedding and the text tower of one
checkpoint); the weight-free ``hila-descriptor`` shares one with
``descriptor-vocabulary`` by construction (its words are weights on the
descriptor's named dimensions). MiniLM shares a space with no vision encoder:
it is the fallback, and the model then has to learn what each prompt's
direction means.
"""

from __future__ import annotations

__all__ = [
    "AUTO",
    "PAIRED_TEXT_ENCODERS",
    "FALLBACK_TEXT_ENCODER",
    "choose_text_encoder",
    "shares_space",
    "pairing_warning",
]

AUTO = "auto"
FALLBACK_TEXT_ENCODER = "minilm"
#: vision encoder -> the text encoder that shares its space (its own text tower, or the
#: weight-free vocabulary of the descriptor)
PAIRED_TEXT_ENCODERS = {
    "hila-descriptor": "descriptor-vocabulary",
    "conch": "conch-text",
    "plip": "plip-text",
    "quiltnet": "quiltnet-text",
    "clip": "clip-text",
}


def choose_text_encoder(vision_encoder: str | None) -> tuple[str, str]:
    """``(text encoder name, one-line reason)`` for ``--text-encoder auto``."""
    paired = PAIRED_TEXT_ENCODERS.get(vision_encoder or "")
    if paired and paired.endswith("-text"):
        return paired, (
            f"the patch features are {vision_encoder}'s image embeddings and {paired} is the "
            "same model's text tower, trained into that space (its weights are found like the "
            "image tower's: --text-weights or the encoders config)"
        )
    if paired:
        return paired, (
            f"the patch features come from {vision_encoder!r} and {paired!r} embeds prompt "
            "words in that same space, so a prompt's name says what it measures"
        )
    source = f"{vision_encoder!r}" if vision_encoder else "an unknown encoder"
    return FALLBACK_TEXT_ENCODER, (
        f"the patch features come from {source}, which has no weight-free text partner; "
        f"{FALLBACK_TEXT_ENCODER!r} shares a space with no vision encoder, so the model learns "
        "what each prompt's direction means (for a vision-language pair, give the prompt set an "
        "embeddings file from its text tower)"
    )


def shares_space(vision_encoder: str | None, text_encoder: str | None) -> bool:
    """True when tile features and prompt embeddings come from one vision-language space.

    The text side is named as the vision encoder (precomputed embeddings of
    that model), as it plus ``-text`` (a pair's text tower), or is its paired
    weight-free encoder. ``text_encoder`` may carry a version in brackets.
    """
    if not vision_encoder or not text_encoder:
        return False
    text = str(text_encoder).split(" (")[0].strip()
    vision = str(vision_encoder).strip()
    return text in (vision, f"{vision}-text", PAIRED_TEXT_ENCODERS.get(vision))


def pairing_warning(vision_encoder: str | None, text_encoder: str | None) -> str | None:
    """A warning when the prompts come from outside the space of the features' own pair.

    None when they share one, or when the vision encoder has no text partner (then
    nothing better exists and :func:`choose_text_encoder` already says so).
    """
    paired = PAIRED_TEXT_ENCODERS.get(vision_encoder or "")
    if not paired or shares_space(vision_encoder, text_encoder):
        return None
    return (
        f"warning: the patch features come from {vision_encoder!r} but the prompts are embedded "
        f"with {str(text_encoder).split(' (')[0]!r}, which does not share their space, so the "
        f"alignment starts from nothing; use --text-encoder {paired} (or leave it at auto)"
    )
