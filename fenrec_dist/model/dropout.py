"""Inverted dropout whose CPU masks come from 64-bit random words cut into lanes.

On CPU, PyTorch draws one Mersenne-Twister number per element for ``rand_like`` or
``bernoulli_`` (6-17 ns an element on this machine) and ``masked_fill`` costs about 3 ns
an element: dropout was the encoder's largest elementwise cost. Here one full-range
``random_(-2**63, None)`` word (64 uniform bits) gives 8 uniform signed bytes: an element
is kept when its byte is at least ``round(256 p) - 128``, so it is dropped with
probability exactly p when 256 p is an integer (0.5, 0.25, ...). Other rates use 4 lanes
of 16 bits per word (probability round(65536 p) / 65536, within 2^-17 of p). The keep
mask (uint8 0/1, then float keep / (1 - p), the scaling of ``nn.Dropout``) is applied by
one multiply forward and one backward. The dropout calls of a Beauty training step take
0.63 of the time of ``rand_like`` masks (``bench/bench_dropout.py``; 3-4x on tensors of a
few hundred thousand elements, slower below a few thousand, where the per-call work rules). On other devices ``F.dropout`` (fused there) is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [*shape] on CPU: 0 (dropped) with probability p, else 1, independently per element.

    Draws ceil(n / lanes) 64-bit words from ``generator`` (torch's default CPU generator when
    None, so ``torch.manual_seed`` makes it reproducible). See the module docstring for the
    lane layout and the exactness of p.
    """
    n = math.prod(shape)
    q8 = p * 256
    if abs(q8 - round(q8)) < 1e-9:
        lane, threshold = torch.int8, int(round(q8)) - 128
    else:
        lane, threshold = torch.int16, int(round(p * 65536)) - 32768
    per_word = 8 // lane.itemsize
    words = torch.empty(-(-n // per_word), dtype=torch.int64).random_(-(2**63), None, generator=generator)
    # each signed lane is uniform over [-2^(k-1), 2^(k-1)): P(lane < threshold) = round(2^k p) / 2^k
    keep = words.view(lane)[:n] >= threshold
    return keep.view(torch.uint8).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout of x float [...] (the distribution and scaling of ``F.dropout``)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    # a constant mask: autograd's multiply keeps only the mask for the backward (grad * mask)
    return x * keep_mask(x.shape, p).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the fast CPU masks of ``keep_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
