"""Torch k-means and exact top-k search against FAISS (negatives/torch_kmeans.py, knn.py) and the
torch backend of IntentClusters (intents.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fenrec_dist.negatives.intents import IntentClusters, resolve_backend
from fenrec_dist.negatives.knn import nearest, search
from fenrec_dist.negatives.torch_kmeans import inertia, kmeans, split_empty

try:
    import faiss
except ImportError:  # the GPU machine has no faiss: only the torch-only tests run there
    faiss = None
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss is not installed")


def _mixture(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    """float32 [n, d]: points around ``centres`` random centres (unit noise, centres at scale 3)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)) * 3
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


def _faiss_kmeans(x: np.ndarray, k: int, niter: int, seed: int, nredo: int = 1,
                  max_points_per_centroid: int = 1 << 30) -> "faiss.Kmeans":
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, nredo=nredo, verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    km.train(x)
    return km


@needs_faiss
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_kmeans_inertia_within_one_percent_of_faiss(seed):
    """The acceptance test of issue 28: same data, same k, niter and seed -> the same inertia
    within 1% (the two draw the same initial points, so it agrees far closer)."""
    x = _mixture(6000, 16, 50, seed)
    km = _faiss_kmeans(x, 32, 20, seed)
    res = kmeans(torch.from_numpy(x), 32, 20, seed=seed, max_points_per_centroid=1 << 30)
    xt = torch.from_numpy(x)
    ref, mine = inertia(xt, torch.from_numpy(km.centroids)), inertia(xt, res.centroids)
    assert abs(mine / ref - 1) < 0.01
    assert abs(mine / ref - 1) < 1e-5  # in fact the same run: the same initial points
    assert res.objective == pytest.approx(float(km.obj[-1]), rel=1e-5)  # FAISS's last-assignment objective


@needs_faiss
@pytest.mark.parametrize("kw", [dict(nredo=3), dict(max_points_per_centroid=40)])
def test_torch_kmeans_follows_faiss_restarts_and_subsampling(kw):
    """nredo (seed stride 15486557, lowest objective kept) and the subsample of
    k * max_points_per_centroid points follow FAISS: the same centroids up to float rounding."""
    x = np.random.default_rng(5).standard_normal((4000, 8)).astype(np.float32)
    km = _faiss_kmeans(x, 24, 8, seed=7, **{"max_points_per_centroid": 1 << 30, **kw})
    res = kmeans(torch.from_numpy(x), 24, 8, seed=7, **{"max_points_per_centroid": 1 << 30, **kw})
    assert np.abs(res.centroids.numpy() - km.centroids).max() < 1e-4


@needs_faiss
def test_torch_kmeans_from_given_centroids_equals_faiss():
    """Identical initial centroids -> identical Lloyd iterations: centroids to float rounding,
    and identical assignments of every point."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 16)).astype(np.float32)
    init = x[rng.choice(5000, 32, replace=False)].copy()
    cp = faiss.ClusteringParameters()
    cp.niter, cp.max_points_per_centroid, cp.min_points_per_centroid = 15, 1 << 30, 1
    clus = faiss.Clustering(16, 32, cp)
    faiss.copy_array_to_vector(init.ravel(), clus.centroids)
    clus.train(x, faiss.IndexFlatL2(16))
    ref = faiss.vector_to_array(clus.centroids).reshape(32, 16)
    res = kmeans(torch.from_numpy(x), 32, 15, init=torch.from_numpy(init), max_points_per_centroid=1 << 30)
    assert np.abs(res.centroids.numpy() - ref).max() < 1e-5
    index = faiss.IndexFlatL2(16)
    index.add(ref)
    _, want = index.search(x, 1)
    _, got = nearest(torch.from_numpy(x), torch.from_numpy(ref))
    assert np.array_equal(got.numpy(), want[:, 0])


@needs_faiss
def test_identical_centroids_give_identical_assignments_in_both_backends():
    x = _mixture(8000, 32, 40, 9)
    cents = _faiss_kmeans(x, 64, 10, seed=1).centroids
    f = IntentClusters(cents, backend="faiss")
    t = IntentClusters(cents, backend="torch", device="cpu")
    assert (f.backend, t.backend) == ("faiss", "torch") and t.index is None
    assert np.array_equal(f.assign_numpy(x), t.assign_numpy(x))
    ids_f, c_f = f.assign(torch.from_numpy(x[:500]))
    ids_t, c_t = t.assign(torch.from_numpy(x[:500]))
    assert torch.equal(ids_f, ids_t) and torch.equal(c_f, c_t)
    assert np.array_equal(f.sizes(x), t.sizes(x))


@needs_faiss
def test_intent_fit_backends_agree():
    """IntentClusters.fit with backend torch and faiss: the same k-means (k capped at N as before)."""
    x = _mixture(3000, 16, 20, 4)
    f = IntentClusters.fit(x, 16, niter=10, seed=3, backend="faiss")
    t = IntentClusters.fit(x, 16, niter=10, seed=3, backend="torch", device="cpu")
    assert np.abs(f.centroids - t.centroids).max() < 1e-4
    assert np.array_equal(f.assign_numpy(x), t.assign_numpy(x))
    with pytest.warns(UserWarning, match="exceeds"):
        small = IntentClusters.fit(x[:5], 8, niter=3, backend="torch", device="cpu")
    assert small.k == 5


@needs_faiss
def test_backend_resolution_on_cpu():
    assert resolve_backend("auto", "cpu") == "faiss"  # faiss is importable in this venv
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") in ("faiss", "torch")
    with pytest.raises(ValueError, match="intents.backend"):
        resolve_backend("gpu", "cpu")


def test_empty_clusters_are_split_as_faiss_does():
    """An empty cluster takes a copy of a cluster with >= 2 points, both perturbed by 1 +- 1/1024
    on alternate coordinates; a cluster of one point is never picked."""
    cents = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    counts = torch.tensor([5, 0, 1])
    assert split_empty(cents, counts, 6, torch.Generator().manual_seed(0)) == 1
    e = 1.0 / 1024
    assert torch.allclose(cents[1], torch.tensor([1 * (1 + e), 2 * (1 - e), 3 * (1 + e)]))
    assert torch.allclose(cents[0], torch.tensor([1 * (1 - e), 2 * (1 + e), 3 * (1 - e)]))
    assert torch.equal(cents[2], torch.tensor([4.0, 4.0, 4.0]))


def test_kmeans_with_duplicate_points_keeps_every_cluster_populated():
    """More clusters than distinct points in a run's init: the splits re-seed the empty ones
    and the run still ends with finite centroids."""
    x = torch.cat([torch.zeros(50, 4), torch.ones(50, 4), torch.randn(20, 4) * 5])
    res = kmeans(x, 12, niter=5, seed=0, max_points_per_centroid=1 << 30)
    assert torch.isfinite(res.centroids).all() and res.splits >= 0
    assert res.objectives[-1] <= res.objectives[0]


@needs_faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_topk_equals_faiss_flat(metric):
    """Exact top-k in torch (blocks of queries and of the base, merged) = IndexFlatIP / IndexFlatL2."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((3000, 24)).astype(np.float32)
    queries = rng.standard_normal((700, 24)).astype(np.float32)
    index = faiss.IndexFlatIP(24) if metric == "ip" else faiss.IndexFlatL2(24)
    index.add(base)
    want_v, want_i = index.search(queries, 20)
    got_v, got_i = search(torch.from_numpy(queries), torch.from_numpy(base), 20, metric,
                          query_chunk=256, base_chunk=1000)
    assert np.array_equal(got_i.numpy(), want_i)
    assert np.allclose(got_v.numpy(), want_v, rtol=1e-5, atol=1e-4)


