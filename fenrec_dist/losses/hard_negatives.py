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
) -> torch.Tensor:
    """Similarities h_an . z_a for every anchor a and key n.

    Args:
        anchors: float [N, d], z_a (gradient flows to these).
        keys: float [M, d], z_n (treated as constants: the hard negatives are detached).
        lam: float or float [N, M], the mix toward the anchor (0 = the key itself).

    Returns:
        float [N, M], the raw (unshaped) similarity of each hard negative to its anchor.
    """
    a_det = anchors.detach()
    k_det = keys.detach()
    na = a_det.norm(dim=1).clamp_min(eps)  # [N]
    nk = k_det.norm(dim=1).clamp_min(eps)  # [M]
    cos = (a_det @ k_det.t()) / (na[:, None] * nk[None, :])  # [N, M], constant
    lam_t = torch.as_tensor(lam, dtype=anchors.dtype, device=anchors.device)
    denom = torch.sqrt(((1 - lam_t) ** 2 + lam_t**2 + 2 * lam_t * (1 - lam_t) * cos).clamp_min(eps))
    # h_an = nk * ((1-lam) k_n/nk + lam a_det/na) / denom  ->  h_an . z_a, linear in z_a:
    toward_key = anchors @ k_det.t()  # z_a . z_n (grad to anchors only)
    toward_self = (anchors * a_det).sum(dim=1) / na  # z_a . a_det / |a|  -> |z_a| in value
    return ((1 - lam_t) * toward_key + lam_t * nk[None, :] * toward_self[:, None]) / denom


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
