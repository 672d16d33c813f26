"""Vision-language pairs from the files their owners distribute: one shared space.

- CONCH (CoCa, one state dict with ``visual.`` and ``text.`` keys): the image
  embedding is the trunk's normed tokens through ``attn_pool_contrast``,
  ``ln_contrast`` and ``proj_contrast``; the text embedding is ``text.``'s class
  token through ``ln_final`` and ``text_projection``; the tokenizer is the
  byte-level BPE JSON of CONCH's code (``conch_byte_level_bpe_uncased.json``).
  The trunk alone (class token, 768-d) stays available as ``conch-trunk``.
- open_clip CLIP (QuiltNet, OpenAI CLIP: ``visual.*`` and, top level, the text
  tower ``token_embedding``, ``positional_embedding``, ``transformer.*``,
  ``ln_final``, ``text_projection``): the text embedding at the end-of-text
  token; the tokenizer is CLIP's BPE (``vocab.json`` + ``merges.txt``, or
  ``tokenizer.json``) beside the weights, as the hub repositories ship it.
- transformers CLIP directories (PLIP, CLIP) go through transformers' own
  ``CLIPModel`` (:class:`napari_hila.encoders.text.CLIPTextEncoder`).

Every checkpoint is read without unpickling (:func:`checkpoints.read_state_dict`)
and every key is accounted for: a missing or unexpected key is an
:class:`EncoderError` naming it and the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from napari_hila.encoders.checkpoints import (
    StateDict,
    build_vit,
    model_settings,
    read_state_dict,
    weights_digest,
)
from napari_hila.encoders.registry import EncoderError
from napari_hila.encoders.towers import ConchVisual, TextConfig, TextTransformer
from napari_hila.encoders.vit import ViTEncoder

CONCH_TOKENIZER = "conch_byte_level_bpe_uncased.json"
CONCH_SPECIALS = ("<pad>", "<start_of_text>", "<end_of_text>")
#: keys of a CoCa checkpoint that no embedding uses (the captioning side)
CONCH_UNUSED = ("visual.attn_pool_caption.", "visual.ln_caption.", "text_decoder.", "logit_scale")
OPEN_CLIP_TEXT = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")


def _refuse_keys(source: str, missing: Sequence[str], unexpected: Sequence[str], what: str):
    def fmt(keys):
        keys = sorted(keys)
        return (", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")) or (
            "none"
        )

    raise EncoderError(
        f"{source}: not a {what} checkpoint as its owners distribute it. Missing keys: "
        f"{fmt(missing)}; unexpected keys: {fmt(unexpected)}. Give the original file "
        "(see the README's encoder section)"
    )


def _load_strict(
    module: torch.nn.Module, state: StateDict, source: str, what: str, prefix: str = ""
) -> None:
    """Load ``state`` refusing any missing or unexpected key (named with ``prefix``)."""
    expected = set(module.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        _refuse_keys(source, [prefix + k for k in missing], [prefix + k for k in unexpected], what)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise EncoderError(
            f"{source}: the weights' shapes do not fit a {what} checkpoint ({err}); these look "
            "like the weights of another model"
        ) from err


# -- CONCH ----------------------------------------------------------------------------------


def is_conch(state: StateDict) -> bool:
    return any(k.startswith("visual.attn_pool_contrast.") for k in state) or (
        "text.cls_emb" in state
    )


def build_conch_visual(state: StateDict, config: dict, source: str) -> ConchVisual:
    """CONCH's image tower up to its contrastive embedding, from the full CoCa state dict."""
    trunk_keys = {k: v for k, v in state.items() if k.startswith("visual.trunk.")}
    if not trunk_keys:
        _refuse_keys(source, ["visual.trunk.*"], [], "CONCH")
    settings = model_settings(config)
    trunk = build_vit(trunk_keys, config, source=source)
    head = {
        k.removeprefix("visual."): v
        for k, v in state.items()
        if k.startswith("visual.")
        and not k.startswith("visual.trunk.")
        and not k.startswith(CONCH_UNUSED)
    }
    pool_q = head.get("attn_pool_contrast.query")
    proj = head.get("proj_contrast")
    if pool_q is None or proj is None:
        missing = [
            k
            for k in ("visual.attn_pool_contrast.query", "visual.proj_contrast")
            if k.removeprefix("visual.") not in head
        ]
        _refuse_keys(source, missing, [], "CONCH")
    packed = head.pop("attn_pool_contrast.attn.in_proj_weight", None)
    if packed is not None:  # nn.MultiheadAttention packs q/k/v when the widths are equal
        for name, part in zip("qkv", packed.chunk(3), strict=True):
            head[f"attn_pool_contrast.attn.{name}_proj_weight"] = part
    model = ConchVisual(trunk, int(pool_q.shape[1]), int(settings.get("pool_heads", 8)))
    # the trunk is loaded and checked by build_vit; here the head's keys are
    head_module = torch.nn.ModuleDict(
        {
            "attn_pool_contrast": model.attn_pool_contrast,
            "ln_contrast": model.ln_contrast,
        }
    )
    head_state = {k: v for k, v in head.items() if k != "proj_contrast"}
    _load_strict(head_module, head_state, source, "CONCH", "visual.")
    if tuple(proj.shape) != tuple(model.proj_contrast.shape):
        raise EncoderError(
            f"{source}: visual.proj_contrast is {tuple(proj.shape)}, expected "
            f"{tuple(model.proj_contrast.shape)}; these look like the weights of another model"
        )
    with torch.no_grad():
        model.proj_contrast.copy_(proj)
    return model