def test_search_rejects_bad_k():
    with pytest.raises(ValueError, match="k=5"):
        search(torch.randn(3, 4), torch.randn(4, 4), 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_torch_kmeans_and_search_on_cuda_match_cpu():
    """The intents' torch backend on the GPU (no faiss there): the CPU run's inertia within 1%,
    identical assignments from identical centroids, the same top-k ids."""
    x = torch.from_numpy(_mixture(20000, 32, 64, 8))
    cpu = kmeans(x, 64, 20, seed=3, max_points_per_centroid=1 << 30)
    gpu = kmeans(x.cuda(), 64, 20, seed=3, max_points_per_centroid=1 << 30)
    assert abs(inertia(x, gpu.centroids.cpu()) / inertia(x, cpu.centroids) - 1) < 0.01
    _, a = nearest(x, cpu.centroids)
    _, b = nearest(x.cuda(), cpu.centroids.cuda())
    b = b.cpu()
    # identical centroids: the same assignment but where GPU and CPU float rounding split a near-tie
    d = ((x[:, None, :] - cpu.centroids[None]) ** 2).sum(-1)  # float32 [N, k], computed directly
    differ = a != b
    gap = (d[differ, a[differ]] - d[differ, b[differ]]).abs() / d[differ, a[differ]].clamp(min=1e-6)
    assert int(differ.sum()) <= 5 and bool((gap < 1e-4).all())
    clusters = IntentClusters.fit(x.cuda(), 64, niter=10, seed=3, backend="auto")
    assert clusters.backend == ("faiss" if clusters.index is not None else "torch")
    ids, cents = clusters.assign(x[:1000].cuda())
    assert ids.device.type == "cuda" and cents.shape == (1000, 32)
    q, base = torch.randn(500, 32), torch.randn(5000, 32)
    _, want = search(q, base, 10)
    _, got = search(q.cuda(), base.cuda(), 10)
    assert (got.cpu() == want).float().mean() > 0.999  # float near-ties may swap a neighbour


@needs_faiss
@pytest.mark.parametrize("parts,nredo", [(1, 1), (3, 1), (3, 2)])
def test_sharded_kmeans_equals_faiss_on_all_points(parts, nredo):
    """The sharded k-means (each part its own points, sums all-reduced; here the parts are run in
    one process with a summing all-reduce) starts from FAISS's initial points and follows its
    iterations: the centroids of faiss.Kmeans on all points, up to float rounding."""
    from fenrec_dist.negatives.torch_kmeans import kmeans_sharded

    x = _mixture(900, 16, 12, seed=5)
    km = _faiss_kmeans(x, 20, 8, seed=11, nredo=nredo)
    pos = np.random.default_rng(0).permutation(len(x))  # the parts hold interleaved rows
    shards = np.array_split(pos, parts)

    # run the parts in lock step: each all-reduce sums what every part contributes
    import threading

    results: list = [None] * parts
    barrier = threading.Barrier(parts)
    slots: list = [None] * parts

    def reduce(i):
        def f(t):
            slots[i] = t.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            return total.to(t.dtype)
        return f

    def work(i):
        rows = np.sort(shards[i])
        results[i] = kmeans_sharded(torch.from_numpy(x[rows]), torch.from_numpy(rows), len(x), 20, reduce(i),
                                    niter=8, seed=11, nredo=nredo)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(parts)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for r in results:
        assert torch.equal(r.centroids, results[0].centroids)
        np.testing.assert_allclose(r.centroids.numpy(), km.centroids, rtol=0, atol=2e-5)
