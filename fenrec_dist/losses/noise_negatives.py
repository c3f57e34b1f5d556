"""Noise negatives (FENRec §5): Gaussian vectors nudged toward being hard.

rho * B vectors from N(0, I), then ``steps`` steps of normalised gradient ascent
(each vector moves ``step_size`` along its own normalised gradient) on the coarse
contrastive loss; the result is detached and used as extra negatives (weight 1).
"""

from __future__ import annotations

from typing import Callable

import torch


def nudge_noise(
    noise: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    step_size: float,
) -> torch.Tensor:
    """Gradient ascent on ``loss_fn`` with respect to the noise.

    Args:
        noise: float [R, d] initial vectors.
        loss_fn: maps noise [R, d] to a scalar loss; must not need gradients of the model
            (call it with detached representations).
        steps: number of ascent steps.
        step_size: length of each per-vector step.

    Returns:
        float [R, d], detached.
    """
    x = noise.detach()
    for _ in range(steps):
        x = x.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(x), x)
        x = (x + step_size * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)).detach()
    return x


def draw_noise(rows: int, dim: int, generator: torch.Generator | None, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """float [rows, dim] standard Gaussian vectors (drawn on CPU for device-independent seeds)."""
    return torch.randn(rows, dim, generator=generator, dtype=dtype).to(device)
