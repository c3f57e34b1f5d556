"""The FAISS negative index: build, search, false-negative filter and mining.

Each epoch the eval-mode representations of all training samples (the same pass that
feeds intent clustering) are indexed with FAISS under the inner product, the
similarity the contrastive losses use. Every sample's nearest neighbours are searched,
and the ones that may be positives in disguise are removed using training facts only:

    self         the anchor itself
    same_user    another sample of the anchor's user (``index_exclude_same_user``)
    same_target  a sample whose target is the anchor's target
    in_future    a sample whose target is in the anchor's future window

Validation and test items are never read here (that would leak the evaluation into
training); the inspector measures against them afterwards, as a diagnostic only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from fenrec_dist.config import NegativesConfig
from fenrec_dist.data.dataset import SampleTable

KEPT, SELF, SAME_USER, SAME_TARGET, IN_FUTURE, MISSING = range(6)
REASONS = ("kept", "self", "same_user", "same_target", "in_future", "missing")


@dataclass
class TrainingFacts:
    """What the filter may know about every training sample, indexed by sample id.

    user: int64 [N]; target: int32 [N]; future: int32 [N, H+1] (future[:, 0] == target,
    right-padded with 0); future_len: int32 [N].
    """

    user: np.ndarray
    target: np.ndarray
    future: np.ndarray
    future_len: np.ndarray

    @classmethod
    def from_table(cls, table: SampleTable) -> "TrainingFacts":
        """The table must hold every training sample in sample-id order (ids 0..N-1)."""
        if not np.array_equal(table.sample_id, np.arange(len(table))):
            raise ValueError("TrainingFacts needs the full training table in sample-id order")
        return cls(table.user, table.target, table.future, table.future_len)

    def __len__(self) -> int:
        return len(self.target)


def false_negative_reasons(anchors: np.ndarray, cands: np.ndarray, facts: TrainingFacts,
                           exclude_same_user: bool = True) -> np.ndarray:
    """Why each candidate may not serve as a negative of its anchor.

    Args:
        anchors: int64 [n] anchor sample ids.
        cands: int64 [n, K] candidate sample ids (-1 = no result).

    Returns:
        int8 [n, K]: KEPT (0) or the first matching reason (SELF, SAME_USER,
        SAME_TARGET, IN_FUTURE, MISSING).
    """
    anchors = np.asarray(anchors, dtype=np.int64)
    cands = np.asarray(cands, dtype=np.int64)
    c = np.where(cands < 0, 0, cands)
    return reasons_for(anchors, facts.user[anchors], facts.target[anchors], facts.future[anchors],
                       facts.future_len[anchors], cands, facts.user[c], facts.target[c], exclude_same_user)


def reasons_for(anchors: np.ndarray, anchor_user: np.ndarray, anchor_target: np.ndarray, anchor_future: np.ndarray,
                anchor_future_len: np.ndarray, cands: np.ndarray, cand_user: np.ndarray, cand_target: np.ndarray,
                exclude_same_user: bool = True) -> np.ndarray:
    """``false_negative_reasons`` from the facts themselves (a sharded index ships the
    candidates' user and target with them).

    Args:
        anchors: int64 [n] anchor sample ids; anchor_user int64 [n], anchor_target int [n],
            anchor_future int [n, H+1], anchor_future_len int [n].
        cands: int64 [n, K] candidate sample ids (-1 = no result); cand_user, cand_target [n, K].
    """
    cands = np.asarray(cands, dtype=np.int64)
    missing = cands < 0
    out = np.zeros(cands.shape, dtype=np.int8)
    t = np.asarray(cand_target)
    cols = np.arange(anchor_future.shape[1])
    fut_valid = cols[None, :] < np.asarray(anchor_future_len)[:, None]
    in_future = ((t[:, :, None] == anchor_future[:, None, :]) & fut_valid[:, None, :]).any(axis=2)
    out[in_future] = IN_FUTURE
    out[t == np.asarray(anchor_target)[:, None]] = SAME_TARGET
    if exclude_same_user:
        out[np.asarray(cand_user) == np.asarray(anchor_user)[:, None]] = SAME_USER
    out[cands == np.asarray(anchors, dtype=np.int64)[:, None]] = SELF
    out[missing] = MISSING
    return out


def choose_kind(n: int, cfg: NegativesConfig) -> str:
    """The index kind for ``n`` rows: exact flat below ``index_exact_below``, else ``index_type``."""
    return "flat" if n < cfg.index_exact_below else cfg.index_type


class FaissResources:
    """Where FAISS runs: GPU when CUDA and faiss-gpu are present (``index_device``), else CPU.

    Holds at most one ``StandardGpuResources`` (created on first use, temporary memory
    bounded by ``index_gpu_temp_mb``); make one per process and reuse it every epoch.
    """

    def __init__(self, device: str = "auto", temp_mb: int = 256, gpu_id: int = 0) -> None:
        self.gpu_id = gpu_id
        self.temp_mb = temp_mb
        self._res = None
        avail = gpu_available()
        if device == "gpu" and not avail:
            raise RuntimeError("negatives.index_device=gpu but faiss-gpu or a CUDA device is not available")
        self.use_gpu = avail and device in ("auto", "gpu")

    def to_device(self, index: faiss.Index) -> faiss.Index:
        """The index on the GPU (flat and IVF; HNSW has no GPU version and stays on CPU)."""
        if not self.use_gpu or isinstance(index, faiss.IndexHNSW):
            return index
        if self._res is None:
            self._res = faiss.StandardGpuResources()
            self._res.setTempMemory(self.temp_mb * 1024 * 1024)
        return faiss.index_cpu_to_gpu(self._res, self.gpu_id, index)

    @staticmethod
    def to_cpu(index: faiss.Index) -> faiss.Index:
        if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
            return faiss.index_gpu_to_cpu(index)
        return index


def gpu_available() -> bool:
    """faiss-gpu is installed and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def build_index(vectors: np.ndarray, cfg: NegativesConfig, seed: int = 0,
                resources: FaissResources | None = None,
                centroids: np.ndarray | None = None) -> tuple[faiss.Index, str]:
    """Index ``vectors`` float32 [N, d] under the inner product; returns (index, kind).

    flat: exact. ivf: with ``index_nlist`` 0 and the epoch's intent ``centroids`` float32
    [k, d] given, the intents are the inverted lists (no second k-means: the clustering
    pass already paid for it); otherwise ``index_nlist`` lists (0 = about 4 sqrt(N)),
    capped so every list gets 39 training points, trained here. ``index_nprobe`` lists
    are probed. hnsw: degree ``index_hnsw_m``, ``index_ef_search``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    kind = choose_kind(n, cfg)
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf" and cfg.index_nlist == 0 and centroids is not None and len(centroids) > 1:
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        index = faiss.IndexIVFFlat(quantizer, d, quantizer.ntotal, ip)
        index.own_fields = True
        quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
        index.nprobe = min(cfg.index_nprobe, quantizer.ntotal)
    elif kind == "ivf":
        nlist = cfg.index_nlist or int(round(4 * math.sqrt(n)))
        nlist = max(1, min(nlist, n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, ip)
        index.cp.seed = int(seed)
        index.nprobe = min(cfg.index_nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.index_hnsw_m, ip)
        index.hnsw.efSearch = cfg.index_ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if resources is not None:
        index = resources.to_device(index)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    if kind == "ivf" and hasattr(index, "nprobe"):
        index.nprobe = min(cfg.index_nprobe, index.nlist)
    return index, kind


def search(index: faiss.Index, queries: np.ndarray, k: int, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: (sims float32 [n, k], ids int64 [n, k], -1 where none)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal)
    sims = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for i in range(0, len(q), chunk):
        sims[i : i + chunk], ids[i : i + chunk] = index.search(q[i : i + chunk], k)
    return sims, ids


@dataclass
class Mined:
    """Mining result for n anchors.

    query_ids: int64 [n]; raw_ids int64 [n, K] and raw_sims float32 [n, K]: the index's
    neighbours in rank order; reasons int8 [n, K] (``REASONS``); neighbors int64 [n, k]:
    the first k kept neighbours (-1 pad); neighbor_sims float32 [n, k] (inner product).
    """

    query_ids: np.ndarray
    raw_ids: np.ndarray
    raw_sims: np.ndarray
    reasons: np.ndarray
    neighbors: np.ndarray
    neighbor_sims: np.ndarray


def first_kept(raw_ids: np.ndarray, raw_sims: np.ndarray, reasons: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` kept candidates of every row in rank order: (ids [n, k] with -1 pad, sims [n, k])."""
    kept = reasons == KEPT
    order = np.argsort(~kept, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(raw_ids, order, axis=1)
    sims = np.take_along_axis(raw_sims, order, axis=1)
    ok = np.take_along_axis(kept, order, axis=1)
    if ids.shape[1] < k:  # fewer candidates than k (tiny data)
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        sims = np.pad(sims, ((0, 0), (0, pad)))
        ok = np.pad(ok, ((0, 0), (0, pad)))
    return np.where(ok, ids, -1), np.where(ok, sims, 0.0).astype(np.float32)


def mine(index: faiss.Index, vectors: np.ndarray, query_ids: np.ndarray, facts: TrainingFacts, k: int,
         candidates: int, exclude_same_user: bool = True) -> Mined:
    """Search the ``candidates`` nearest samples of every query and keep the first ``k``
    that pass the false-negative filter.

    Args:
        vectors: float32 [N, d], all representations by sample id (as indexed).
        query_ids: int64 [n], the anchors to mine for.
    """
    query_ids = np.asarray(query_ids, dtype=np.int64)
    raw_sims, raw_ids = search(index, vectors[query_ids], candidates)
    reasons = false_negative_reasons(query_ids, raw_ids, facts, exclude_same_user)
    nb, nb_sims = first_kept(raw_ids, raw_sims, reasons, k)
    return Mined(query_ids, raw_ids, raw_sims, reasons, nb, nb_sims)


def cosine_of(vectors: np.ndarray, anchors: np.ndarray, others: np.ndarray) -> np.ndarray:
    """float32 [n, m]: cos(vectors[anchor], vectors[other]) for every row; NaN where other < 0."""
    a = vectors[anchors]
    o = vectors[np.where(others < 0, 0, others)]
    num = np.einsum("nd,nmd->nm", a, o)
    den = np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(o, axis=2)
    cos = num / np.maximum(den, 1e-12)
    return np.where(others < 0, np.nan, cos).astype(np.float32)


def neighbour_overlap(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean Jaccard overlap of two epochs' neighbour sets (int64 [n, k], -1 pad), over
    rows where either set is non-empty; NaN when there are none."""
    pv, cv = prev >= 0, cur >= 0
    inter = ((prev[:, :, None] == cur[:, None, :]) & pv[:, :, None] & cv[:, None, :]).any(axis=2).sum(axis=1)
    union = pv.sum(axis=1) + cv.sum(axis=1) - inter
    rows = union > 0
    return float((inter[rows] / union[rows]).mean()) if rows.any() else float("nan")


def balance(sizes: np.ndarray) -> dict[str, float]:
    """Cluster size balance: k, min, max, mean, coefficient of variation, empty clusters,
    and the largest cluster's share of the samples."""
    s = np.asarray(sizes, dtype=np.float64)
    mean = float(s.mean()) if len(s) else 0.0
    return {"k": int(len(s)), "min": float(s.min(initial=0)), "max": float(s.max(initial=0)), "mean": mean,
            "cv": float(s.std() / mean) if mean > 0 else float("nan"), "empty": int((s == 0).sum()),
            "largest_share": float(s.max(initial=0) / max(s.sum(), 1.0))}


def epoch_summary(m: Mined, vectors: np.ndarray, facts: TrainingFacts, rng: np.random.Generator,
                  sample_rows: int = 8192, random_negatives: int = 32) -> dict[str, float]:
    """Negative-quality figures of one epoch's mining (all from training data).

    raw_fn_rate: share of the searched neighbours the filter removed (MISSING excluded);
    removed_by: share per reason; kept_per_anchor: mean number of mined negatives;
    mined_cos / mined_ip: mean cosine / inner product of mined negatives to their anchor;
    random_cos: mean cosine of random training samples of another target (what a random
    batch offers), on up to ``sample_rows`` anchors.
    """
    found = m.reasons != MISSING
    n_found = max(int(found.sum()), 1)
    removed = {REASONS[r]: float((m.reasons == r).sum() / n_found) for r in (SELF, SAME_USER, SAME_TARGET, IN_FUTURE)}
    valid = m.neighbors >= 0
    rows = m.query_ids
    if len(rows) > sample_rows:
        pick = rng.choice(len(rows), sample_rows, replace=False)
    else:
        pick = np.arange(len(rows))
    mined_cos = cosine_of(vectors, rows[pick], m.neighbors[pick])
    rnd = rng.integers(0, len(facts), size=(len(pick), random_negatives))
    rnd = np.where(facts.target[rnd] == facts.target[rows[pick]][:, None], -1, rnd)
    rand_cos = cosine_of(vectors, rows[pick], rnd)
    return {
        "raw_fn_rate": float(sum(removed.values())),
        "removed_by": removed,
        "kept_per_anchor": float(valid.sum(axis=1).mean()) if len(rows) else 0.0,
        "mined_cos": float(np.nanmean(mined_cos)) if np.isfinite(mined_cos).any() else float("nan"),
        "mined_ip": float(m.neighbor_sims[valid].mean()) if valid.any() else float("nan"),
        "random_cos": float(np.nanmean(rand_cos)) if np.isfinite(rand_cos).any() else float("nan"),
    }
