"""The FAISS index of the item table: top-scoring items for a representation.

Scores are inner products with the item embeddings (the scoring layer), so the index is an
inner-product index over rows 1..I of the table (row 0, the padding, is left out; FAISS
labels are item id - 1). Exact (``IndexFlatIP``) below ``negatives.item_index_exact_below``
items, else ``negatives.item_index_type``: IVF (``item_index_nlist`` lists, 0 = about
sqrt(I), k-means on a seeded sample of 64 rows per list, ``item_index_nprobe`` probed) or
HNSW. Built once per refresh (each epoch, optionally every ``item_index_refresh_steps``) and
read by the sampled L_rec's mined candidates, by evaluation and by export.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from fenrec_dist.config import NegativesConfig
from fenrec_dist.negatives.index import FaissResources

TRAIN_PER_LIST = 64  # IVF k-means sample: rows per list (FAISS warns below 39)


def choose_item_kind(num_items: int, cfg: NegativesConfig) -> str:
    """flat below ``item_index_exact_below`` items, else ``item_index_type``."""
    return "flat" if num_items < cfg.item_index_exact_below else cfg.item_index_type


def ivf_lists(num_items: int, cfg: NegativesConfig) -> int:
    """IVF list count: ``item_index_nlist`` or about sqrt(I), at most I / 39."""
    nlist = cfg.item_index_nlist or int(round(math.sqrt(num_items)))
    return max(1, min(nlist, num_items // 39))


@dataclass
class ItemIndex:
    """An inner-product index over items 1..I.

    index: the FAISS index (labels = item id - 1); kind: flat, ivf or hnsw;
    num_items: I; dim: d; build_seconds: time of the last ``build`` (train + add).
    """

    index: faiss.Index
    kind: str
    num_items: int
    dim: int
    build_seconds: float = 0.0

    @classmethod
    def build(cls, item_weights: np.ndarray, cfg: NegativesConfig, seed: int = 0,
              resources: FaissResources | None = None) -> "ItemIndex":
        """Index the item table.

        Args:
            item_weights: float32 [I + 1, d], the item embedding table (row 0 = padding, skipped).
            cfg: the ``negatives.item_index_*`` keys.
            seed: seed of the IVF k-means and of its training sample.
            resources: GPU placement (flat and IVF; HNSW stays on CPU), or None for CPU.
        """
        t0 = time.perf_counter()
        x = np.ascontiguousarray(item_weights[1:], dtype=np.float32)
        n, d = x.shape
        if n == 0:
            raise ValueError("ItemIndex.build: the item table has no items (only the padding row)")
        kind = choose_item_kind(n, cfg)
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nlist = ivf_lists(n, cfg)
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
            index.own_fields = True
            quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
            index.cp.seed = int(seed)
            index.cp.niter = 10
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.item_index_hnsw_m, ip)
            index.hnsw.efSearch = cfg.item_index_ef_search
        else:
            raise ValueError(f"negatives.item_index_type: unknown index kind {kind!r}")
        if resources is not None:
            index = resources.to_device(index)
        if not index.is_trained:
            m = min(n, TRAIN_PER_LIST * index.nlist)
            sample = x if m == n else x[np.random.default_rng(seed).choice(n, m, replace=False)]
            index.train(np.ascontiguousarray(sample))
        index.add(x)
        if kind == "ivf":
            index.nprobe = min(cfg.item_index_nprobe, index.nlist)
        return cls(index, kind, n, d, time.perf_counter() - t0)

    def search(self, reprs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest-scoring items of each representation.

        Args:
            reprs: float [n, d] representations.
        Returns:
            (scores float32 [n, k], ids int64 [n, k]) in descending score; ids are item ids
            1..I, 0 where the index found fewer than k (score -inf there).
        """
        q = np.ascontiguousarray(reprs, dtype=np.float32)
        kk = min(int(k), self.num_items)
        scores, labels = self.index.search(q, kk) if len(q) else (np.zeros((0, kk), np.float32),
                                                                   np.zeros((0, kk), np.int64))
        ids = np.where(labels >= 0, labels + 1, 0).astype(np.int64)
        scores = np.where(labels >= 0, scores, -np.inf).astype(np.float32)
        if kk < k:
            ids = np.pad(ids, ((0, 0), (0, k - kk)))
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        return scores, ids

    def mine(self, reprs: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Hard items: each row's ``k`` highest-scoring items that are not in its ``exclude`` row.

        Args:
            reprs: float [n, d]; exclude: int [n, E] item ids never returned for that row (the
                sample's own soft-label window: training information only; 0 = none), or None.
        Returns:
            int64 [n, k] item ids in descending score, 0 in slots left empty (pass as
            ``mined_items`` to ``FENRecLoss``; the loss skips 0).
        """
        e = 0 if exclude is None else exclude.shape[1]
        _, ids = self.search(reprs, k + e)
        if e == 0:
            return ids[:, :k]
        ex = np.asarray(exclude, dtype=np.int64)
        drop = (ids[:, :, None] == ex[:, None, :]).any(axis=2) | (ids == 0)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept ones first, rank order kept
        out = np.take_along_axis(ids, order, axis=1)
        return np.where(np.take_along_axis(drop, order, axis=1), 0, out)

    def save(self, path: str) -> None:
        """``faiss.write_index`` of the CPU copy (the caller makes the write atomic)."""
        faiss.write_index(FaissResources.to_cpu(self.index), str(path))

    @classmethod
    def load(cls, path: str, kind: str) -> "ItemIndex":
        index = faiss.read_index(str(path))
        return cls(index, kind, index.ntotal, index.d)
