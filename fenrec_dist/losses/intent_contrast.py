"""Intent contrastive learning (ICSRec's coarse and fine terms) as weighted InfoNCE.

Every softmax is computed in log space: each negative block's weight enters as
``log w`` added to its logits, then one logsumexp. The reference divides
exponentials and takes a log, which overflows to NaN on the hard-negative path.

    loss_a = -log( e^pos_a / (e^pos_a + sum_n e^neg_an + sum_j e^noise_aj + w sum_n e^hard_an) )
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fenrec_dist.losses.shaping import Shaping


@dataclass
class NegativeBlock:
    """One family of negatives for every anchor.

    logits: float [N, M] raw similarities (before shaping) of anchor rows to M negatives.
    weight: the block's weight w in the softmax denominator (added as log w).
    mask: bool [N, M] or None; True marks an excluded entry (a false negative).
    """

    logits: torch.Tensor
    weight: float = 1.0
    mask: torch.Tensor | None = None


def weighted_info_nce(pos: torch.Tensor, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """Mean over anchors of the weighted InfoNCE loss.

    Args:
        pos: float [N], raw similarity of each anchor to its positive.
        blocks: negative families; weight-0 blocks are skipped.
        shaping: applied to positives and negatives (identity when disabled).

    Returns:
        scalar loss.
    """
    pos_l = shaping.positive(pos)
    return (denominator_lse(pos_l, blocks, shaping) - pos_l).mean()


def denominator_lse(pos_logits: torch.Tensor, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """float [N]: log of the softmax denominator, log(e^pos + sum_blocks w sum e^neg).

    Args:
        pos_logits: float [N], the already shaped positive logits.
    """
    parts = [pos_logits[:, None]]
    for b in blocks:
        if b.weight <= 0 or b.logits.shape[1] == 0:
            continue
        l = shaping.negative(b.logits)
        if b.weight != 1.0:
            l = l + math.log(b.weight)
        if b.mask is not None:
            l = l.masked_fill(b.mask, float("-inf"))
        parts.append(l)
    return torch.logsumexp(torch.cat(parts, dim=1), dim=1)


@dataclass
class ContrastBatch:
    """The 2B anchors of one contrastive term and their in-batch structure.

    z: float [N = 2B, d], the two views stacked: rows i and (i + B) mod 2B are positives.
    sims: float [N, N], z z^T / temperature.
    mask: bool [N, N], True where the column is not a valid negative for the row
        (itself, its positive, and every row of the same group: same target or intent).
    temperature: the similarity temperature.
    """

    z: torch.Tensor
    sims: torch.Tensor
    mask: torch.Tensor
    temperature: float

    @property
    def positives(self) -> torch.Tensor:
        """float [N]: similarity of each row to its positive."""
        n = self.z.shape[0]
        idx = torch.arange(n, device=self.z.device)
        return self.sims[idx, (idx + n // 2) % n]


def make_contrast_batch(view1: torch.Tensor, view2: torch.Tensor, groups: torch.Tensor, temperature: float) -> ContrastBatch:
    """Stack two views and build the false-negative mask.

    Args:
        view1: float [B, d] anchors' representations.
        view2: float [B, d] their positives (same-target partners, or intent centroids).
        groups: long [B] group id of each pair (target item, or intent id); rows sharing
            a group never serve as each other's negatives.
        temperature: similarities are divided by it.
    """
    z = torch.cat([view1, view2], dim=0)
    n = z.shape[0]
    g = torch.cat([groups, groups])
    mask = g[:, None] == g[None, :]
    idx = torch.arange(n, device=z.device)
    mask[idx, idx] = True
    mask[idx, (idx + n // 2) % n] = True
    return ContrastBatch(z=z, sims=(z @ z.t()) / temperature, mask=mask, temperature=temperature)


def contrast_loss(batch: ContrastBatch, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """Weighted InfoNCE of ``batch`` against the given negative blocks."""
    return weighted_info_nce(batch.positives, blocks, shaping)
