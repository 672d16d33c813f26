"""Reference vision-language models in their owners' layouts, and a tiny world to train them on.

The references are written here from the owners' published structure (CONCH's
CoCa, open_clip's CLIP; transformers' CLIPModel is used as it is), with
``nn.MultiheadAttention`` and plain softmax attention, independently of
napari-hila's loaders. The tests train them for a few hundred steps on
coloured shapes and their names, save their state dicts under the real key
names, and check that napari-hila's loaders give the same embeddings and that
zero-shot retrieval works through extraction and prompt embedding.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (40, 60, 220),
    "yellow": (235, 210, 20),
}
SHAPES = ("square", "disc", "bar")
CLASSES = [(c, s) for c in COLOURS for s in SHAPES]
CAPTIONS = [f"a {c} {s}" for c, s in CLASSES]
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
BACKGROUND = (236, 200, 215)  # pale pink, so tissue detection keeps every tile


def draw(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``label``: a shape of a colour, jittered."""
    colour, shape = CLASSES[label]
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.4, 0.6, 2)
    r = rng.uniform(0.22, 0.3)
    if shape == "square":
        inside = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    elif shape == "disc":
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    else:
        inside = (abs(yy - cy) < r / 3) & (abs(xx - cx) < 1.4 * r)
    img[inside] = COLOURS[colour]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def dataset(n_per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    return np.stack([draw(int(k), size, rng) for k in labels]), labels


def pixels(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> CLIP-normalised (N, 3, size, size), as the owners' transforms do
    (PIL's bicubic resize of square images, then mean/std)."""
    from PIL import Image

    if images.shape[1] != size:
        images = np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def train_contrastive(model, images, labels, tokens, steps: int, seed: int = 0, lr: float = 2e-3):
    """CLIP's symmetric InfoNCE on batches of one image per class (captions are the classes)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    by_class = [np.flatnonzero(labels == k) for k in range(len(CLASSES))]
    model.train()
    for _ in range(steps):
        pick = [int(idx[torch.randint(len(idx), (1,), generator=gen)]) for idx in by_class]
        img = F.normalize(model.encode_image(images[pick]), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = 10.0 * img @ txt.t()
        target = torch.arange(len(CLASSES))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def top1(image_emb: np.ndarray, text_emb: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose own caption is the most similar one."""
    a = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    b = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
    return float(np.mean((a @ b.T).argmax(axis=1) == labels))


# -- shared parts ----------------------------------------------------------------------------


class TimmBlock(nn.Module):
    """timm's ViT block (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2), plain softmax."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, 4 * width)
        self.mlp.fc2 = nn.Linear(4 * width, width)

    def forward(self, x):
        b, n, c = x.shape
        h = self.heads
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) * (c // h) ** -0.5).softmax(-1)
        x = x + self.attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class ResidualAttentionBlock(nn.Module):
    """open_clip's block (sequence-first nn.MultiheadAttention, mlp.c_fc / c_proj)."""

    def __init__(self, width: int, heads: int, quick_gelu: bool = False) -> None:
        super().__init__()
        self.quick_gelu = quick_gelu
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, 4 * width),
                gelu=nn.Identity(),
                c_proj=nn.Linear(4 * width, width),
            )
        )

    def forward(self, x, mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        h = h * torch.sigmoid(1.702 * h) if self.quick_gelu else F.gelu(h)
        return x + self.mlp.c_proj(h)


class OpenClipTextTower(nn.Module):
    """CLIP's text transformer; with ``embed_cls`` CoCa's (class token after the text)."""

    def __init__(
        self, vocab, context, width, layers, heads, out, embed_cls=False, quick_gelu=False
    ):
        super().__init__()
        self.heads, self.embed_cls = heads, embed_cls
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        if embed_cls:
            self.cls_emb = nn.Parameter(torch.randn(width) * 0.01)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)
        )
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, out) * width**-0.5)

    def forward(self, text):
        if self.embed_cls:
            text = text[:, :-1]  # CoCa: the last position is the class token's
        n = text.shape[1] + int(self.embed_cls)
        x = self.token_embedding(text)
        mask = torch.full((n, n), float("-inf")).triu(1)
        if self.embed_cls:
            x = torch.cat([x, self.cls_emb.expand(x.shape[0], 1, -1)], 1)
            # CoCa's class-token mask: (text != pad) padded one column left and rows on top
            cls_mask = (text != 0).unsqueeze(1)
            cls_mask = F.pad(cls_mask, (1, 0, cls_mask.shape[2], 0), value=True)
            add = torch.zeros(cls_mask.shape).masked_fill(~cls_mask, float("-inf"))
            mask = mask[None] + add
            mask = torch.repeat_interleave(mask, self.heads, 0)
        x = (x + self.positional_embedding[:n]).permute(1, 0, 2)
        for blk in self.transformer.resblocks:
            x = blk(x, mask)
        x = x.permute(1, 0, 2)
        if self.embed_cls:
            pooled = self.ln_final(x[:, -1])
        else:
            pooled = self.ln_final(x)[torch.arange(x.shape[0]), text.argmax(-1)]
        return pooled @ self.text_projection


# -- CONCH (CoCa) ---------------------------------------------------------------------------