def build_text_tower(state: StateDict, config: dict, source: str) -> tuple[TextTransformer, str]:
    """The text tower of a CONCH (``text.``) or open_clip (top-level) checkpoint."""
    if "text.token_embedding.weight" in state:
        layout, prefix = "CONCH", "text."
        text = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    elif "token_embedding.weight" in state:
        layout = "open_clip CLIP"
        text = {
            k: v for k, v in state.items() if k.startswith(OPEN_CLIP_TEXT) or k == "text_projection"
        }
    else:
        raise EncoderError(
            f"{source}: no text tower here (no 'text.token_embedding.weight' as in CONCH, no "
            "'token_embedding.weight' as in open_clip); give the full checkpoint, not the image "
            "tower alone"
        )
    settings = model_settings(config)
    try:
        vocab, width = text["token_embedding.weight"].shape
        context = int(text["positional_embedding"].shape[0])
        output_dim = int(text["text_projection"].shape[1])
    except KeyError as err:
        _refuse_keys(source, [f"{'text.' if layout == 'CONCH' else ''}{err.args[0]}"], [], layout)
    depth = 1 + max(
        (int(k.split(".")[2]) for k in text if k.startswith("transformer.resblocks.")), default=-1
    )
    cfg = TextConfig(
        vocab_size=int(vocab),
        context_length=context,
        width=int(width),
        layers=depth,
        heads=int(settings.get("text_heads") or max(1, int(width) // 64)),
        output_dim=output_dim,
        act="quick_gelu" if settings.get("quick_gelu") and layout != "CONCH" else "gelu",
        embed_cls="cls_emb" in text,
        pad_id=0,
        layer_scale="transformer.resblocks.0.ls_1.gamma" in text,
    )
    tower = TextTransformer(cfg)
    _load_strict(tower, text, source, layout, "text." if layout == "CONCH" else "")
    return tower.eval(), layout


# -- tokenizers -------------------------------------------------------------------------------


class BPETokenizer:
    """Texts -> fixed-length token ids: start + text + end, padded with ``pad``.

    A text longer than the length keeps its start and ends with the end token,
    as both CONCH's (max_length truncation) and open_clip's tokenisers do.
    """

    def __init__(self, backend, vocab_size: int, start: int, end: int, pad: int) -> None:
        self._backend = backend  # a tokenizers.Tokenizer or a transformers tokenizer
        self.vocab_size, self.start, self.end, self.pad = vocab_size, start, end, pad

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if hasattr(self._backend, "encode_batch"):
            return [e.ids for e in self._backend.encode_batch(list(texts))]
        return self._backend(list(texts), add_special_tokens=True)["input_ids"]

    def __call__(self, texts: Sequence[str], length: int) -> torch.Tensor:
        out = torch.full((len(texts), length), self.pad, dtype=torch.long)
        for row, ids in enumerate(self._ids(texts)):
            ids = [i for i in ids if i not in (self.start, self.end)]
            ids = [self.start, *ids[: length - 2], self.end]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def _tokenizer_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("model"), dict) else None


def find_tokenizer(weights: Path, given: Path | None, names: Sequence[str]) -> Path | None:
    """The tokenizer file given, or one of ``names`` in the weights' folder."""
    if given is not None:
        return Path(given).expanduser()
    folder = weights if weights.is_dir() else weights.parent
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def conch_tokenizer(path: Path, vocab_size: int, weights: Path) -> BPETokenizer:
    """CONCH's byte-level BPE tokenizer from its JSON, checked against the checkpoint."""
    from tokenizers import Tokenizer

    if _tokenizer_json(path) is None:
        raise EncoderError(
            f"{path}: not a tokenizer JSON (expected CONCH's {CONCH_TOKENIZER}, from its code at "
            "conch/open_clip_custom/tokenizers/)"
        )
    backend = Tokenizer.from_file(str(path))
    ids = {name: backend.token_to_id(name) for name in CONCH_SPECIALS}
    size = backend.get_vocab_size(with_added_tokens=True)
    if None in ids.values() or size != vocab_size:
        raise EncoderError(
            f"{path}: this tokenizer does not match {weights} (vocabulary {size} tokens, special "
            f"tokens {ids}; the checkpoint embeds {vocab_size} tokens). Give the "
            f"{CONCH_TOKENIZER} that ships with CONCH's code"
        )
    backend.no_padding()
    backend.no_truncation()
    return BPETokenizer(backend, size, ids["<start_of_text>"], ids["<end_of_text>"], ids["<pad>"])


def clip_tokenizer(path: Path, vocab_size: int, weights: Path) -> BPETokenizer:
    """CLIP's BPE from ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``."""
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.suffix == ".json" and _tokenizer_json(path) is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(path))
        size = backend.get_vocab_size(with_added_tokens=True)
        token_id = backend.token_to_id
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from napari_hila.encoders.text import _offline

        _offline()
        from transformers import CLIPTokenizer

        backend = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        size = len(backend)
        token_id = backend.convert_tokens_to_ids
    else:
        raise EncoderError(
            f"{path}: no CLIP tokenizer here (tokenizer.json, or vocab.json with merges.txt, as "
            "the open_clip hub repositories ship them)"
        )
    start, end = token_id("<|startoftext|>"), token_id("<|endoftext|>")
    if size != vocab_size or start is None or end != size - 1:
        raise EncoderError(
            f"{path}: this tokenizer does not match {weights} (vocabulary {size} tokens, "
            f"end-of-text id {end}; the checkpoint embeds {vocab_size} tokens and pools at the "
            "largest id, the end-of-text token). Give the tokenizer files shipped with the weights"
        )
    if hasattr(backend, "no_padding"):
        backend.no_padding()
        backend.no_truncation()
    return BPETokenizer(backend, size, int(start), int(end), 0)


