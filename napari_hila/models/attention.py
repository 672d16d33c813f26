"""Self-attention for long bags: exact (torch SDPA) or Nystrom-approximated.

Exact softmax attention costs O(N^2) memory in the backward pass on CPU, 12 GB
per layer at N = 20,000 tokens and 8 heads; the Nystrom approximation
(Xiong et al., AAAI 2021), which TransMIL uses, costs O(N m) with m landmarks.
Landmarks here are the means of m contiguous, nearly equal segments of the
real tokens, so no padding token enters the softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiHeadSelfAttention", "iterative_pinv", "segment_means"]


def segment_means(x: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Mean of ``n_segments`` contiguous, nearly equal slices along dim -2."""
    n = x.shape[-2]
    segment = torch.arange(n, device=x.device) * n_segments // n
    sums = x.new_zeros(*x.shape[:-2], n_segments, x.shape[-1]).index_add(-2, segment, x)
    counts = torch.bincount(segment, minlength=n_segments).to(x.dtype)
    return sums / counts.clamp(min=1).unsqueeze(-1)


def iterative_pinv(matrix: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of a row-stochastic matrix by Newton-Schulz-type iteration."""
    eye = torch.eye(matrix.shape[-1], device=matrix.device, dtype=matrix.dtype)
    scale = matrix.abs().sum(dim=-1).amax(dim=-1) * matrix.abs().sum(dim=-2).amax(dim=-1)
    inverse = matrix.transpose(-1, -2) / scale[..., None, None]
    for _ in range(iterations):
        product = matrix @ inverse
        inverse = 0.25 * inverse @ (13 * eye - product @ (15 * eye - product @ (7 * eye - product)))
    return inverse


class MultiHeadSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual.

    ``landmarks = 0`` uses exact attention; otherwise bags longer than the
    landmark count use the Nystrom approximation plus a depthwise convolution
    of the values along the sequence (as in Nystromformer).
    """

    def __init__(
        self,
        width: int,
        n_heads: int,
        dropout: float,
        landmarks: int = 0,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
    ) -> None:
        super().__init__()
        if width % n_heads:
            raise ValueError(f"width {width} is not divisible by {n_heads} heads")
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.n_heads = n_heads
        self.dropout = dropout
        self.landmarks = landmarks
        self.pinv_iterations = pinv_iterations
        self.value_conv = (
            nn.Conv2d(
                n_heads,
                n_heads,
                (residual_kernel, 1),
                padding=(residual_kernel // 2, 0),
                groups=n_heads,
                bias=False,
            )
            if landmarks
            else None
        )

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, width = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, 3, self.n_heads, width // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, width/heads)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        if self.landmarks and x.shape[1] > self.landmarks:
            mixed = self._nystrom(q, k, v)
        else:
            drop = self.dropout if self.training else 0.0
            mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return x + self.out(mixed.transpose(1, 2).reshape(x.shape))

    def _nystrom(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = q / math.sqrt(q.shape[-1])
        q_land, k_land = segment_means(q, self.landmarks), segment_means(k, self.landmarks)
        kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)  # (.., N, m)
        kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)  # (.., m, m)
        kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)  # (.., m, N)
        mixed = (kernel_1 @ iterative_pinv(kernel_2, self.pinv_iterations)) @ (kernel_3 @ v)
        return mixed + self.value_conv(v)

    def class_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Exact softmax attention of token 0 (the class token) over all tokens, mean over heads.

        O(N) to compute, and non-negative, so it serves as the explanation map
        even when the layer itself uses the Nystrom approximation.
        """
        q, k, _ = self._heads(x)
        logits = q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]  # (B, N)
