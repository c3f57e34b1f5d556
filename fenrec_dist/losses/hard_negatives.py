"""Enduring hard negatives (FENRec §4) in closed form.

For anchor a and in-batch negative n the hard negative is n pulled toward a on the
unit sphere, keeping n's length:

    h_an = |z_n| * normalize((1 - lam) z_n / |z_n| + lam z_a / |z_a|)     (detached)

Only its similarity to the anchor is needed. With c = cos(z_a, z_n):

    h_an . z_a = |z_n| |z_a| ((1 - lam) c + lam) / sqrt((1 - lam)^2 + lam^2 + 2 lam (1 - lam) c)

so the Gram matrix and the norms suffice; the reference's [2B, 2B, d] tensor is never
built. Because h is detached, the gradient reaches z_a only (d/dz_a = h_an); the
formula below is written so autograd gives exactly that.
"""

from __future__ import annotations

import torch


def hard_negative_logits(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    lam: torch.Tensor | float,
    eps: float = 1e-12,
    gram: torch.Tensor | None = None,
) -> torch.Tensor:
    """Similarities h_an . z_a for every anchor a and key n.

    Args:
        anchors: float [N, d], z_a (gradient flows to these).
        keys: float [M, d], z_n (treated as constants: the hard negatives are detached).
        lam: float or float [N, M], the mix toward the anchor (0 = the key itself).
        gram: float [N, M], anchors @ keys.T when the caller has it (the contrastive batch's
            similarity product), else computed here; read, never written.

    Returns:
        float [N, M], the raw (unshaped) similarity of each hard negative to its anchor.
    """
    lam_t = lam if isinstance(lam, float) else torch.as_tensor(lam, dtype=anchors.dtype, device=anchors.device)
    return _HardNegativeLogits.apply(anchors, keys.detach(), lam_t, eps,
                                     None if gram is None else gram.detach())


class _HardNegativeLogits(torch.autograd.Function):
    """h_an . z_a = ((1 - lam) z_a . z_n + lam |z_a| |z_n|) / denom_an with
    denom = sqrt((1 - lam)^2 + lam^2 + 2 lam (1 - lam) cos), from one Gram matrix.

    h is detached, so d/dz_a = h_an = ((1 - lam) z_n + lam |z_n| z_a / |z_a|) / denom_an and
    the gradient of sum_n G_an h_an . z_a is ((1 - lam) G / denom) Z + (z_a / |z_a|) ((lam G / denom) |z|).
    Written by hand, this is a third of the elementwise passes of autograd over the formula.
    """

    @staticmethod
    def forward(ctx, anchors, keys, lam, eps, gram=None):  # type: ignore[no-untyped-def]
        a = anchors.detach()
        na = a.norm(dim=1).clamp_min(eps)  # [N]
        nk = keys.norm(dim=1).clamp_min(eps)  # [M]
        if gram is None:
            gram = a @ keys.t()  # [N, M]
        outer = na[:, None] * nk[None, :]
        cos = gram / outer
        denom = cos.mul_(2 * lam * (1 - lam)).add_((1 - lam) ** 2 + lam**2).clamp_min_(eps).sqrt_()
        if isinstance(lam, float):  # gram may be the caller's: written into outer instead
            value = outer.mul_(lam).add_(gram, alpha=1 - lam)
        else:
            value = outer.mul_(lam).add_(gram * (1 - lam))
        ctx.save_for_backward(a, keys, na, nk, denom, lam if isinstance(lam, torch.Tensor) else None)
        ctx.lam = lam
        return value.div_(denom)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        a, keys, na, nk, denom, lam_t = ctx.saved_tensors
        lam = ctx.lam if lam_t is None else lam_t
        gd = grad / denom  # [N, M]
        if lam_t is None:
            along_key = gd @ keys
            along_key.mul_(1 - lam)
            along_self = gd @ nk * lam
        else:
            along_key = (gd * (1 - lam)) @ keys
            along_self = gd.mul_(lam) @ nk
        return along_key.add_(a * (along_self / na)[:, None]), None, None, None, None


def explicit_hard_negatives(anchors: torch.Tensor, keys: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """The reference construction: float [N, M, d] hard-negative vectors (tests only)."""
    a = anchors.detach()
    k = keys.detach()
    ua = a / a.norm(dim=1, keepdim=True)
    uk = k / k.norm(dim=1, keepdim=True)
    lam_t = torch.as_tensor(lam, dtype=a.dtype, device=a.device)
    if lam_t.dim() == 2:
        lam_t = lam_t[..., None]
    mix = (1 - lam_t) * uk[None, :, :] + lam_t * ua[:, None, :]
    mix = mix / mix.norm(dim=2, keepdim=True)
    return k.norm(dim=1)[None, :, None] * mix


def sample_lam(shape: tuple[int, ...], lam_min: float, lam_max: float, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor | float:
    """lam ~ U[lam_min, lam_max] per (anchor, key); a float when the range is a point."""
    if lam_max <= lam_min:
        return float(lam_min)
    u = torch.rand(shape, generator=generator, device=device)
    return lam_min + (lam_max - lam_min) * u
