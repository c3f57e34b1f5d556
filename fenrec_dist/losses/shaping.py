"""Similarity shaping (FENRec §6) of contrastive logits after the warm-up."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