# -- encoders -----------------------------------------------------------------------------------


class TowerTextEncoder:
    """A text tower and its tokenizer behind the text-encoder interface (unit rows)."""

    def __init__(self, name, tower: TextTransformer, tokenizer: BPETokenizer, version, device):
        self.name, self.version, self.device = name, version, device
        self.tower = tower.eval().to(device)
        self.tokenizer = tokenizer
        self.output_dim = int(tower.config.output_dim)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(texts, self.tower.text_length)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """K texts -> (K, output_dim) float32 unit vectors in the pair's shared space."""
        if not len(texts):
            return np.zeros((0, self.output_dim), np.float32)
        out = self.tower(self.tokenize(texts).to(self.device)).float().cpu().numpy()
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def load_conch_vision(spec, weights: Path, device: torch.device) -> ViTEncoder:
    state, config = read_state_dict(weights)
    if not is_conch(state):
        raise EncoderError(
            f"{weights}: not a CONCH checkpoint (no 'visual.attn_pool_contrast.*' keys); for "
            "CONCH's trunk alone use --encoder conch-trunk"
        )
    model = build_conch_visual(state, config, str(weights))
    model.weights_digest = weights_digest(weights)
    model.weights_path, model.weights_config = Path(weights), config
    return ViTEncoder(model, spec, device)


def load_tower_text(spec, weights: Path, device: torch.device, tokenizer: Path | None = None):
    """``conch-text``, ``quiltnet-text``, ``clip-text``, ``plip-text`` by the checkpoint's layout."""
    from napari_hila.encoders.text import CLIPTextEncoder

    if weights.is_dir() and (weights / "config.json").is_file() and not _open_clip_dir(weights):
        return CLIPTextEncoder(weights, spec.name, device)  # transformers CLIPModel directory
    if tokenizer is not None and not Path(tokenizer).expanduser().exists():
        raise EncoderError(
            f"{tokenizer}: the tokenizer named in the encoders config ({_config_hint()}) for "
            f"{spec.name!r} does not exist; fix its 'tokenizer:' path"
        )
    state, config = read_state_dict(weights)
    tower, layout = build_text_tower(state, config, str(weights))
    if layout == "CONCH":
        path = find_tokenizer(weights, tokenizer, (CONCH_TOKENIZER, "tokenizer.json"))
        if path is None or not path.is_file():
            raise EncoderError(
                f"{weights}: text encoder {spec.name!r} needs CONCH's tokenizer "
                f"{CONCH_TOKENIZER} (in CONCH's code, conch/open_clip_custom/tokenizers/): put "
                "it beside the weights or give its path as 'tokenizer:' under "
                f"{spec.name.removesuffix('-text')} in the encoders config ({_config_hint()})"
            )
        tok = conch_tokenizer(path, tower.config.vocab_size, weights)
    else:
        path = find_tokenizer(weights, tokenizer, ("tokenizer.json", "vocab.json"))
        if path is None or not path.exists():
            raise EncoderError(
                f"{weights}: text encoder {spec.name!r} needs the CLIP tokenizer files shipped "
                "with the weights (tokenizer.json, or vocab.json and merges.txt): put them beside "
                f"the weights or give 'tokenizer:' in the encoders config ({_config_hint()})"
            )
        tok = clip_tokenizer(path, tower.config.vocab_size, weights)
    return TowerTextEncoder(spec.name, tower, tok, weights_digest(weights), device)


def _open_clip_dir(folder: Path) -> bool:
    return any(
        (folder / n).is_file()
        for n in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
    )


def _config_hint() -> str:
    from napari_hila.encoders.userconfig import config_path

    return str(config_path())
