"""Full-ranking evaluation: every catalogue item is scored, no sampled negatives.

Protocol (FENREC.md, "Task and protocol"):

* The catalogue is items ``1..I``; id 0 is padding and is never ranked.
* Items in the user's history (``exclude_ids``) are removed from the ranking, as if
  their score were -inf. Setting them to 0 instead (the reference code's choice) does not
  remove them when scores are negative.
* The target itself is never removed, even when it also appears in the history (a repeat
  purchase, as on Yelp): it is always ranked.
* The rank ``r`` of the target (0-based) is the number of non-excluded items other than the
  target whose score is *strictly* higher than the target's. Ties therefore count in the
  target's favour: an item with exactly the target's score does not push it down.
* One relevant item per user, so IDCG = 1:
  ``HR@k = [r < k]``, ``NDCG@k = 1/log2(r + 2) if r < k else 0``, ``MRR = 1/(r + 1)``
  (over the full ranking, no cut-off).

The catalogue is never sorted, and the [B, I] score matrix is built ``item_chunk`` columns
at a time, so memory is O(B * item_chunk) whatever the catalogue size.

Metric values are returned as *sums* plus ``count`` (``rank_metrics``) so that data-parallel
workers can all-reduce them; ``finalize`` turns merged sums into means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from fenrec_dist.scoring import score_items

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)


def _score_dtype(query: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 kept as is."""
    return torch.promote_types(query.dtype, torch.float32)


def _check_shapes(query: Tensor, item_emb: Tensor, exclude_ids: Tensor) -> None:
    if query.dim() != 2 or item_emb.dim() != 2 or query.shape[1] != item_emb.shape[1]:
        raise ValueError(f"query [B, d] and item_emb [I+1, d] expected, got {tuple(query.shape)} and {tuple(item_emb.shape)}")
    if exclude_ids.dim() != 2 or exclude_ids.shape[0] != query.shape[0]:
        raise ValueError(f"exclude_ids [B, H] expected, got {tuple(exclude_ids.shape)} for B={query.shape[0]}")


def _chunk_drop_mask(ids: Tensor, start: int, width: int) -> tuple[Tensor, Tensor]:
    """Column positions of ``ids`` inside the chunk ``[start, start + width)``.

    Args:
        ids: long [B, H] item ids.
    Returns:
        (index long [B, H], valid bool [B, H]); invalid entries point at the spare column ``width``.
    """
    local = ids - start
    valid = (local >= 0) & (local < width)
    return torch.where(valid, local, torch.full_like(local, width)), valid


def target_ranks(
    query: Tensor,
    item_emb: Tensor,
    targets: Tensor,
    exclude_ids: Tensor,
    item_chunk: int = 65536,
) -> Tensor:
    """0-based rank of each target among the non-excluded items ``1..I`` (dot-product scores).

    Args:
        query: float [B, d], user representations.
        item_emb: float [I + 1, d], item embedding table; row 0 is padding and never ranked.
        targets: long [B], target ids in ``1..I``.
        exclude_ids: long [B, H], history ids to exclude, padded (left or right) with 0.
            0 entries are ignored; repeated ids are fine. A target that also appears here is
            still ranked (it is never excluded).
        item_chunk: catalogue columns scored at a time (memory O(B * item_chunk)).

    Returns:
        long [B]: number of non-excluded items, other than the target, with a strictly
        higher score than the target (ties count in the target's favour).
    """
    _check_shapes(query, item_emb, exclude_ids)
    if item_chunk < 1:
        raise ValueError("item_chunk must be >= 1")
    dt = _score_dtype(query)
    q = query.to(dt)
    emb = item_emb.to(device=q.device, dtype=dt)
    targets = targets.to(device=q.device, dtype=torch.long)
    b, n_rows = q.shape[0], emb.shape[0]
    # Scores of the target (computed once, rowwise); the target's own column is dropped from
    # the count below, so rounding differences between the two paths cannot rank it below itself.
    t_score = (q * emb[targets]).sum(dim=1)
    # Ids whose columns never count: the history, the padding id 0 and the target itself.
    drop = torch.cat([exclude_ids.to(device=q.device, dtype=torch.long), targets[:, None]], dim=1)
    ranks = torch.zeros(b, dtype=torch.long, device=q.device)
    for start in range(0, n_rows, item_chunk):
        stop = min(start + item_chunk, n_rows)
        width = stop - start
        scores = score_items(q, emb[start:stop])  # [B, width]
        higher = torch.zeros(b, width + 1, dtype=torch.bool, device=q.device)  # spare column for misses
        higher[:, :width] = scores > t_score[:, None]
        if start == 0:
            higher[:, 0] = False  # padding
        idx, _ = _chunk_drop_mask(drop, start, width)
        higher.scatter_(1, idx, False)
        ranks += higher[:, :width].sum(dim=1)
    return ranks


