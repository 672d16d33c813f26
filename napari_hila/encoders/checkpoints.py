"""Loading ViT image towers from local checkpoints, never unpickling code.

Accepted files: ``.safetensors``; ``.bin``/``.pt``/``.pth`` read with
``torch.load(weights_only=True)`` (a plain state dict, or one nested under
``state_dict``/``model``); or a transformers directory (``config.json`` plus
``model.safetensors`` or ``pytorch_model.bin``) as ``save_pretrained`` writes.

Accepted key layouts (a ``module.`` prefix is ignored):

- timm ViT (UNI): ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``,
  ``norm``; also under ``visual.trunk.`` (CONCH: its trunk only, the CoCa
  pooling heads are skipped) or ``trunk.``. ``head`` is kept when it is a
  bias-free projection, dropped when empty.
- open_clip visual tower (QuiltNet, OpenAI CLIP): ``visual.conv1``,
  ``visual.class_embedding``, ``visual.positional_embedding``, ``visual.ln_pre``,
  ``visual.transformer.resblocks.N.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,
  mlp.c_fc,mlp.c_proj,ls_1.gamma,ls_2.gamma}``, ``visual.ln_post``, ``visual.proj``;
  text-tower keys are ignored.
- transformers CLIP (PLIP, CLIP): ``vision_model.*`` and ``visual_projection``
  of ``CLIPModel`` or ``CLIPVisionModelWithProjection``; text keys are ignored.

The shape (width, depth, patch size, image size, layer scale, projection) is
read from the weights. What shapes cannot tell (attention heads, default
width / 64; activation, default GELU, or "quick_gelu" for OpenAI-trained
towers; LayerNorm eps) comes from a JSON beside the weights: ``<file>.json``
or ``config.json`` in the same folder, with ``ViTConfig`` field names (for a
transformers directory, its own ``vision_config``). Anything else gives an
:class:`EncoderError` listing the unexpected and missing keys.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import re
from pathlib import Path

import torch

from napari_hila.encoders.registry import EncoderError
from napari_hila.encoders.vit import VisionTransformer, ViTConfig

StateDict = dict[str, torch.Tensor]
#: weight files looked for inside a model directory, in this order
WEIGHT_NAMES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.pt",
)


def read_state_dict(path: Path) -> tuple[StateDict, dict]:
    """Tensors and side-car config of a checkpoint file or transformers directory."""
    path = Path(path)
    config: dict = {}
    if path.is_dir():
        for cfg_name in ("config.json", "open_clip_config.json"):
            if (path / cfg_name).is_file():
                config = json.loads((path / cfg_name).read_text())
                break
        return _read_file(weights_file(path)), config
    for side in (
        path.with_name(path.name + ".json"),
        path.with_suffix(".json"),
        path.parent / "config.json",
        path.parent / "open_clip_config.json",
    ):
        if side.is_file():
            config = json.loads(side.read_text())
            break
    return _read_file(path), config


def _read_file(path: Path) -> StateDict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's weights-only unpickler refused a Python object (a class, a function)
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:
            raise EncoderError(
                f"{path}: cannot read weights ({err}); expected a state dict saved with "
                "torch.save or safetensors"
            ) from None
        raise EncoderError(
            f"{path}: a pickled checkpoint: it holds Python objects, not only tensors "
            f"(it names {found.group(1)}), and napari-hila never unpickles code (loading "
            "it could run anything). Give the weights as their owners distribute them: a state "
            "dict of tensors (torch.save(model.state_dict(), ...)) or .safetensors"
        ) from None
    except Exception as err:  # zip and header errors mean: not a usable checkpoint
        raise EncoderError(
            f"{path}: cannot read weights ({type(err).__name__}: {err}); expected a state dict "
            "saved with torch.save or safetensors"
        ) from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _from_open_clip(state: StateDict) -> StateDict:
    out: StateDict = {}
    renames = [
        (r"^conv1\.", "patch_embed.proj."),
        (r"^ln_pre\.", "norm_pre."),
        (r"^ln_post\.", "norm."),
        (r"^transformer\.resblocks\.(\d+)\.ln_1\.", r"blocks.\1.norm1."),
        (r"^transformer\.resblocks\.(\d+)\.ln_2\.", r"blocks.\1.norm2."),
        (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_weight", r"blocks.\1.attn.qkv.weight"),
        (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_bias", r"blocks.\1.attn.qkv.bias"),
        (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
        (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
        (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
        (r"^transformer\.resblocks\.(\d+)\.ls_(\d)\.", r"blocks.\1.ls\2."),
    ]
    for key, value in state.items():
        if not key.startswith("visual."):
            continue  # the text tower
        key = key.removeprefix("visual.")
        if key == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            out["pos_embed"] = value.unsqueeze(0)
        elif key == "proj":
            out["head.weight"] = value.t().contiguous()
        else:
            for pattern, repl in renames:
                key = re.sub(pattern, repl, key)
            out[key] = value
    return out


def _from_transformers(state: StateDict) -> StateDict:
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "visual_projection.weight":
            out["head.weight"] = value
            continue
        if not key.startswith("vision_model."):
            continue  # text tower, logit scale
        key = key.removeprefix("vision_model.")
        m = re.match(r"encoder\.layers\.(\d+)\.(.+)", key)
        if key == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "embeddings.patch_embedding.weight":
            out["patch_embed.proj.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif key == "embeddings.position_ids":
            continue
        elif key.startswith("pre_layrnorm."):
            out["norm_pre." + key.split(".", 1)[1]] = value
        elif key.startswith("post_layernorm."):
            out["norm." + key.split(".", 1)[1]] = value
        elif m:
            i, rest = m.groups()
            qm = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if qm:
                qkv.setdefault(f"blocks.{i}.attn.qkv.{qm.group(2)}", {})[qm.group(1)] = value
                continue
            rest = (
                rest.replace("self_attn.out_proj.", "attn.proj.")
                .replace("layer_norm1.", "norm1.")
                .replace("layer_norm2.", "norm2.")
            )
            out[f"blocks.{i}.{rest}"] = value
        else:
            out[key] = value  # reported as unexpected
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_timm_layout(state: StateDict, config: dict | None = None) -> tuple[StateDict, dict]:
    """Rename any accepted layout to timm's; returns the state and layout defaults."""
    keys = set(state)
    if any(k.startswith("vision_model.") for k in keys):
        vc = (config or {}).get("vision_config", config or {})
        defaults = {
            "act": vc.get("hidden_act", "quick_gelu"),
            "norm_eps": vc.get("layer_norm_eps", 1e-5),
        }
        if "num_attention_heads" in vc:
            defaults["heads"] = vc["num_attention_heads"]
        return _from_transformers(state), defaults
    if "visual.conv1.weight" in keys:
        act = "quick_gelu" if model_settings(config).get("quick_gelu") else "gelu"
        return _from_open_clip(state), {"norm_eps": 1e-5, "act": act}
    for prefix in ("visual.trunk.", "trunk.", "model.", "encoder."):
        if any(k.startswith(prefix + "patch_embed.") for k in keys):
            inner = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            return inner, {}
    return dict(state), {}


