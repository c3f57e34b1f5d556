"""k-means in torch (matrix products), for devices where faiss-gpu is absent.

Follows ``faiss.Kmeans`` (``faiss/Clustering.cpp``) step by step, so the two are
interchangeable within k-means' own tolerance (tests/test_torch_kmeans.py: the same inertia
within 1% from the seed, the same assignments and centroids from the same initial
centroids):

* optional subsampling to ``k * max_points_per_centroid`` points (a random subset);
* initial centroids: ``k`` distinct points drawn at random (faiss: the first ``k`` of a
  random permutation seeded with ``seed + 1 + redo * 15486557``; here torch's ``randperm``
  with the same seed, so the draw differs from FAISS's but follows the same rule);
* ``niter`` Lloyd iterations: assign every point to its nearest centroid by squared L2
  (FAISS's expansion |x|^2 + |c|^2 - 2 x.c, float32), then each centroid becomes the mean of
  its points;
* empty clusters: each takes over half of a non-empty cluster picked with probability
  proportional to (size - 1), its centroid copied with the symmetric relative perturbation
  1 +- 1/1024 on alternate coordinates (FAISS's ``split_clusters``);
* ``nredo`` runs, the centroids of the lowest objective kept; the objective of a run is the
  sum of squared distances of its last assignment (as FAISS reports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fenrec_dist.negatives.knn import exact_fp32, nearest

_EPS = 1.0 / 1024  # FAISS's split perturbation
_REDO_STRIDE = 15486557  # FAISS's seed stride between redos


@dataclass
class KMeansResult:
    """centroids: float32 [k, d] on the input's device; objective: the kept run's final
    sum of squared distances; objectives: float [niter] of that run, one per iteration;
    splits: empty clusters re-seeded over all runs."""

    centroids: torch.Tensor
    objective: float
    objectives: list[float]
    splits: int


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


def update_centroids(x: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of the assigned points.

    Args:
        x: float32 [N, d]; ids: long [N] cluster of each point; k: number of clusters.

    Returns:
        (centroids float32 [k, d], zero rows for empty clusters; counts long [k]).
    """
    counts = torch.bincount(ids, minlength=k)
    sums = torch.zeros(k, x.shape[1], dtype=torch.float32, device=x.device).index_add_(0, ids, x)
    return sums / counts.clamp(min=1).to(torch.float32)[:, None], counts


def split_empty(centroids: torch.Tensor, counts: torch.Tensor, n: int, gen: torch.Generator) -> int:
    """FAISS's ``split_clusters``, in place: every empty cluster takes half of a cluster drawn
    with probability proportional to (size - 1), centroid copied and both perturbed by
    1 +- 1/1024 on alternate coordinates.

    Args:
        centroids: float32 [k, d] (modified in place); counts: long [k] points per cluster.
        n: number of points; gen: CPU generator of the draws.

    Returns:
        the number of clusters re-seeded.
    """
    empty = (counts == 0).nonzero().flatten().tolist()  # one host sync per iteration
    if not empty:
        return 0
    k, d = centroids.shape
    size = counts.to(torch.float64).cpu()
    up = torch.ones(d, dtype=torch.float32, device=centroids.device)
    up[1::2] = -1.0
    up = 1.0 + _EPS * up  # [1 + e, 1 - e, ...]
    down = 2.0 - up        # [1 - e, 1 + e, ...]
    for ci in empty:
        weight = (size - 1.0).clamp(min=0.0)
        if float(weight.sum()) <= 0:  # every cluster holds at most one point: nothing to split
            break
        cj = int(torch.multinomial(weight, 1, generator=gen))
        centroids[ci] = centroids[cj] * up
        centroids[cj] = centroids[cj] * down
        size[ci] = torch.floor(size[cj] / 2)
        size[cj] -= size[ci]
    return len(empty)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, niter: int = 20, seed: int = 1234, nredo: int = 1,
           max_points_per_centroid: int = 256, init: torch.Tensor | None = None,
           chunk: int = 65536) -> KMeansResult:
    """k-means of the rows of ``x`` (``faiss.Kmeans(d, k, niter, seed=seed, nredo=nredo,
    max_points_per_centroid=...).train(x)``, in torch on x's device).

    Args:
        x: float [N, d] points (cast to float32), N >= k.
        k: number of clusters; niter: Lloyd iterations; seed: seeds the subsample, the initial
            centroids and the empty-cluster draws; nredo: runs, the lowest objective kept.
        max_points_per_centroid: at most k times this many points are clustered (a random
            subset; FAISS's default 256); the objective is then that of the subset.
        init: float [k, d] initial centroids (all runs start from them), or None for a random
            draw of k distinct points.
        chunk: rows per block of the assignment's [chunk, k] distance matrix.

    Returns:
        ``KMeansResult`` with centroids float32 [k, d] on x's device.
    """
    x = x.float().contiguous()
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k={k} must be in [1, {n}] (the number of points)")
    if init is not None and tuple(init.shape) != (k, d):
        raise ValueError(f"kmeans: init has shape {tuple(init.shape)}, expected ({k}, {d})")
    if n > k * max_points_per_centroid:  # FAISS subsamples with rand_perm(seed)
        perm = torch.randperm(n, generator=_generator(seed)).to(x.device)
        x = x[perm[: k * max_points_per_centroid]]
        n = x.shape[0]
    best: KMeansResult | None = None
    splits = 0
    with exact_fp32(x.device):
        for redo in range(nredo):
            run_seed = seed + 1 + redo * _REDO_STRIDE
            if init is not None:
                cents = init.to(device=x.device, dtype=torch.float32).clone()
            else:
                cents = x[torch.randperm(n, generator=_generator(run_seed))[:k].to(x.device)].clone()
            split_gen = _generator(run_seed + 1234)
            objs: list[torch.Tensor] = []
            for _ in range(niter):
                dist, ids = nearest(x, cents, chunk=chunk)
                objs.append(dist.sum(dtype=torch.float64))
                cents, counts = update_centroids(x, ids, k)
                splits += split_empty(cents, counts, n, split_gen)
            obj_values = [float(o) for o in torch.stack(objs).cpu()] if objs else [float("nan")]
            run = KMeansResult(cents, obj_values[-1], obj_values, 0)
            if best is None or run.objective < best.objective:
                best = run
    assert best is not None
    best.splits = splits
    return best


def inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum over the rows of x float [N, d] of the squared L2 distance to the nearest of
    ``centroids`` float [k, d] (float64 sum)."""
    dist, _ = nearest(x.float(), centroids.float())
    return float(dist.sum(dtype=torch.float64))


def faiss_init_positions(n: int, k: int, seed: int) -> torch.Tensor:
    """long [k]: the points ``faiss.Kmeans`` starts a run seeded ``seed`` from (the first ``k`` of
    FAISS's ``rand_perm(n, seed)``), so a sharded run starts where FAISS would; torch's
    ``randperm`` when FAISS is not installed."""
    try:
        import faiss
        import numpy as np
    except ImportError:  # pragma: no cover - faiss is a dependency
        return torch.randperm(n, generator=_generator(seed))[:k]
    perm = np.empty(n, dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, seed)
    return torch.from_numpy(perm[:k].astype(np.int64))


@torch.no_grad()
def kmeans_sharded(x: torch.Tensor, positions: torch.Tensor, n_total: int, k: int,
                   all_reduce: Callable[[torch.Tensor], torch.Tensor], niter: int = 20, seed: int = 1234,
                   nredo: int = 1, chunk: int = 65536) -> KMeansResult:
    """k-means over points split across ranks, each rank holding only its own (no gather): every
    rank calls this with its rows and the same arguments otherwise.

    FAISS's algorithm (``faiss.Kmeans(d, k, niter, seed=seed, nredo=nredo)`` with no
    subsampling) on the union of the ranks' points in ``positions`` order: the initial
    centroids are the points at FAISS's initial positions (``faiss_init_positions``), each Lloyd
    iteration assigns locally and all-reduces the per-cluster sums and counts, and empty
    clusters are split alike on every rank (``split_empty``, the same draws). The centroids
    equal one process's FAISS k-means up to float rounding (the sums are added in another
    order; tests/test_distributed_equivalence.py).

    Args:
        x: float [n_r, d] this rank's points (n_r may be 0).
        positions: long [n_r] each row's place in the global order, 0..n_total-1, disjoint
            across ranks.
        n_total: points over all ranks (>= k).
        all_reduce: sums a tensor over the ranks (returns the sum; identity in one process).

    Returns:
        ``KMeansResult`` with centroids float32 [k, d] on x's device, the same on every rank.
    """
    x = x.float().contiguous()
    d = x.shape[1]
    if not 1 <= k <= n_total:
        raise ValueError(f"kmeans: k={k} must be in [1, {n_total}] (the number of points)")
    order = torch.argsort(positions.cpu())
    sorted_pos = positions.cpu()[order]
    best: KMeansResult | None = None
    splits = 0
    with exact_fp32(x.device):
        for redo in range(nredo):
            run_seed = seed + 1 + redo * _REDO_STRIDE
            start = faiss_init_positions(n_total, k, run_seed)
            at = torch.searchsorted(sorted_pos, start).clamp(max=max(len(sorted_pos) - 1, 0))
            mine = (sorted_pos[at] == start) if len(sorted_pos) else torch.zeros(k, dtype=torch.bool)
            cents = torch.zeros(k, d, dtype=torch.float32, device=x.device)
            if bool(mine.any()):
                cents[mine.to(x.device)] = x[order[at[mine]].to(x.device)]
            cents = all_reduce(cents)  # each initial point is on exactly one rank
            split_gen = _generator(run_seed + 1234)
            objs: list[float] = []
            for _ in range(niter):
                if len(x):
                    dist, ids = nearest(x, cents, chunk=chunk)
                    sums = torch.zeros(k, d, dtype=torch.float32, device=x.device).index_add_(0, ids, x)
                    counts = torch.bincount(ids, minlength=k)
                    obj = dist.sum(dtype=torch.float64).reshape(1)
                else:
                    sums = torch.zeros(k, d, dtype=torch.float32, device=x.device)
                    counts = torch.zeros(k, dtype=torch.long, device=x.device)
                    obj = torch.zeros(1, dtype=torch.float64, device=x.device)
                objs.append(float(all_reduce(obj)[0]))
                counts = all_reduce(counts)
                cents = all_reduce(sums) / counts.clamp(min=1).to(torch.float32)[:, None]
                splits += split_empty(cents, counts, n_total, split_gen)
            run = KMeansResult(cents, objs[-1] if objs else float("nan"), objs or [float("nan")], 0)
            if best is None or run.objective < best.objective:
                best = run
    assert best is not None
    best.splits = splits
    return best
