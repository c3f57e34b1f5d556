"""Noise negatives (FENRec §5): Gaussian vectors nudged toward being hard.

rho * B vectors from N(0, I), then ``steps`` steps of normalised gradient ascent
(each vector moves ``step_size`` along its own normalised gradient) on the coarse
contrastive loss; the result is detached and used as extra negatives (weight 1).
"""

from __future__ import annotations

from typing import Callable

import torch

from fenrec_dist.losses.shaping import Shaping


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
    if shaping.enabled:
        return _nudge_shaped(x, z, fixed, shaping, temperature, steps, step_size, n, reduce)
    for _ in range(steps):
        q = z @ x.t()
        if temperature != 1.0:
            q.div_(temperature)
        total = torch.logaddexp(fixed, torch.logsumexp(q, dim=1))
        q.sub_(total[:, None]).exp_()  # q_ir
        g = q.t() @ z
        if reduce is not None:
            g = reduce(g)
        g.div_(n * temperature)
        x = x + step_size * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x


def _nudge_shaped(x: torch.Tensor, z: torch.Tensor, fixed: torch.Tensor, shaping: Shaping, temperature: float,
                  steps: int, step_size: float, n: int,
                  reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """The shaped ascent of ``nudge_noise_contrast`` in terms of sigma = sigmoid(a), a = 2 s / tau.

    With t = tanh(s / tau) = 2 sigma - 1 and w = a sigma:
        f(s)  = s (t + m)                   = tau (w + (m - 1) a / 2)
        f'(s) = t + m + s (1 - t^2) / tau    = 2 (sigma + w - w sigma) + m - 1
    The product gives a directly (z is scaled by 2 / (T tau) first, [N, d] not [N, R]); the
    softmax shares q_ir = e^{f - total_i} are e^{f - max_i} times a per-row factor, which is
    folded into z's rows before the second product. 14 passes over the [N, R] block a step
    instead of 21: the ascent takes 0.81-0.85 of the tanh form's time on Beauty's shapes
    (``bench/bench_parts.py``; the two matrix products are 40% of it), the same vectors to
    2.4e-7; equal to autograd's ascent (tests/test_losses.py).
    """
    tau, m = shaping.tau, shaping.margin
    za = z * (2.0 / (temperature * tau))
    for _ in range(steps):
        a = za @ x.t()  # [N, R]
        sig = torch.sigmoid(a)
        w = a * sig
        f = torch.mul(a, tau * (m - 1.0) / 2.0).add_(w, alpha=tau)
        top = f.amax(dim=1)
        e = f.sub_(top[:, None]).exp_()  # e^{f - max}
        total = torch.logaddexp(fixed, top + e.sum(dim=1).log())
        deriv = w.addcmul_(w, sig, value=-1.0).add_(sig).mul_(2.0).add_(m - 1.0)  # f'(s); w is spent
        g = e.mul_(deriv).t() @ (z * (top - total).exp_()[:, None])
        if reduce is not None:
            g = reduce(g)
        g.div_(n * temperature)
        x = x + step_size * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x