class ConchReference(nn.Module):
    """CONCH's CoCa with tiny widths: ``visual.trunk`` (timm ViT), the contrastive pooler,
    ``ln_contrast``, ``proj_contrast``, the unused caption pooler, ``text`` (with cls_emb),
    a one-layer ``text_decoder`` stand-in and ``logit_scale``."""

    def __init__(self, vocab, image=32, patch=8, width=48, layers=2, heads=2, embed=32, ctx=16):
        super().__init__()
        self.image = image
        self.visual = nn.Module()
        t = self.visual.trunk = nn.Module()
        t.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        t.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, width) * 0.02)
        t.patch_embed = nn.Module()
        t.patch_embed.proj = nn.Conv2d(3, width, patch, patch)
        t.blocks = nn.ModuleList(TimmBlock(width, heads) for _ in range(layers))
        t.norm = nn.LayerNorm(width, eps=1e-6)
        v = self.visual
        v.attn_pool_contrast = _Pooler(embed, width, heads, 1)
        v.ln_contrast = nn.LayerNorm(embed)
        v.proj_contrast = nn.Parameter(torch.randn(embed, embed) * width**-0.5)
        v.attn_pool_caption = _Pooler(width, width, heads, 4)
        v.ln_caption = nn.LayerNorm(width)
        self.text = OpenClipTextTower(vocab, ctx, width, layers, heads, embed, embed_cls=True)
        self.text_decoder = nn.Module()
        self.text_decoder.ln_final = nn.LayerNorm(width)
        self.logit_scale = nn.Parameter(torch.tensor(2.6))

    def trunk_tokens(self, x):
        t = self.visual.trunk
        x = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), x], 1) + t.pos_embed
        for blk in t.blocks:
            x = blk(x)
        return t.norm(x)

    def encode_image(self, x):
        pooled = self.visual.attn_pool_contrast(self.trunk_tokens(x))[:, 0]
        return self.visual.ln_contrast(pooled) @ self.visual.proj_contrast

    def encode_text(self, tokens):
        return self.text(tokens)


class _Pooler(nn.Module):
    def __init__(self, dim, context_dim, heads, n_queries):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, dim))
        self.attn = nn.MultiheadAttention(dim, heads, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x):
        x = self.ln_k(x).permute(1, 0, 2)
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.shape[1], 1)
        return self.attn(q, x, x, need_weights=False)[0].permute(1, 0, 2)


def conch_tokenizer_file(folder: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE JSON in the form of CONCH's, trained on the captions."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<start_of_text>", "<end_of_text>"]
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    words = [*CAPTIONS, "tumour necrosis", "dense lymphocytes", "a purple square", "stroma"]
    tok.train_from_iterator(words * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)],
    )
    path = folder / "conch_byte_level_bpe_uncased.json"
    tok.save(str(path))
    return path


def conch_tokens(tokenizer_path: Path, texts, context: int) -> torch.Tensor:
    """CONCH's own tokenisation: max_length context - 1, padded, then one pad appended."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_path),
        bos_token="<start_of_text>",
        eos_token="<end_of_text>",
        pad_token="<pad>",
    )
    ids = tok(
        list(texts),
        max_length=context - 1,
        add_special_tokens=True,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )["input_ids"]
    return F.pad(ids, (0, 1), value=tok.pad_token_id)


# -- open_clip CLIP ---------------------------------------------------------------------------


class OpenClipReference(nn.Module):
    """open_clip's CLIP (QuiltNet's layout): ``visual.*`` and the text tower at top level."""

    def __init__(
        self, vocab, image=32, patch=8, width=48, layers=2, heads=2, embed=32, ctx=16, quick=True
    ):
        super().__init__()
        # OpenAI-initialised towers (QuiltNet, OpenAI CLIP) use QuickGELU
        v = self.visual = nn.Module()
        v.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        v.class_embedding = nn.Parameter(torch.randn(width) * 0.02)
        v.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width) * 0.02)
        v.ln_pre = nn.LayerNorm(width)
        v.transformer = nn.Module()
        v.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, quick) for _ in range(layers)
        )
        v.ln_post = nn.LayerNorm(width)
        v.proj = nn.Parameter(torch.randn(width, embed) * width**-0.5)
        text = OpenClipTextTower(vocab, ctx, width, layers, heads, embed, quick_gelu=quick)
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.logit_scale = nn.Parameter(torch.tensor(2.6))
        self._text = [text]  # not a submodule: its parameters are registered above

    def encode_image(self, x):
        v = self.visual
        x = v.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1)
        x = v.ln_pre(x + v.positional_embedding).permute(1, 0, 2)
        for blk in v.transformer.resblocks:
            x = blk(x)
        return v.ln_post(x[0]) @ v.proj

    def encode_text(self, tokens):
        return self._text[0](tokens)


def write_clip_tokenizer(folder: Path) -> None:
    """A character-level CLIP BPE vocabulary (no merges): enough to tokenize offline."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def open_clip_tokens(folder: Path, texts, context: int) -> torch.Tensor:
    """open_clip's tokenisation: start + BPE + end, zero-padded to the context."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    out = torch.zeros(len(texts), context, dtype=torch.long)
    for i, ids in enumerate(tok(list(texts))["input_ids"]):
        if len(ids) > context:  # open_clip keeps the first tokens and ends with end-of-text
            ids = [*ids[: context - 1], ids[-1]]
        out[i, : len(ids)] = torch.tensor(ids)
    return out
