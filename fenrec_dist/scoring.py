"""Scoring representations against the whole item table, fast on every device."""

from __future__ import annotations

import torch


def _onednn_linear():  # type: ignore[no-untyped-def]
    """PyTorch's oneDNN linear op (what inductor emits on CPU), or None where absent."""
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_LINEAR = _onednn_linear()


def score_items(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scores of every item: z float [B, d] x weights float [I + 1, d] -> float [B, I + 1] = z @ weights.T.

    On CPU in float32 the product goes through oneDNN (``mkldnn._linear_pointwise``) when
    PyTorch has it: this shape (a short inner dimension, d = 64, against a long catalogue)
    hits a slow path of the MKL sgemm that the CPU wheel uses for ``@`` on AMD processors:
    about 2x slower here (21.0 vs 11.3 ms for 256 x 12,102 at 1 thread; bench/micro/bench_score.py,
    which also times the whole soft-label loss: 55.6 vs 44.0 ms forward + backward). Same values
    (tests/test_losses.py); elsewhere, under autograd, and as a fallback, plain ``z @ weights.T``.
    """
    if (_LINEAR is not None and z.device.type == "cpu" and z.dtype == torch.float32
            and weights.dtype == torch.float32 and z.dim() == 2
            and not (torch.is_grad_enabled() and (z.requires_grad or weights.requires_grad))):  # no autograd formula
        try:
            return _LINEAR(z.contiguous(), weights.contiguous(), None, "none", [], "")
        except RuntimeError:
            pass
    return z @ weights.t()
