"""Similarity shaping (FENRec §6) of contrastive logits after the warm-up."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def tanh_scaled(s: torch.Tensor, tau: float) -> torch.Tensor:
    """tanh(s / tau) as a new tensor, computed as 2 sigmoid(2 s / tau) - 1.

    PyTorch's CPU ``tanh`` kernel took 1.2 ms per 512 x 512 block here against 0.5 ms for
    this form (one vectorised exponential; ``bench/bench_score.py`` times both); the two
    agree to 3e-7 (tests/test_losses.py). Used on the [N, M] similarity blocks of the
    shaped contrastive denominators.
    """
    return torch.mul(s, 2.0 / tau).sigmoid_().mul_(2.0).sub_(1.0)


@dataclass(frozen=True)
class Shaping:
    """pos: s * tanh(s / tau); neg: s * (tanh(s / tau) + m). ``enabled=False`` is the identity."""

    enabled: bool = False
    tau: float = 8.0
    margin: float = 0.2

    def positive(self, s: torch.Tensor) -> torch.Tensor:
        """s float [...] raw positive similarities -> shaped logits of the same shape."""
        return s * torch.tanh(s / self.tau) if self.enabled else s

    def negative(self, s: torch.Tensor) -> torch.Tensor:
        """s float [...] raw negative similarities -> shaped logits of the same shape."""
        return s * (torch.tanh(s / self.tau) + self.margin) if self.enabled else s
