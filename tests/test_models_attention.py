"""Nystrom attention pieces against exact linear algebra."""

from __future__ import annotations

import torch
from _model_fixtures import one_torch_thread  # noqa: F401

from napari_hila.models.attention import MultiHeadSelfAttention, iterative_pinv, segment_means


def test_iterative_pinv_matches_linalg_pinv():
    torch.manual_seed(0)
    matrix = torch.softmax(torch.randn(3, 16, 16, dtype=torch.float64) * 2, dim=-1)
    torch.testing.assert_close(
        iterative_pinv(matrix, iterations=30), torch.linalg.pinv(matrix), atol=1e-6, rtol=1e-5
    )


def test_segment_means_cover_every_token_once():
    x = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    means = segment_means(x, 4)  # segments [0,1,2] [3,4] [5,6,7] [8,9]
    torch.testing.assert_close(means.view(-1), torch.tensor([1.0, 3.5, 6.0, 8.5]))


def test_nystrom_with_one_landmark_per_token_is_exact_attention():
    # With m = N landmarks, A A^+ A V = A V: the approximation is exact.
    torch.manual_seed(1)
    layer = MultiHeadSelfAttention(16, 2, 0.0, landmarks=21, pinv_iterations=60).double().eval()
    torch.nn.init.zeros_(layer.value_conv.weight)
    q, k, v = (torch.randn(1, 2, 21, 8, dtype=torch.float64) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(layer._nystrom(q, k, v), exact, atol=1e-6, rtol=1e-5)


def test_long_bag_uses_nystrom_and_stays_close_to_exact():
    torch.manual_seed(2)
    exact = MultiHeadSelfAttention(16, 2, 0.0, landmarks=0).eval()
    approx = MultiHeadSelfAttention(16, 2, 0.0, landmarks=64).eval()
    approx.load_state_dict(exact.state_dict(), strict=False)
    torch.nn.init.zeros_(approx.value_conv.weight)
    x = torch.randn(1, 500, 16)
    with torch.no_grad():
        error = (approx(x) - exact(x)).abs().max()
    assert 0 < error < 0.1  # approximate, not a silent fallback to exact attention