def topk_items(
    query: Tensor,
    item_emb: Tensor,
    exclude_ids: Tensor,
    k: int,
    item_chunk: int = 65536,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` non-excluded items per user, chunked over the catalogue (for serving/export).

    Args:
        query: float [B, d]; item_emb: float [I + 1, d] (row 0 = padding, never returned);
        exclude_ids: long [B, H], 0-padded ids never returned; k: items per user;
        item_chunk: catalogue columns scored at a time.

    Returns:
        (scores float [B, k] in descending order, item ids long [B, k]). When fewer than ``k``
        items are rankable the trailing slots hold score -inf and id 0. Order among exactly
        equal scores is unspecified.
    """
    _check_shapes(query, item_emb, exclude_ids)
    if k < 1 or item_chunk < 1:
        raise ValueError("k and item_chunk must be >= 1")
    dt = _score_dtype(query)
    q = query.to(dt)
    emb = item_emb.to(device=q.device, dtype=dt)
    ex = exclude_ids.to(device=q.device, dtype=torch.long)
    b, n_rows = q.shape[0], emb.shape[0]
    best_s = torch.full((b, k), float("-inf"), dtype=dt, device=q.device)
    best_i = torch.zeros(b, k, dtype=torch.long, device=q.device)
    for start in range(0, n_rows, item_chunk):
        stop = min(start + item_chunk, n_rows)
        width = stop - start
        scores = torch.empty(b, width + 1, dtype=dt, device=q.device)
        scores[:, :width] = q @ emb[start:stop].T
        if start == 0:
            scores[:, 0] = float("-inf")
        idx, _ = _chunk_drop_mask(ex, start, width)
        scores.scatter_(1, idx, float("-inf"))
        kk = min(k, width)
        s, i = torch.topk(scores[:, :width], kk, dim=1)
        cat_s = torch.cat([best_s, s], dim=1)
        cat_i = torch.cat([best_i, i + start], dim=1)
        best_s, pos = torch.topk(cat_s, k, dim=1)
        best_i = torch.gather(cat_i, 1, pos)
    best_i = torch.where(torch.isneginf(best_s), torch.zeros_like(best_i), best_i)
    return best_s, best_i


def scores_ranks(scores: Tensor, targets: Tensor, exclude_ids: Tensor) -> Tensor:
    """The rank of ``target_ranks`` from a precomputed score matrix (plain reference).

    Args:
        scores: float [B, I + 1], column 0 = padding (ignored).
        targets: long [B] in ``1..I``.
        exclude_ids: long [B, H], 0-padded history ids (the target is never excluded).

    Returns:
        long [B]: number of non-excluded items with a strictly higher score than the target.
    """
    if scores.dim() != 2 or exclude_ids.dim() != 2 or exclude_ids.shape[0] != scores.shape[0]:
        raise ValueError(f"scores [B, I+1] and exclude_ids [B, H] expected, got {tuple(scores.shape)}, {tuple(exclude_ids.shape)}")
    s = scores.to(_score_dtype(scores)).clone()
    targets = targets.to(device=s.device, dtype=torch.long)
    t = s.gather(1, targets[:, None])  # taken before masking: the target is never excluded
    s[:, 0] = float("-inf")
    s.scatter_(1, exclude_ids.to(device=s.device, dtype=torch.long), float("-inf"))
    return (s > t).sum(dim=1)


def candidate_ranks(
    query: Tensor,
    item_emb: Tensor,
    cand_ids: Tensor,
    targets: Tensor,
    exclude_ids: Tensor,
    miss_rank: int,
) -> Tensor:
    """The rank of ``target_ranks`` among retrieved candidates only (ANN evaluation).

    Args:
        query: float [B, d]; item_emb: float [I + 1, d] (row 0 = padding);
        cand_ids: long [B, C], each row's retrieved items (e.g. an item index's top C), 0 = none;
        targets: long [B] in ``1..I``; exclude_ids: long [B, H], 0-padded history ids (the
            target is never excluded); miss_rank: the rank of a target not among its row's
            candidates (past every cut-off, e.g. I).

    Returns:
        long [B]: for a retrieved target, the number of its row's non-excluded candidates other
        than the target with a strictly higher score (scores recomputed here as ``target_ranks``
        does, so an exact index's candidates give the exact rank for targets within them);
        ``miss_rank`` otherwise.
    """
    _check_shapes(query, item_emb, exclude_ids)
    dt = _score_dtype(query)
    q = query.to(dt)
    emb = item_emb.to(device=q.device, dtype=dt)
    cand = cand_ids.to(device=q.device, dtype=torch.long)
    targets = targets.to(device=q.device, dtype=torch.long)
    ex = exclude_ids.to(device=q.device, dtype=torch.long)
    t_score = (q * emb[targets]).sum(dim=1)
    c_score = (emb[cand] * q[:, None, :]).sum(dim=2)  # [B, C]
    is_target = cand == targets[:, None]
    keep = (cand != 0) & ~is_target & ~(cand[:, :, None] == ex[:, None, :]).any(dim=2)
    count = (keep & (c_score > t_score[:, None])).sum(dim=1)
    return torch.where(is_target.any(dim=1), count, torch.full_like(count, int(miss_rank)))


def first_kept(cand_ids: Tensor, exclude_ids: Tensor, k: int) -> Tensor:
    """long [B, k]: each row's first ``k`` candidates (long [B, C], in retrieval order, 0 = none)
    that are not in its ``exclude_ids`` row (long [B, H], 0-padded); 0 in slots left empty."""
    drop = (cand_ids == 0) | (cand_ids[:, :, None] == exclude_ids[:, None, :]).any(dim=2)
    order = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices[:, :k]  # kept first, order kept
    out = torch.gather(cand_ids, 1, order)
    out = torch.where(torch.gather(drop, 1, order), torch.zeros_like(out), out)
    if out.shape[1] < k:
        out = torch.cat([out, out.new_zeros(out.shape[0], k - out.shape[1])], dim=1)
    return out


def overlap_recall(approx: Tensor, exact: Tensor) -> Tensor:
    """float64 [B]: the share of each row's exact top-k ids (long [B, k], 0 = empty slot, not
    counted) that its approximate top-k (long [B, k'], 0 = empty) holds; 1.0 for a row with
    no exact ids."""
    hit = (exact[:, :, None] == approx[:, None, :]).any(dim=2) & (exact != 0)
    n = (exact != 0).sum(dim=1)
    return torch.where(n > 0, hit.sum(dim=1).double() / n.clamp(min=1), torch.ones_like(n, dtype=torch.float64))


def rank_metrics(ranks: Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """SUMS over the batch of HR@k and NDCG@k for each k, and MRR, plus ``count``.

    Args:
        ranks: long [B], 0-based ranks (see ``target_ranks``).
        ks: cut-offs.

    Returns:
        {'HR@k': .., 'NDCG@k': .., 'MRR': .., 'count': B} with Python float values, to be
        summed across batches/workers (``merge``) and divided by ``finalize``.
    """
    r = ranks.detach().to("cpu", torch.float64).reshape(-1)
    ks = sorted({int(k) for k in ks})
    out: dict[str, float] = {}
    gain = 1.0 / torch.log2(r + 2.0)
    for k in ks:
        out[f"HR@{k}"] = float((r < k).sum())
    for k in ks:
        out[f"NDCG@{k}"] = float(torch.where(r < k, gain, torch.zeros_like(gain)).sum())
    out["MRR"] = float((1.0 / (r + 1.0)).sum())
    out["count"] = float(r.numel())
    return out


def merge(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Key-wise sum of two metric-sum dicts (an empty dict is the identity)."""
    out = dict(a)
    for key, v in b.items():
        out[key] = out.get(key, 0.0) + float(v)
    return out


def finalize(sums: dict[str, float]) -> dict[str, float]:
    """Means from metric sums: every key but ``count`` divided by ``count``.

    Returns e.g. {'HR@5', 'HR@10', 'HR@20', 'NDCG@5', 'NDCG@10', 'NDCG@20', 'MRR'}
    (whatever cut-offs the sums hold); NaN values when ``count`` is 0.
    """
    n = float(sums.get("count", 0.0))
    return {key: (float(v) / n if n > 0 else math.nan) for key, v in sums.items() if key != "count"}