def model_settings(config: dict | None) -> dict:
    """What shapes cannot tell, from an open_clip or CONCH model config beside the weights.

    Accepts open_clip's hub file (``open_clip_config.json``: ``model_cfg``) and the
    model configs of open_clip and CONCH's code (``embed_dim``, ``quick_gelu``,
    ``vision_cfg``, ``text_cfg``). Returns ``quick_gelu``, ``vision_heads``,
    ``text_heads`` and ``pool_heads`` when given.
    """
    cfg = (config or {}).get("model_cfg", config or {})
    vision, text = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    out = {
        "quick_gelu": bool(cfg.get("quick_gelu", False)),
        "vision_heads": vision.get("num_heads", vision.get("heads")),
        "text_heads": text.get("heads"),
        "pool_heads": vision.get("attn_pooler_heads"),
    }
    return {k: v for k, v in out.items() if v is not None}


def infer_config(state: StateDict, overrides: dict | None = None) -> ViTConfig:
    """A :class:`ViTConfig` from timm-layout tensor shapes plus explicit settings."""
    try:
        patch = state["patch_embed.proj.weight"]
        pos = state["pos_embed"]
    except KeyError as err:
        raise EncoderError(
            f"not a ViT checkpoint in an accepted layout (no {err.args[0]!r}); keys start with: "
            + ", ".join(sorted(state)[:8])
        ) from None
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    head = state.get("head.weight")
    values = {
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "width": width,
        "depth": depth,
        "heads": max(1, width // 64),
        "mlp_dim": int(state["blocks.0.mlp.fc1.weight"].shape[0]) if depth else 4 * width,
        "layer_scale": "blocks.0.ls1.gamma" in state,
        "pre_norm": "norm_pre.weight" in state,
        "proj_dim": int(head.shape[0]) if head is not None and "head.bias" not in state else None,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "patch_bias": "patch_embed.proj.bias" in state,
    }
    allowed = set(ViTConfig.__dataclass_fields__)
    values.update({k: v for k, v in (overrides or {}).items() if k in allowed})
    return ViTConfig(**values)


def build_vit(
    state: StateDict, config: dict | None = None, source: str = "weights"
) -> VisionTransformer:
    """A :class:`VisionTransformer` holding ``state`` in any accepted layout."""
    timm_state, defaults = to_timm_layout(state, config)
    if "head.weight" in timm_state and "head.bias" in timm_state:
        # A classifier head (ImageNet) is not part of a feature extractor.
        timm_state.pop("head.weight"), timm_state.pop("head.bias")
    for extra in ("fc_norm.weight", "fc_norm.bias"):
        if extra in timm_state and timm_state[extra].numel() == 0:
            timm_state.pop(extra)
    flat_cfg = {k: v for k, v in (config or {}).items() if not isinstance(v, dict)}
    if model_settings(config).get("vision_heads"):
        flat_cfg.setdefault("heads", model_settings(config)["vision_heads"])
    cfg = infer_config(timm_state, {**defaults, **flat_cfg})
    model = VisionTransformer(cfg)
    missing, unexpected = _compare_keys(model.state_dict(), timm_state)
    if missing or unexpected:
        raise EncoderError(
            f"{source}: checkpoint layout not recognised. Unexpected keys: "
            f"{_fmt(unexpected)}; missing keys: {_fmt(missing)}. Accepted layouts: timm ViT, "
            "open_clip visual tower, transformers CLIP (see napari_hila.encoders.checkpoints)"
        )
    try:
        model.load_state_dict(timm_state, strict=True)
    except RuntimeError as err:
        raise EncoderError(f"{source}: weights do not fit the inferred ViT shape ({err})") from err
    return model


def _compare_keys(expected: StateDict, given: StateDict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def _fmt(keys: list[str]) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
    return ", ".join(keys[:8]) + more


LAYOUT_NAMES = {
    "timm": "a timm ViT state dict",
    "conch": "CONCH's CoCa checkpoint (visual.trunk, visual.attn_pool_contrast, text)",
    "open_clip": "an open_clip CLIP checkpoint (visual.conv1, visual.transformer, ...)",
    "transformers": "a transformers CLIPModel (vision_model, visual_projection)",
}


def layout_of(state: StateDict) -> str:
    """Which owner's layout a state dict is in: timm, conch, open_clip or transformers."""
    if any(k.startswith(("vision_model.", "text_model.")) for k in state):
        return "transformers"
    if any(k.startswith("visual.attn_pool_contrast.") for k in state) or "text.cls_emb" in state:
        return "conch"
    if "visual.conv1.weight" in state or "token_embedding.weight" in state:
        return "open_clip"
    return "timm"


def load_vision_tower(path: Path, layouts: tuple[str, ...] | None = None) -> VisionTransformer:
    """Read a checkpoint file or directory and build the ViT it holds.

    ``layouts`` (names of :data:`LAYOUT_NAMES`) restricts which owners' layouts
    are accepted, so the weights of another model are refused by name.
    """
    state, config = read_state_dict(path)
    found = layout_of(state)
    if layouts and found not in layouts:
        wanted = " or ".join(LAYOUT_NAMES[name] for name in layouts)
        raise EncoderError(
            f"{path}: this is {LAYOUT_NAMES[found]}, but this encoder's weights are {wanted}; "
            "give the encoder name that matches the file (see the README's encoder section)"
        )
    model = build_vit(state, config, source=str(path))
    model.weights_digest = weights_digest(path)
    # what the owners' preprocessing reads beside the weights (encoders.preprocess)
    model.weights_path, model.weights_config = Path(path), config
    return model


def weights_file(path: Path) -> Path:
    """The one file holding the tensors of a checkpoint file or model directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in WEIGHT_NAMES:
        if (path / name).is_file():
            return path / name
    raise EncoderError(f"{path}: no weights found (expected one of {', '.join(WEIGHT_NAMES)})")


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(path: Path) -> str:
    """``sha256:`` and 16 hex digits of the weights file's bytes: which weights made a feature.

    Computed once per file and modification time in a process (about 1-2 s per GB).
    """
    file = weights_file(path).resolve()
    stat = file.stat()
    return "sha256:" + _file_sha256(str(file), stat.st_size, stat.st_mtime_ns)[:16]
