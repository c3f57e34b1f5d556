"""Enduring transformation of per-anchor negatives (index-mined negatives).

Each anchor a has its own k mined keys n (from the epoch's FAISS index). As for the
in-batch hard negatives (``hard_negatives.py``), every key is pulled toward the anchor
on the unit sphere keeping its length, and only the similarity to the anchor is needed:

    h_an . z_a = |z_n| |z_a| ((1 - lam) c + lam) / sqrt((1 - lam)^2 + lam^2 + 2 lam (1 - lam) c)

with c = cos(z_a, z_n). The keys are constants (epoch-start representations); the
gradient reaches z_a only.
"""

from __future__ import annotations

import torch


def mined_negative_logits(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    lam: torch.Tensor | float,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Similarities h_an . z_a for every anchor a and each of its own keys.

    Args:
        anchors: float [N, d], z_a (gradient flows to these).
        keys: float [N, k, d], the anchor's own mined keys z_n (constants).
        lam: float or float [N, k], the mix toward the anchor (0 = the key itself).

    Returns:
        float [N, k], the raw (unshaped) similarity of each transformed key to its anchor.
    """
    a_det = anchors.detach()
    k_det = keys.detach().to(anchors.dtype)
    na = a_det.norm(dim=1).clamp_min(eps)  # [N]
    nk = k_det.norm(dim=2).clamp_min(eps)  # [N, k]
    toward_key = torch.einsum("nd,nkd->nk", anchors, k_det)  # z_a . z_n, grad to anchors only
    cos = toward_key.detach() / (na[:, None] * nk)
    lam_t = torch.as_tensor(lam, dtype=anchors.dtype, device=anchors.device)
    denom = torch.sqrt(((1 - lam_t) ** 2 + lam_t**2 + 2 * lam_t * (1 - lam_t) * cos).clamp_min(eps))
    toward_self = (anchors * a_det).sum(dim=1) / na  # |z_a| in value, d/dz_a = z_a/|z_a|
    return ((1 - lam_t) * toward_key + lam_t * nk * toward_self[:, None]) / denom
