"""The pieces of vision-language models that turn towers into one shared space.

Two modules whose state-dict keys are the owners' own, so a checkpoint loads
after stripping its prefix and nothing else:

- :class:`TextTransformer`: the CLIP text tower as open_clip and CONCH write it
  (``token_embedding``, ``positional_embedding``,
  ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
  mlp.c_fc, mlp.c_proj}``, ``ln_final``, ``text_projection``). Causal
  attention; the text embedding is the end-of-text token's (CLIP: the largest
  token id of each row) or, with ``cls_emb`` (CONCH/CoCa), a class token appended
  after the text that sees the text tokens (the CoCa mask, below).
- :class:`ConchVisual`: CONCH's image side: the timm ViT trunk's normed tokens,
  pooled by one learned query (``attn_pool_contrast``: ``query``, ``ln_q``,
  ``ln_k``, ``attn.{q,k,v}_proj_weight``, ``attn.in_proj_bias``, ``attn.out_proj``),
  then ``ln_contrast`` and ``proj_contrast``: the 512-d contrastive embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_hila.encoders.vit import QuickGELU, VisionTransformer


@dataclass
class TextConfig:
    """Shape of a CLIP-style text tower (read from the weights, see ``vl``)."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    output_dim: int = 512
    act: str = "gelu"  # "quick_gelu" for OpenAI-trained towers
    norm_eps: float = 1e-5
    embed_cls: bool = False  # CONCH: class token after the text
    pad_id: int = 0
    layer_scale: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class _SelfAttention(nn.Module):
    """Multi-head self-attention with one packed input projection (open_clip's keys)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.normal_(self.in_proj_weight, std=width**-0.5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class _Gamma(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _ResidualBlock(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        w = cfg.width
        self.ln_1 = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.attn = _SelfAttention(w, cfg.heads)
        self.ln_2 = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(w, 4 * w))
        self.mlp.add_module("gelu", QuickGELU() if cfg.act == "quick_gelu" else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * w, w))
        self.ls_1 = _Gamma(w) if cfg.layer_scale else nn.Identity()
        self.ls_2 = _Gamma(w) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class _Blocks(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualBlock(cfg) for _ in range(cfg.layers))


class TextTransformer(nn.Module):
    """CLIP/CoCa text tower: token ids (N, L) -> (N, output_dim) text embeddings."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.cls_emb = nn.Parameter(torch.randn(cfg.width) * 0.01) if cfg.embed_cls else None
        self.transformer = _Blocks(cfg)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.text_projection = nn.Parameter(
            torch.randn(cfg.width, cfg.output_dim) * cfg.width**-0.5
        )

    @property
    def text_length(self) -> int:
        """Token ids per text the tower takes (CONCH: one position is the class token's)."""
        return self.config.context_length - int(self.config.embed_cls)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Additive mask (N or 1, 1, L, L): causal; CoCa's class row sees the text.

        CoCa builds the class token's row from ``tokens != pad`` shifted by one
        position (column 0 always visible, column j when token j - 1 is not
        padding); CONCH's weights were trained with exactly that row, so it is
        reproduced here as it is.
        """
        n = tokens.shape[1] + int(self.config.embed_cls)
        causal = torch.full((n, n), float("-inf"), device=tokens.device).triu_(1)
        if not self.config.embed_cls:
            return causal[None, None]
        visible = F.pad(tokens != self.config.pad_id, (1, 0), value=True)  # (N, n)
        cls_row = torch.zeros(visible.shape, device=tokens.device).masked_fill_(
            ~visible, float("-inf")
        )
        mask = causal.expand(tokens.shape[0], n, n).clone()
        mask[:, -1] = cls_row
        return mask[:, None]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens)
        if self.cls_emb is not None:
            x = torch.cat([x, self.cls_emb.expand(x.shape[0], 1, -1)], dim=1)
        x = x + self.positional_embedding[: x.shape[1]]
        mask = self.attention_mask(tokens)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        if self.cls_emb is not None:
            pooled = self.ln_final(x[:, -1])
        else:  # the end-of-text token has the largest id in CLIP's vocabulary
            pooled = self.ln_final(x)[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        return pooled @ self.text_projection


class _PoolAttention(nn.Module):
    """Cross-attention from learned queries to the trunk's tokens (separate q/k/v weights)."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj_weight = nn.Parameter(torch.randn(dim, dim) * dim**-0.5)
        self.k_proj_weight = nn.Parameter(torch.randn(dim, context_dim) * context_dim**-0.5)
        self.v_proj_weight = nn.Parameter(torch.randn(dim, context_dim) * context_dim**-0.5)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, d, h = context.shape[0], self.q_proj_weight.shape[0], self.heads
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(queries, self.q_proj_weight, bq).expand(b, -1, -1)
        k = F.linear(context, self.k_proj_weight, bk)
        v = F.linear(context, self.v_proj_weight, bv)
        q, k, v = (t.reshape(b, t.shape[1], h, d // h).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, -1, d))


class AttentionalPooler(nn.Module):
    """CoCa's attentional pooler: ``n_queries`` learned queries attend to the tokens."""

    def __init__(self, dim: int, context_dim: int, heads: int, n_queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, dim))
        self.attn = _PoolAttention(dim, context_dim, heads)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.attn(self.ln_q(self.query), self.ln_k(tokens))


class ConchVisual(nn.Module):
    """CONCH's image tower up to its contrastive embedding (512-d for ViT-B/16)."""

    def __init__(self, trunk: VisionTransformer, embed_dim: int, pool_heads: int) -> None:
        super().__init__()
        width = trunk.config.width
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(embed_dim, width, pool_heads)
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(torch.randn(embed_dim, embed_dim) * width**-0.5)
        self.config = trunk.config  # image size and patch size for the encoder wrapper

    @property
    def output_dim(self) -> int:
        return int(self.proj_contrast.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.trunk.embed(images)
        for block in self.trunk.blocks:
            x = block(x)
        pooled = self.attn_pool_contrast(self.trunk.norm(x))[:, 0]
        return self.ln_contrast(pooled) @ self.proj_contrast
