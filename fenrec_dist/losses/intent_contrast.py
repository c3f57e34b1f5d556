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

from fenrec_dist.losses.shaping import Shaping, tanh_scaled


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


def weighted_info_nce(pos: torch.Tensor, blocks: list[NegativeBlock], shaping: Shaping,
                      n_total: int | None = None) -> torch.Tensor:
    """Mean over anchors of the weighted InfoNCE loss.

    Args:
        pos: float [N], raw similarity of each anchor to its positive.
        blocks: negative families; weight-0 blocks are skipped.
        shaping: applied to positives and negatives (identity when disabled).
        n_total: divide the sum over these N anchors by ``n_total`` instead of N (a
            process computing some rows of a larger batch returns its share of the mean).

    Returns:
        scalar loss.
    """
    pos_l = shaping.positive(pos)
    per_row = denominator_lse(pos_l, blocks, shaping) - pos_l
    return per_row.mean() if n_total is None else per_row.sum() / n_total


def denominator_lse(pos_logits: torch.Tensor, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """float [N]: log of the softmax denominator, log(e^pos + sum_blocks w sum e^neg).

    Computed by ``_DenominatorLSE`` (one exp per entry, shaping and its derivative by hand);
    ``denominator_lse_plain`` is the same in plain autograd ops (tests/test_losses.py).

    Args:
        pos_logits: float [N], the already shaped positive logits.
    """
    used = [b for b in blocks if b.weight > 0 and b.logits.shape[1] > 0]
    spec = tuple((b.weight, b.mask) for b in used)
    return _DenominatorLSE.apply(spec, shaping, pos_logits, *(b.logits for b in used))


def denominator_lse_plain(pos_logits: torch.Tensor, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """The plain form of ``denominator_lse``: shape, weight and mask each block, one logsumexp."""
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


class _DenominatorLSE(torch.autograd.Function):
    """lse_a = log(e^pos_a + sum_k w_k sum_n e^{shape(s_k,an)}) over blocks s_k [N, M_k].

    Autograd of the plain form concatenates the blocks, runs exp twice per entry (forward and
    logsumexp's backward) and keeps a temporary per elementwise op; here each block is shaped
    into one buffer that becomes e^{l - max} in place and is reused by the backward:
    d lse / d s = softmax weight * shape'(s), shape'(s) = tanh(s/tau) + m + s (1 - tanh^2) / tau.
    """

    @staticmethod
    def forward(ctx, spec, shaping, pos, *logits):  # type: ignore[no-untyped-def]
        on = shaping.enabled
        exps, tanhs = [], []
        for s, (w, mask) in zip(logits, spec):
            if on:
                t = tanh_scaled(s, shaping.tau)
                l = t.add(shaping.margin).mul_(s)  # s * (tanh(s / tau) + m)
            else:
                t = None
                l = s.clone()
            if w != 1.0:
                l.add_(math.log(w))
            if mask is not None:
                l.masked_fill_(mask, float("-inf"))
            exps.append(l)
            tanhs.append(t)
        top = torch.stack([pos] + [l.amax(dim=1) for l in exps], dim=1).amax(dim=1)  # [N]
        total = (pos - top).exp()
        for l in exps:
            total = total + l.sub_(top[:, None]).exp_().sum(dim=1)  # l is now e^{l - top}
        ctx.shaping = shaping
        ctx.exps, ctx.tanhs = exps, tanhs
        ctx.save_for_backward(pos, top, total, *logits)
        return top + total.log()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        pos, top, total, *logits = ctx.saved_tensors
        shaping = ctx.shaping
        r = (grad / total)[:, None]  # [N, 1]: d lse = (e^{l - top} / total) dl
        grads = []
        for i, (s, e, t) in enumerate(zip(logits, ctx.exps, ctx.tanhs)):
            if not ctx.needs_input_grad[3 + i]:
                grads.append(None)
                continue
            g = e.mul(r)  # masked entries: e = 0
            if t is not None:
                d = t.square().neg_().add_(1.0).mul_(s).div_(shaping.tau).add_(t).add_(shaping.margin)
                g.mul_(d)
            grads.append(g)
        ctx.exps = ctx.tanhs = None
        gpos = (pos - top).exp_().mul_(r[:, 0]) if ctx.needs_input_grad[2] else None
        return (None, None, gpos, *grads)


@dataclass
class ContrastBatch:
    """The 2B anchors of one contrastive term and their in-batch structure.

    z: float [N = 2B, d], the two views stacked: rows i and (i + B) mod 2B are positives.
    rows: long [R] the rows whose loss this process computes (data-parallel workers split
        the N rows between them), or None for all N (then R = N).
    sims: float [R, N], z[rows] z^T / temperature.
    mask: bool [R, N], True where the column is not a valid negative for the row
        (itself, its positive, and every row of the same group: same target or intent).
    temperature: the similarity temperature.
    """

    z: torch.Tensor
    sims: torch.Tensor
    mask: torch.Tensor
    temperature: float
    rows: torch.Tensor | None = None

    @property
    def anchors(self) -> torch.Tensor:
        """float [R, d]: the representations of the computed rows."""
        return self.z if self.rows is None else self.z[self.rows]

    @property
    def row_ids(self) -> torch.Tensor:
        """long [R]: indices (into z) of the computed rows."""
        return torch.arange(self.z.shape[0], device=self.z.device) if self.rows is None else self.rows

    @property
    def positives(self) -> torch.Tensor:
        """float [R]: similarity of each computed row to its positive."""
        n = self.z.shape[0]
        rows = self.row_ids
        return self.sims[torch.arange(len(rows), device=self.z.device), (rows + n // 2) % n]

    def detach(self) -> "ContrastBatch":
        return ContrastBatch(self.z.detach(), self.sims.detach(), self.mask, self.temperature, self.rows)


def local_rows(offset: int, count: int, half: int, device: torch.device | None = None) -> torch.Tensor:
    """long [2 count]: the rows of a stacked two-view batch (2 x ``half`` rows) that belong to
    a process holding pairs offset..offset+count-1: those pairs' first views, then their second."""
    first = torch.arange(offset, offset + count, device=device)
    return torch.cat([first, first + half])


def make_contrast_batch(view1: torch.Tensor, view2: torch.Tensor, groups: torch.Tensor, temperature: float,
                        rows: torch.Tensor | None = None) -> ContrastBatch:
    """Stack two views and build the false-negative mask.

    Args:
        view1: float [B, d] anchors' representations.
        view2: float [B, d] their positives (same-target partners, or intent centroids).
        groups: long [B] group id of each pair (target item, or intent id); rows sharing
            a group never serve as each other's negatives.
        temperature: similarities are divided by it.
        rows: long [R] the rows of the stacked [2B, d] batch to compute (``local_rows``), or
            None for all; the columns are always all 2B rows.
    """
    z = torch.cat([view1, view2], dim=0)
    n = z.shape[0]
    g = torch.cat([groups, groups])
    idx = torch.arange(n, device=z.device) if rows is None else rows
    r = torch.arange(len(idx), device=z.device)
    mask = g[idx][:, None] == g[None, :]
    mask[r, idx] = True
    mask[r, (idx + n // 2) % n] = True
    sims = (z if rows is None else z[rows]) @ z.t()
    if temperature != 1.0:  # x / 1 == x: skip the pass and its backward node
        sims = sims / temperature
    return ContrastBatch(z=z, sims=sims, mask=mask, temperature=temperature, rows=rows)


def contrast_loss(batch: ContrastBatch, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """Weighted InfoNCE of ``batch``'s computed rows against the given negative blocks: the
    mean over all N rows when every row is computed, else these rows' share of it (sum / N)."""
    return weighted_info_nce(batch.positives, blocks, shaping,
                             None if batch.rows is None else batch.z.shape[0])
