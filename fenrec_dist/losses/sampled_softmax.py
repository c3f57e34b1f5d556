"""Sampled soft-label softmax for L_rec (``loss.rec_softmax: sampled``).

The full L_rec (``soft_labels.py``) scores every item for every anchor. Here each anchor's
soft-label window (the target and the next ``horizon`` training items, with their weights
w_k) is scored against a small candidate set instead:

- in-batch: the targets of the global batch (all workers; G items, shared by the rows);
- random: N items drawn with replacement, uniformly over 1..I or by training-target
  popularity (add-one smoothed), shared by the rows of the step;
- mined: K items per anchor given by the caller (the item index's top-scoring items for the
  anchor's representation; ``negatives/item_index.py``), optionally also as FENRec's enduring
  transform of them (pulled toward the anchor by lam, detached, weight w).

Loss of row b (positives counted once each, duplicates in the window only once):

    lse_b = logsumexp( {l_bp : p in window_b}
                     U {l_bm : m in mined_b, m not in window_b}
                     U {l_bs - c_s : s in shared, s not in window_b, s not in mined_b}
                     U {log w + z_b . h_bm : enduring} )
    L_b   = lse_b - sum_k w_bk l_{b, window_bk}

False negatives are removed with the sample's own training window only (never validation
or test items). With the logQ correction c_s = log E[count of s in the step's draw] =
log(G p_s + N q_s) (p the in-batch target distribution, q the random one), the shared sum
is an unbiased estimate of the catalogue's sum over the items that are neither positive nor
mined (a Horvitz-Thompson estimate restricted by an indicator stays unbiased), so the
denominator estimates the full softmax's; without it (c = 0) in-batch and random candidates
count once per draw (plain sampled softmax). The step's item rows (window, shared, mined) are
looked up once, by their unique ids (``unique_lookup``); the mined items' logits come from
``gathered_dot``, whose backward avoids autograd's [B, K, d] temporaries; with ``sparse_grad`` the item table's
gradient is a coalesced sparse [I + 1, d] tensor of those rows only (``optim/sparse_adam.py``),
else a dense one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fenrec_dist.losses.soft_labels import soft_label_weights


@dataclass(frozen=True)
class SampledSoftmaxSpec:
    """What the sampled L_rec draws (``loss.sampled_*`` keys).

    in_batch: the global batch's targets are candidates.
    num_random: N random items per step (shared by the rows).
    popularity: draw them by (add-one smoothed) training-target popularity, else uniformly.
    logq: subtract log E[count] from in-batch and random candidates' logits.
    enduring_lam: lam of the enduring copies of the mined items (0 = none).
    enduring_weight: their weight w in the denominator.
    """

    in_batch: bool = True
    num_random: int = 1024
    popularity: bool = False
    logq: bool = True
    enduring_lam: float = 0.0
    enduring_weight: float = 0.1


class CandidateSampler:
    """Random candidates and the logQ correction over a catalogue of items 1..I.

    Args:
        item_counts: float or long [I + 1], how often each item is a training target (entry 0,
            the padding, is ignored): the in-batch distribution p = counts / sum(counts). Needed
            for ``logq`` with in-batch candidates and for popularity draws; None: p unknown.
        spec: what to draw.
    """

    def __init__(self, num_items: int, spec: SampledSoftmaxSpec, item_counts: torch.Tensor | None = None) -> None:
        self.num_items = int(num_items)
        self.spec = spec
        need_counts = spec.popularity or (spec.logq and spec.in_batch)
        if need_counts and item_counts is None:
            raise ValueError("sampled softmax: item_counts (training-target counts) are needed for popularity "
                             "draws and for the logQ correction of in-batch candidates")
        self.p: torch.Tensor | None = None  # float64 [I + 1], in-batch distribution
        self.q_cdf: torch.Tensor | None = None  # float64 [I], cumulative popularity draw distribution
        self.q: torch.Tensor | None = None  # float64 [I + 1], the random draw distribution (None: uniform)
        if item_counts is not None:
            c = item_counts.detach().to(torch.float64).cpu().clone()
            if c.shape[0] != self.num_items + 1:
                raise ValueError(f"sampled softmax: item_counts has {c.shape[0]} entries, expected {self.num_items + 1}")
            c[0] = 0.0
            self.p = c / c.sum().clamp_min(1.0)
            if spec.popularity:
                sm = c + 1.0
                sm[0] = 0.0
                self.q = sm / sm.sum()
                self.q_cdf = torch.cumsum(self.q[1:], 0)
                self.q_cdf[-1] = 1.0

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """long [N]: this step's random items in 1..I (CPU; N = spec.num_random)."""
        n = self.spec.num_random
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        if self.q_cdf is None:
            return torch.randint(1, self.num_items + 1, (n,), generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.searchsorted(self.q_cdf, u, right=True).clamp_max(self.num_items - 1) + 1

    def log_expected_count(self, ids: torch.Tensor, in_batch_size: int) -> torch.Tensor:
        """float [S]: log E[count of item ids[s]] in a draw of ``in_batch_size`` in-batch targets
        plus ``spec.num_random`` random items (the logQ correction); ids long [S]."""
        n = self.spec.num_random
        cpu = ids.cpu()
        exp = torch.zeros(cpu.shape[0], dtype=torch.float64)
        if self.spec.in_batch and in_batch_size > 0:
            assert self.p is not None
            exp += in_batch_size * self.p[cpu]
        if n > 0:
            exp += n * (self.q[cpu] if self.q is not None else torch.full_like(exp, 1.0 / self.num_items))
        return exp.clamp_min(1e-30).log().to(device=ids.device, dtype=torch.float32)


class _RowLookup(torch.autograd.Function):
    """``weights[rows]`` for sorted unique ``rows``; the gradient of ``weights`` is a coalesced
    sparse [R, d] tensor over those rows (row 0, the padding, gets none), or a dense one."""

    @staticmethod
    def forward(ctx, weights, rows, sparse):  # type: ignore[no-untyped-def]
        ctx.shape, ctx.sparse = weights.shape, sparse
        ctx.save_for_backward(rows)
        return weights.index_select(0, rows)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (rows,) = ctx.saved_tensors
        if rows.numel() and int(rows[0]) == 0:  # sorted: the padding row comes first
            rows, grad = rows[1:], grad[1:]
        if ctx.sparse:
            g = torch.sparse_coo_tensor(rows[None, :], grad.contiguous(), ctx.shape, is_coalesced=True,
                                        check_invariants=False)
        else:
            g = grad.new_zeros(ctx.shape).index_add_(0, rows, grad)
        return g, None, None


def unique_lookup(weights: torch.Tensor, ids: list[torch.Tensor], sparse: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ONE lookup of the unique ids of several id tensors (so the item table's gradient has
    each touched row once).

    Args:
        weights: float [R, d]; ids: long tensors of any shapes (0 = padding: no gradient).
    Returns:
        (sub float [U, d]: the unique rows, [each ids_i's positions in sub, long of ids_i's shape]).
    """
    flat = torch.cat([t.reshape(-1) for t in ids])
    uniq, inv = torch.unique(flat, sorted=True, return_inverse=True)
    sub = _RowLookup.apply(weights, uniq, sparse)  # [U, d]
    out, at = [], 0
    for t in ids:
        out.append(inv[at:at + t.numel()].view(t.shape))
        at += t.numel()
    return sub, out


class _GatheredDot(torch.autograd.Function):
    """``(rows[idx] * z[:, None, :]).sum(-1)``: float [B, K] from rows [U, d], idx long [B, K]
    and z [B, d], in the two inputs' common dtype (autocast off inside).

    Autograd's own graph of that expression keeps two [B, K, d] products for its backward and
    scatters the rows' gradient with an accumulating index_put; here the backward is one
    [B, 1, K] x [B, K, d] batched product for z and one index_add for the rows (B = K = 256,
    d = 64: 0.66-0.72 of autograd's CPU time, bench/micro/bench_gathered_dot.py).
    """

    @staticmethod
    def forward(ctx, rows, idx, z):  # type: ignore[no-untyped-def]
        dtype = torch.promote_types(rows.dtype, z.dtype)
        with torch.autocast(device_type=z.device.type, enabled=False):
            e = rows[idx].to(dtype)  # [B, K, d]
            zz = z.to(dtype)
            out = torch.bmm(e, zz.unsqueeze(2)).squeeze(2)
        ctx.save_for_backward(e, idx, zz)
        ctx.n_rows, ctx.rows_dtype, ctx.z_dtype = rows.shape[0], rows.dtype, z.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        e, idx, z = ctx.saved_tensors
        grad = grad.to(e.dtype)
        with torch.autocast(device_type=z.device.type, enabled=False):
            g_rows = g_z = None
            if ctx.needs_input_grad[0]:
                contrib = (grad[:, :, None] * z[:, None, :]).reshape(-1, z.shape[1])  # [B*K, d]
                g_rows = contrib.new_zeros(ctx.n_rows, z.shape[1]).index_add_(0, idx.reshape(-1), contrib)
                g_rows = g_rows.to(ctx.rows_dtype)
            if ctx.needs_input_grad[2]:
                g_z = torch.bmm(grad.unsqueeze(1), e).squeeze(1).to(ctx.z_dtype)
        return g_rows, None, g_z


def gathered_dot(rows: torch.Tensor, idx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """float [B, K]: rows[idx[b, k]] . z[b] (rows [U, d], idx long [B, K], z [B, d])."""
    return _GatheredDot.apply(rows, idx, z)


def _in_rows(values: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """bool [B, S]: whether values[s] (long [S], shared by the rows) is in row b of sets [B, K]."""
    uniq, inv = torch.unique(torch.cat([values, sets.reshape(-1)]), return_inverse=True)
    mark = torch.zeros(sets.shape[0], uniq.numel(), dtype=torch.bool, device=sets.device)
    mark.scatter_(1, inv[values.numel():].view(sets.shape), True)
    return mark[:, inv[: values.numel()]]


def enduring_items(z: torch.Tensor, e: torch.Tensor, lam: float) -> torch.Tensor:
    """FENRec's enduring transform of items toward their anchors, detached.

    h_bk = |e_bk| * normalize((1 - lam) e_bk / |e_bk| + lam z_b / |z_b|)

    Args:
        z: float [B, d] anchors; e: float [B, K, d] items.
    Returns:
        float [B, K, d], no gradient.
    """
    z, e = z.detach(), e.detach()
    norm_e = e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    mix = (1 - lam) * e / norm_e + lam * F.normalize(z, dim=-1)[:, None, :]
    return norm_e * F.normalize(mix, dim=-1)


def sampled_soft_label_loss(
    z: torch.Tensor,
    item_weights: torch.Tensor,
    future: torch.Tensor,
    future_len: torch.Tensor,
    gamma: float,
    soft: bool = True,
    shared: torch.Tensor | None = None,
    shared_correction: torch.Tensor | None = None,
    mined: torch.Tensor | None = None,
    enduring_lam: float = 0.0,
    enduring_weight: float = 0.0,
    sparse_grad: bool = False,
) -> torch.Tensor:
    """The sampled soft-label cross-entropy of a batch (formula in the module docstring).

    Args:
        z: float [B, d] anchors' representations.
        item_weights: float [I + 1, d] item table (row 0 padding).
        future: long [B, H + 1] the target then the next training items, 0-padded;
        future_len: long [B] valid entries; gamma, soft: the soft label (``soft_label_weights``).
        shared: long [S] candidates shared by every row (in-batch targets then random items),
            or None.
        shared_correction: float [S] subtracted from the shared candidates' logits (the logQ
            correction), or None for none.
        mined: long [B, K] per-row candidates (0 = none in that slot), or None. Counted once
            each, uncorrected; a shared candidate that is also one of the row's mined items is
            dropped from the shared part.
        enduring_lam, enduring_weight: the mined items' enduring copies (off when lam or
            weight is 0).
        sparse_grad: the item table's gradient as a sparse tensor (touched rows only).

    Returns:
        scalar: mean over the B rows.
    """
    b = z.shape[0]
    label = soft_label_weights(future_len, future.shape[1], gamma, soft).to(z.dtype)  # [B, H+1]
    width = future.shape[1]
    k = torch.arange(width, device=future.device)
    valid = k[None, :] < future_len[:, None]
    # an item repeated in the window enters the denominator once (its label weights add up)
    earlier = (future[:, :, None] == future[:, None, :]) & (k[None, None, :] < k[None, :, None])
    first = valid & ~(earlier & valid[:, None, :]).any(dim=2)
    window = torch.where(valid, future, torch.zeros_like(future))  # [B, H+1], 0 = no item

    has_m = mined is not None and mined.shape[1] > 0
    has_s = shared is not None and shared.shape[0] > 0
    ids = [window] + ([shared] if has_s else []) + ([mined] if has_m else [])
    sub, inv = unique_lookup(item_weights, ids, sparse_grad)
    pos = (sub[inv[0]] * z[:, None, :]).sum(-1)  # [B, H+1]; (mul-sum: no transposed copy as in einsum's bmm)
    parts = [pos.masked_fill(~first, float("-inf"))]
    if has_m:
        drop_m = (mined == 0) | (mined[:, :, None] == window[:, None, :]).any(dim=2)
        parts.append(gathered_dot(sub, inv[-1], z).masked_fill(drop_m, float("-inf")))
        if enduring_lam > 0 and enduring_weight > 0:
            em = sub.detach()[inv[-1]]  # [B, K, d]
            h = enduring_items(z, em, enduring_lam)
            hl = (h * z[:, None, :]).sum(-1) + math.log(enduring_weight)
            parts.append(hl.masked_fill(drop_m, float("-inf")))
    if has_s:
        ls = z @ sub[inv[1]].t()  # [B, S]
        if shared_correction is not None:
            ls = ls - shared_correction[None, :]
        drop_s = (shared[None, :, None] == window[:, None, :]).any(dim=2)  # [B, S]
        if has_m:  # a shared candidate that is one of the row's mined items: counted there
            drop_s |= _in_rows(shared, mined)
        parts.append(ls.masked_fill(drop_s, float("-inf")))
    lse = torch.logsumexp(torch.cat(parts, dim=1), dim=1)  # [B]
    picked = pos.masked_fill(~valid, 0.0)
    return (lse - (label * picked).sum(dim=1)).sum() / b
