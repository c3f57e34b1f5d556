"""The CPU dropout of ``model/dropout.py``: exact rate, independence, scaling, gradient, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fenrec_dist.model.dropout import Dropout, dropout, keep_mask


def test_byte_lanes_are_the_words_bits_and_drop_below_the_threshold():
    """For p = 0.5 every element is byte k of word k // 8 (all 8 lanes, little-endian) and is
    dropped exactly when that byte, read as signed, is below round(256 p) - 128 = 0."""
    g = torch.Generator().manual_seed(3)
    keep = keep_mask((5, 7), 0.5, generator=g)  # 35 elements -> 5 words
    words = torch.empty(5, dtype=torch.int64).random_(-(2**63), None, generator=torch.Generator().manual_seed(3))
    raw = np.frombuffer(words.numpy().tobytes(), dtype="<u1")[:35]  # unsigned bytes, in order
    assert keep.dtype == torch.uint8
    assert np.array_equal(keep.reshape(-1).numpy(), (raw < 128).astype(np.uint8))  # signed byte >= 0


@pytest.mark.parametrize("p", [0.5, 0.25, 0.1, 0.3, 0.7])
def test_drop_rate_and_independence(p):
    """Rates 0.5 and 0.25 use byte lanes, 0.1 / 0.3 / 0.7 16-bit lanes; over 2M elements the
    rate is within 5 standard errors of p, and neighbours (lanes of one word, and across
    words) are uncorrelated."""
    torch.manual_seed(0)
    keep = keep_mask((2_000_000,), p).double()
    se = (p * (1 - p) / keep.numel()) ** 0.5
    assert abs((1 - keep.mean().item()) - p) < 5 * se
    for lag in (1, 7, 8, 9, 4):
        a, b = keep[:-lag] - keep.mean(), keep[lag:] - keep.mean()
        corr = (a * b).mean() / keep.var()
        assert abs(corr.item()) < 5 / keep.numel() ** 0.5


def test_forward_scales_kept_entries_and_backward_uses_the_same_mask():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x, 0.5, training=True)
    kept = y != 0
    assert torch.equal(y[kept], 2.0 * x.detach()[kept])
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, torch.where(kept, 2.0 * g, torch.zeros_like(g)))
    # 16-bit lanes: scale 1 / (1 - p)
    torch.manual_seed(1)
    y3 = dropout(x.detach(), 0.3, training=True)
    k3 = y3 != 0
    assert torch.allclose(y3[k3], x.detach()[k3] / 0.7)


def test_seeded_like_torch_and_identity_in_eval():
    m = Dropout(0.5)
    x = torch.randn(10, 10)
    torch.manual_seed(5)
    a = m(x)
    torch.manual_seed(5)
    b = m(x)
    assert torch.equal(a, b) and not torch.equal(a, m(x))
    m.eval()
    assert m(x) is x
    assert dropout(x, 0.0, training=True) is x
