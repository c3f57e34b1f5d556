"""Noise negatives (FENRec §5): Gaussian vectors nudged toward being hard.

rho * B vectors from N(0, I), then ``steps`` steps of normalised gradient ascent
(each vector moves ``step_size`` along its own normalised gradient) on the coarse
contrastive loss; the result is detached and used as extra negatives (weight 1).
"""

from __future__ import annotations

from typing import Callable

import torch

from fenrec_dist.losses.shaping import Shaping, tanh_scaled


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


@torch.no_grad()
def nudge_noise_contrast(
    noise: torch.Tensor,
    z: torch.Tensor,
    fixed: torch.Tensor,
    shaping: Shaping,
    temperature: float,
    steps: int,
    step_size: float,
    n_total: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``nudge_noise`` on the coarse loss, with its gradient written out (no autograd).

    The loss of the noise x [R, d] is mean_i(logaddexp(fixed_i, lse_r f(s_ir)) - pos_i),
    s = z x^T / T and f the negative shaping, so
    d loss / d x_r = (1/N) sum_i q_ir f'(s_ir) z_i / T with q_ir = e^{f(s_ir) - total_i}
    (the noise entry's share of row i's denominator) and f'(s) = tanh(s/tau) + m +
    s (1 - tanh^2(s/tau)) / tau (1 without shaping). Each step is two [N, d] x [d, R]
    matrix products and a few in-place passes over the [N, R] block, where autograd keeps
    a temporary per op and runs the exponential twice.

    Args:
        noise: float [R, d] initial vectors.
        z: float [N, d] detached representations of the coarse batch's rows (of this process).
        fixed: float [N] log of everything else in each row's denominator (positive included).
            The positive logits only shift the loss, so they are not needed.
        shaping, temperature: as in the coarse loss.
        n_total: the batch's row count when ``z`` holds some of its rows (default N).
        reduce: sums the [R, d] gradient over the processes that hold the other rows
            (data-parallel workers); None in one process.

    Returns:
        float [R, d], detached; equals ``nudge_noise`` with that loss (tests/test_losses.py).
    """
    x = noise.detach()
    n = z.shape[0] if n_total is None else n_total
    for _ in range(steps):
        s = z @ x.t()
        if temperature != 1.0:
            s.div_(temperature)
        if shaping.enabled:
            t = tanh_scaled(s, shaping.tau)
            q = torch.add(t, shaping.margin).mul_(s)  # f(s)
        else:
            t = None
            q = s.clone()
        total = torch.logaddexp(fixed, torch.logsumexp(q, dim=1))
        q.sub_(total[:, None]).exp_()  # q_ir
        if t is not None:  # q * f'(s)
            d = torch.mul(t, t).neg_().add_(1.0).mul_(s).div_(shaping.tau).add_(t).add_(shaping.margin)
            q.mul_(d)
        g = q.t() @ z
        if reduce is not None:
            g = reduce(g)
        g.div_(n * temperature)
        x = x + step_size * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x
