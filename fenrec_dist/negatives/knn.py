"""Exact nearest-neighbour search in torch: chunked matrix products and ``topk``.

The torch counterpart of FAISS's flat indexes (``IndexFlatIP``, ``IndexFlatL2``) for devices
where faiss-gpu is absent (the CUDA 13 GPU image has none): the [Q, N] score matrix is
never materialised whole, only [query_chunk, base_chunk] blocks, whose per-block top-k are
merged. The products run in float32 (TF32 and autocast off), so results match FAISS's
float32 search up to float rounding of near-ties.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch

Metric = Literal["ip", "l2"]


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """Plain float32 products on ``device``: autocast off and, on CUDA, TF32 off for the block
    (TF32 rounds operands to 10 mantissa bits, which changes near-tie neighbours)."""
    if device.type != "cuda":
        with torch.autocast(device.type, enabled=False):
            yield
        return
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast("cuda", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def scores(queries: torch.Tensor, base: torch.Tensor, metric: Metric, base_sq: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Similarity of every query to every base vector, larger = nearer.

    Args:
        queries: float32 [Q, d]; base: float32 [N, d].
        metric: "ip" (inner product) or "l2" (negated squared L2 distance,
            -(|q|^2 + |b|^2 - 2 q.b), the expansion FAISS uses for flat L2 search).
        base_sq: float32 [N] squared norms of ``base`` (computed when None).

    Returns:
        float32 [Q, N].
    """
    ip = queries @ base.t()
    if metric == "ip":
        return ip
    if base_sq is None:
        base_sq = (base * base).sum(dim=1)
    q_sq = (queries * queries).sum(dim=1)
    # -(|q|^2 + |b|^2 - 2 q.b), clamped at 0 distance as FAISS does
    return ip.mul_(2.0).sub_(base_sq[None, :]).sub_(q_sq[:, None]).clamp_(max=0.0)


@torch.no_grad()
def search(queries: torch.Tensor, base: torch.Tensor, k: int, metric: Metric = "ip", query_chunk: int = 4096,
           base_chunk: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k search (FAISS ``IndexFlatIP`` / ``IndexFlatL2`` semantics).

    Args:
        queries: float [Q, d]; base: float [N, d], on the same device (cast to float32).
        k: neighbours per query; at most N.
        metric: "ip" (largest inner products) or "l2" (smallest squared L2 distances).
        query_chunk, base_chunk: block sizes of the [Q, N] score matrix.

    Returns:
        (values float32 [Q, k], ids long [Q, k]) best first: inner products for "ip",
        squared distances for "l2" (as FAISS returns them).
    """
    if base.shape[0] == 0 or k < 1 or k > base.shape[0]:
        raise ValueError(f"search: k={k} must be in [1, {base.shape[0]}] (the base size)")
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"search: queries have d={queries.shape[1]}, the base d={base.shape[1]}")
    dev = queries.device
    q_all = queries.float()
    b_all = base.float()
    vals_out = torch.empty(q_all.shape[0], k, dtype=torch.float32, device=dev)
    ids_out = torch.empty(q_all.shape[0], k, dtype=torch.long, device=dev)
    with exact_fp32(dev):
        b_sq = (b_all * b_all).sum(dim=1) if metric == "l2" else None
        for i in range(0, q_all.shape[0], query_chunk):
            q = q_all[i:i + query_chunk]
            best_v = best_i = None
            for j in range(0, b_all.shape[0], base_chunk):
                s = scores(q, b_all[j:j + base_chunk], metric, None if b_sq is None else b_sq[j:j + base_chunk])
                v, idx = s.topk(min(k, s.shape[1]), dim=1)
                idx += j
                if best_v is None:
                    best_v, best_i = v, idx
                else:  # merge this block's candidates with the best so far
                    v = torch.cat([best_v, v], dim=1)
                    idx = torch.cat([best_i, idx], dim=1)
                    best_v, pos = v.topk(k, dim=1)
                    best_i = idx.gather(1, pos)
            vals_out[i:i + query_chunk] = best_v if metric == "ip" else best_v.neg()
            ids_out[i:i + query_chunk] = best_i
    return vals_out, ids_out


@torch.no_grad()
def nearest(queries: torch.Tensor, centroids: torch.Tensor, centroid_sq: torch.Tensor | None = None,
            chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid by squared L2 distance (k-means' assignment rule), in row chunks.

    Args:
        queries: float32 [N, d]; centroids: float32 [k, d] on the same device.
        centroid_sq: float32 [k] their squared norms (computed when None).

    Returns:
        (squared distances float32 [N], ids long [N]) of each query's nearest centroid.
    """
    if centroid_sq is None:
        centroid_sq = (centroids * centroids).sum(dim=1)
    n = queries.shape[0]
    dist = torch.empty(n, dtype=torch.float32, device=queries.device)
    ids = torch.empty(n, dtype=torch.long, device=queries.device)
    with exact_fp32(queries.device):
        for i in range(0, n, chunk):
            s = scores(queries[i:i + chunk].float(), centroids, "l2", centroid_sq)  # -distance
            v, idx = s.max(dim=1)
            dist[i:i + chunk] = v.neg()
            ids[i:i + chunk] = idx
    return dist, ids
