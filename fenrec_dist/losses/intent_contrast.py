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
    col_log_weight: float [M] or None; added to every row's shaped logits (a column standing
        for c identical columns carries log c: ``dedup_intent_batch``).
    """

    logits: torch.Tensor
    weight: float = 1.0
    mask: torch.Tensor | None = None
    col_log_weight: torch.Tensor | None = None


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


def denominator_lse(pos_logits: torch.Tensor | None, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """float [N]: log of the softmax denominator, log(e^pos + sum_blocks w sum e^neg).

    Computed by ``_DenominatorLSE`` (one exp per entry, shaping and its derivative by hand);
    ``denominator_lse_plain`` is the same in plain autograd ops (tests/test_losses.py).

    Args:
        pos_logits: float [N], the already shaped positive logits, or None for the negatives
            alone, log(sum_blocks w sum e^neg) (then every row needs an unmasked entry).
    """
    used = [b for b in blocks if b.weight > 0 and b.logits.shape[1] > 0]
    spec = tuple((b.weight, b.mask, b.col_log_weight) for b in used)
    return _DenominatorLSE.apply(spec, shaping, pos_logits, *(b.logits for b in used))


def denominator_lse_plain(pos_logits: torch.Tensor | None, blocks: list[NegativeBlock],
                          shaping: Shaping) -> torch.Tensor:
    """The plain form of ``denominator_lse``: shape, weight and mask each block, one logsumexp."""
    parts = [] if pos_logits is None else [pos_logits[:, None]]
    for b in blocks:
        if b.weight <= 0 or b.logits.shape[1] == 0:
            continue
        l = shaping.negative(b.logits)
        if b.weight != 1.0:
            l = l + math.log(b.weight)
        if b.col_log_weight is not None:
            l = l + b.col_log_weight[None, :]
        if b.mask is not None:
            l = l.masked_fill(b.mask, float("-inf"))
        parts.append(l)
    return torch.logsumexp(torch.cat(parts, dim=1), dim=1)


class _DenominatorLSE(torch.autograd.Function):
    """lse_a = log([e^pos_a +] sum_k w_k sum_n e^{shape(s_k,an)}) over blocks s_k [N, M_k].

    Autograd of the plain form concatenates the blocks, runs exp twice per entry (forward and
    logsumexp's backward) and keeps a temporary per elementwise op; here each block is shaped
    into one buffer that becomes e^{l - max} in place and is reused by the backward:
    d lse / d s = softmax weight * shape'(s). The shaping is written in sigma = sigmoid(a),
    a = 2 s / tau, and w = a sigma (t = tanh(s / tau) = 2 sigma - 1):
        shape(s)  = s (t + m)                 = tau w + (m - 1) s
        shape'(s) = t + m + s (1 - t^2) / tau  = 2 (sigma + w - w sigma) + m - 1
    5 passes over a block for the shaped logits (6 with tanh) and 5 in-place passes for its
    gradient (9 with tanh, and a new buffer).
    """

    @staticmethod
    def forward(ctx, spec, shaping, pos, *logits):  # type: ignore[no-untyped-def]
        on = shaping.enabled
        tau, m = shaping.tau, shaping.margin
        exps, sigs, ws = [], [], []
        for s, (w, mask, colw) in zip(logits, spec):
            if on:
                av = torch.mul(s, 2.0 / tau)
                sig = torch.sigmoid(av)
                wv = av.mul_(sig)  # a sigma
                l = torch.mul(s, m - 1.0).add_(wv, alpha=tau)  # s * (tanh(s / tau) + m)
            else:
                sig = wv = None
                l = s.clone()
            if w != 1.0:
                l.add_(math.log(w))
            if colw is not None:
                l.add_(colw[None, :])
            if mask is not None:
                l.masked_fill_(mask, float("-inf"))
            exps.append(l)
            sigs.append(sig)
            ws.append(wv)
        maxes = [l.amax(dim=1) for l in exps] if pos is None else [pos] + [l.amax(dim=1) for l in exps]
        top = torch.stack(maxes, dim=1).amax(dim=1)  # [N]
        total = torch.zeros_like(top) if pos is None else (pos - top).exp()
        for l in exps:
            total = total + l.sub_(top[:, None]).exp_().sum(dim=1)  # l is now e^{l - top}
        ctx.shaping = shaping
        ctx.exps, ctx.sigs, ctx.ws = exps, sigs, ws
        ctx.has_pos = pos is not None
        ctx.save_for_backward(pos if pos is not None else top, top, total)
        return top + total.log()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        pos, top, total = ctx.saved_tensors
        m = ctx.shaping.margin
        exps, sigs, ws = ctx.exps, ctx.sigs, ctx.ws
        if exps is None:
            raise RuntimeError("denominator_lse: backward through the same graph twice")
        ctx.exps = ctx.sigs = ctx.ws = None
        r = (grad / total)[:, None]  # [N, 1]: d lse = (e^{l - top} / total) dl
        grads = []
        for i, (e, sig, wv) in enumerate(zip(exps, sigs, ws)):
            if not ctx.needs_input_grad[3 + i]:
                grads.append(None)
                continue
            if sig is None:
                grads.append(e.mul_(r))  # masked entries: e = 0
                continue
            d = wv.addcmul_(wv, sig, value=-1.0).add_(sig)  # sigma + w - w sigma
            d.mul_(2.0 * r).add_((m - 1.0) * r)  # r shape'(s)
            grads.append(e.mul_(d))
        gpos = (pos - top).exp_().mul_(r[:, 0]) if ctx.has_pos and ctx.needs_input_grad[2] else None
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
    gram: float [R, N], z[rows] z^T (the product ``sims`` is divided from; the same tensor
        when the temperature is 1), reused by the hard negatives; None to recompute it.
    col_log_weight: float [N] or None, log of how many identical columns each column stands
        for (``dedup_intent_batch``); in-batch and hard blocks carry it.
    inverse: long [B] or None; set by ``dedup_intent_batch``, whose rows are the B samples
        then U distinct centroids: the centroid row (0..U-1) of each sample.
    """

    z: torch.Tensor
    sims: torch.Tensor
    mask: torch.Tensor
    temperature: float
    rows: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    col_log_weight: torch.Tensor | None = None
    inverse: torch.Tensor | None = None

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
        """float [R]: similarity of each computed row to its positive; for a deduplicated
        intent batch, float [B]: each sample's to its centroid (which is also the positive of
        the sample's own centroid row in the full batch)."""
        if self.inverse is not None:
            b = self.inverse.shape[0]
            return self.sims[torch.arange(b, device=self.z.device), b + self.inverse]
        n = self.z.shape[0]
        rows = self.row_ids
        return self.sims[torch.arange(len(rows), device=self.z.device), (rows + n // 2) % n]

    def detach(self) -> "ContrastBatch":
        return ContrastBatch(self.z.detach(), self.sims.detach(), self.mask, self.temperature, self.rows,
                             None if self.gram is None else self.gram.detach(), self.col_log_weight, self.inverse)


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
    gram = (z if rows is None else z[rows]) @ z.t()
    sims = gram / temperature if temperature != 1.0 else gram  # x / 1 == x: skip the pass and its node
    return ContrastBatch(z=z, sims=sims, mask=mask, temperature=temperature, rows=rows, gram=gram)


def dedup_intent_batch(view: torch.Tensor, ids: torch.Tensor, centroids: torch.Tensor,
                       temperature: float) -> ContrastBatch:
    """The fine term's batch with each intent's centroid once.

    ``make_contrast_batch(view, centroids[ids], ids, T)`` stacks B samples and B centroids, but
    samples of one intent share their centroid: those centroid rows are equal, and so are their
    masks (every row of the intent), their negatives and their columns. Here the U distinct
    centroids appear once each: rows and columns are the B samples then the U centroids, a
    centroid column carries log(count) (``col_log_weight``), and ``intent_contrast_loss`` gives
    each sample's centroid row its own positive. The [N, N] blocks shrink from 2B to B + U
    (Beauty, k = 256: U is about 145 of 256 at every stage of training).

    Args:
        view: float [B, d] the samples' representations.
        ids: long [B] their intents.
        centroids: float [k, d] the normalised centroids (constants).
        temperature: similarities are divided by it.
    """
    uniq, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    b = view.shape[0]
    z = torch.cat([view, centroids[uniq].to(view.dtype)], dim=0)
    g = torch.cat([ids, uniq])
    mask = g[:, None] == g[None, :]  # the same group: itself, its positive and its intent
    gram = z @ z.t()
    sims = gram / temperature if temperature != 1.0 else gram
    col_log_weight = torch.cat([z.new_zeros(b), counts.to(z.dtype).log()])
    return ContrastBatch(z=z, sims=sims, mask=mask, temperature=temperature, gram=gram,
                         col_log_weight=col_log_weight, inverse=inverse)


def intent_contrast_loss(batch: ContrastBatch, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """The loss of a ``dedup_intent_batch``: equal to ``contrast_loss`` of the full batch.

    Each row's negatives are summed once, log S_n = ``denominator_lse(None, ...)`` [B + U];
    sample i has loss logaddexp(p_i, S_i) - p_i and its centroid row (in the full batch)
    logaddexp(p_i, S_{B + inverse_i}) - p_i, with p_i the shaped positive; the mean is over
    the full batch's 2B rows. Needs U >= 2 (so that every centroid row has a negative).
    """
    inverse = batch.inverse
    if inverse is None:
        raise ValueError("intent_contrast_loss needs a batch from dedup_intent_batch")
    b = inverse.shape[0]
    pos = shaping.positive(batch.positives)  # [B]
    neg = denominator_lse(None, blocks, shaping)  # [B + U]
    own = torch.logaddexp(pos, neg[:b])
    cent = torch.logaddexp(pos, neg[b:][inverse])
    return (own.sum() + cent.sum() - 2 * pos.sum()) / (2 * b)


def contrast_loss(batch: ContrastBatch, blocks: list[NegativeBlock], shaping: Shaping) -> torch.Tensor:
    """Weighted InfoNCE of ``batch``'s computed rows against the given negative blocks: the
    mean over all N rows when every row is computed, else these rows' share of it (sum / N)."""
    return weighted_info_nce(batch.positives, blocks, shaping,
                             None if batch.rows is None else batch.z.shape[0])
