"""The per-epoch refresh of the negative index, shared by one process and Ray workers.

At the start of an epoch, after the representation pass that feeds intent clustering:
build the index over all training samples (every rank builds the same one from the
gathered representations, so every worker can query it), mine this rank's share of
anchors, all-gather the mined neighbours, and on rank 0 write the epoch's index,
neighbour metadata and quality summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import torch

from fenrec_dist.config import Config
from fenrec_dist.negatives.intents import IntentClusters
from fenrec_dist.negatives.index import (
    KEPT,
    FaissResources,
    Mined,
    TrainingFacts,
    balance,
    build_index,
    epoch_summary,
    mine,
    neighbour_overlap,
    reasons_for,
    search,
)
from fenrec_dist.negatives.store import NegativesStore, neighbors_from_table, samples_table

@dataclass
class EpochIndex:
    """The epoch's index as the loss uses it.

    vectors: float [U, d] epoch-start representations (training device): this rank's samples
        by local row (one process: every sample, by sample id), then the distinct neighbours
        mined on other ranks.
    neighbors: long [n_r, k] mined negatives of each local row, as rows of ``vectors`` (-1 = none).
    intent_of: long [U] intent of every row of ``vectors`` at the epoch start, or None.
    index: the FAISS index (queryable by every worker).
    """

    epoch: int
    vectors: torch.Tensor
    neighbors: torch.Tensor
    intent_of: torch.Tensor | None
    index: faiss.Index
    seconds: dict[str, float] = field(default_factory=dict)


def _words(x: np.ndarray) -> np.ndarray:
    """int64 [n, m]: float32 or int values [n, m] widened to int64 words (float32 bit patterns)."""
    if x.dtype == np.float32:
        return x.view(np.int32).astype(np.int64)
    return x.astype(np.int64)


def mine_sharded(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, facts: TrainingFacts, k: int,
                 candidates: int, exclude_same_user: bool, device: torch.device, chunk: int = 2048
                 ) -> tuple[Mined, np.ndarray]:
    """Mine this rank's samples against every rank's index (collective: every rank calls it).

    Each rank indexes its own samples. Round by round, every rank's next ``chunk`` queries are
    gathered to all ranks; each rank searches its index for the ``candidates`` nearest and
    ships their global ids, similarities, users, targets and vectors back; the owner of a query
    merges the W x ``candidates`` results by similarity (for an exact index: the neighbours one
    index over all samples finds), filters them with its own facts and keeps the first ``k``.

    Args:
        index: this rank's index over ``vectors`` (row i = sample ``ids[i]``).
        ids: int64 [n_r] ascending global sample ids; vectors: float32 [n_r, d]; facts: of the rows.

    Returns:
        (Mined with global ids for this rank's queries in ``ids`` order, the kept neighbours'
        vectors float32 [n_r, k, d], zeros where none).
    """
    from fenrec_dist.comm import all_reduce_min, gather_rows_to_all

    n, d = vectors.shape
    rounds = -all_reduce_min(-(-(-n // chunk)), device)  # the most rounds any rank needs
    parts: dict[str, list[np.ndarray]] = {k_: [] for k_ in ("raw_ids", "raw_sims", "reasons", "nb", "nb_sims", "vec")}
    for r in range(rounds):
        lo, hi = min(r * chunk, n), min((r + 1) * chunk, n)
        q_ids, q_vec = gather_rows_to_all(ids[lo:hi], vectors[lo:hi], device)  # every rank's queries
        sims, pos = search(index, q_vec, candidates) if len(q_ids) else (
            np.zeros((0, candidates), np.float32), np.zeros((0, candidates), np.int64))
        if sims.shape[1] < candidates:  # a small shard: pad to the common width
            pad = candidates - sims.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
        safe = np.where(pos < 0, 0, pos)
        gid = np.where(pos < 0, -1, ids[safe])
        meta = np.concatenate([gid, _words(sims.astype(np.float32)), np.where(pos < 0, -1, facts.user[safe]),
                               np.where(pos < 0, -1, facts.target[safe])], axis=1).astype(np.int64)
        vecs = np.where((pos < 0)[:, :, None], 0.0, vectors[safe]).astype(np.float32).reshape(len(q_ids), -1)
        m_ids, m_meta = gather_rows_to_all(q_ids, meta, device)  # W rows per query, in rank order
        _, m_vec = gather_rows_to_all(q_ids, vecs, device)
        mine = np.isin(m_ids, ids[lo:hi])
        m_meta, m_vec = m_meta[mine], m_vec[mine]
        q = hi - lo
        if q == 0:
            continue
        world = len(m_meta) // q
        cm = m_meta.reshape(q, world, 4, candidates).transpose(0, 2, 1, 3).reshape(q, 4, world * candidates)
        c_ids, c_user, c_target = cm[:, 0], cm[:, 2], cm[:, 3]
        c_sims = cm[:, 1].astype(np.int32).view(np.float32)
        c_vec = m_vec.reshape(q, world * candidates, d)
        order = np.argsort(-c_sims, axis=1, kind="stable")[:, :candidates]
        take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        c_ids, c_sims, c_user, c_target = take(c_ids), take(c_sims), take(c_user), take(c_target)
        c_vec = np.take_along_axis(c_vec, order[:, :, None], axis=1)
        rows = np.arange(lo, hi)
        reasons = reasons_for(ids[rows], facts.user[rows], facts.target[rows], facts.future[rows],
                              facts.future_len[rows], c_ids, c_user, c_target, exclude_same_user)
        kept = reasons == KEPT
        korder = np.argsort(~kept, axis=1, kind="stable")[:, :k]
        ok = np.take_along_axis(kept, korder, axis=1)
        parts["raw_ids"].append(c_ids)
        parts["raw_sims"].append(c_sims)
        parts["reasons"].append(reasons)
        parts["nb"].append(np.where(ok, np.take_along_axis(c_ids, korder, axis=1), -1))
        parts["nb_sims"].append(np.where(ok, np.take_along_axis(c_sims, korder, axis=1), 0.0).astype(np.float32))
        parts["vec"].append(np.where(ok[:, :, None], np.take_along_axis(c_vec, korder[:, :, None], axis=1), 0.0))
    cat = lambda key, shape: np.concatenate(parts[key]) if parts[key] else np.zeros(shape)  # noqa: E731
    m = Mined(query_ids=ids.copy(), raw_ids=cat("raw_ids", (0, candidates)).astype(np.int64),
              raw_sims=cat("raw_sims", (0, candidates)).astype(np.float32),
              reasons=cat("reasons", (0, candidates)).astype(np.int8),
              neighbors=cat("nb", (0, k)).astype(np.int64), neighbor_sims=cat("nb_sims", (0, k)).astype(np.float32))
    return m, cat("vec", (0, k, d)).astype(np.float32)


def neighbour_cache(ids: np.ndarray, vectors: np.ndarray, neighbors: np.ndarray, nb_vectors: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(cache float32 [n_r + R, d], neighbours int64 [n_r, k] as cache rows, -1 none): this rank's
    vectors, then the R distinct remote neighbours' vectors.

    Args:
        ids: int64 [n_r] ascending sample ids of ``vectors`` float32 [n_r, d]; neighbors int64
            [n_r, k] global sample ids (-1 none); nb_vectors float32 [n_r, k, d] their vectors.
    """
    n = len(ids)
    ok = neighbors >= 0
    pos = np.searchsorted(ids, np.where(ok, neighbors, 0))
    local = ok & (pos < n) & (ids[np.minimum(pos, n - 1)] == neighbors)
    remote = ok & ~local
    r_ids, first, inv = np.unique(neighbors[remote], return_index=True, return_inverse=True)
    out = np.full(neighbors.shape, -1, dtype=np.int64)
    out[local] = pos[local]
    out[remote] = n + inv
    cache = np.concatenate([vectors.astype(np.float32), nb_vectors[remote][first]]) if len(r_ids) else \
        vectors.astype(np.float32)
    return cache, out


class IndexRefresher:
    """Owns the FAISS resources (one per process) and the previous epoch's neighbours."""

    def __init__(self, cfg: Config, facts: TrainingFacts, store: NegativesStore | None = None,
                 rank: int = 0, world_size: int = 1, ids: np.ndarray | None = None, gpu_id: int = 0) -> None:
        self.cfg = cfg
        self.neg = cfg.negatives
        self.facts = facts
        self.ids = np.arange(len(facts), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        self.store = store if rank == 0 else None
        self.rank = rank
        self.world_size = world_size
        self.resources = FaissResources(self.neg.index_device, self.neg.index_gpu_temp_mb, gpu_id)
        self.prev: np.ndarray | None = None
        self.summary: dict[str, Any] | None = None

    def _previous(self, epoch: int) -> np.ndarray | None:
        if self.prev is not None or self.store is None or self.world_size > 1:
            return self.prev
        if epoch - 1 in self.store.epochs():  # resumed run: read last epoch's neighbours back
            return neighbors_from_table(self.store.load_samples(epoch - 1), len(self.facts), self.neg.index_k)
        return None

    def refresh(self, epoch: int, vectors: np.ndarray, device: torch.device,
                intents: IntentClusters | None = None) -> EpochIndex:
        """Build, mine and (rank 0) save.

        Args:
            vectors: float32 [n_r, d], this rank's samples in ``ids`` order (one process: every
                sample, by sample id).

        Returns:
            The EpochIndex the loss reads by local row (one process: by sample id).
        """
        neg = self.neg
        n = len(vectors)
        if n != len(self.facts):
            raise ValueError(f"index refresh got {n} representations for {len(self.facts)} training samples")
        t0 = time.perf_counter()
        index, kind = build_index(vectors, neg, seed=self.cfg.train.seed + epoch, resources=self.resources,
                                  centroids=intents.centroids if intents is not None else None)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.world_size == 1:
            m = mine(index, vectors, self.ids, self.facts, neg.index_k, neg.index_candidates,
                     neg.index_exclude_same_user)
            cache, rows_nb = vectors, m.neighbors
        else:  # each rank indexes its own samples; queries go to every rank (mine_sharded)
            m, nb_vec = mine_sharded(index, self.ids, vectors, self.facts, neg.index_k, neg.index_candidates,
                                     neg.index_exclude_same_user, device)
            cache, rows_nb = neighbour_cache(self.ids, vectors, m.neighbors, nb_vec)
        t_mine = time.perf_counter() - t0
        intent_of = intents.assign_numpy(cache) if intents is not None else None
        seconds = {"build": t_build, "mine": t_mine}
        if self.rank == 0:  # with several ranks: the figures and saved rows of rank 0's shard
            t0 = time.perf_counter()
            k_int = intents.k if intents is not None else 0
            local = Mined(np.arange(n, dtype=np.int64), m.raw_ids, m.raw_sims, m.reasons, rows_nb, m.neighbor_sims)
            self.summary = self._summarise(epoch, kind, local, m.neighbors, cache, intent_of, k_int)
            if self.store is not None and neg.index_save:
                self.store.save_epoch(epoch, index, samples_table(m, self.facts, epoch, intent_of,
                                                                  rows=np.arange(n)))
                self.store.prune(neg.index_keep)
            seconds["save"] = time.perf_counter() - t0
            self.summary["seconds"] = dict(seconds)
            if self.store is not None:
                self.store.append_summary(self.summary)
        self.prev = m.neighbors
        return EpochIndex(
            epoch=epoch,
            vectors=torch.from_numpy(np.ascontiguousarray(cache, dtype=np.float32)).to(device),
            neighbors=torch.from_numpy(rows_nb).to(device),
            intent_of=torch.from_numpy(intent_of.astype(np.int64)).to(device) if intent_of is not None else None,
            index=index, seconds=seconds,
        )

    def _summarise(self, epoch: int, kind: str, m: Mined, global_nb: np.ndarray, vectors: np.ndarray,
                   intent_of: np.ndarray | None, num_intents: int) -> dict[str, Any]:
        """Figures of this rank's mining; ``m`` by local row (neighbours as rows of ``vectors``),
        ``global_nb`` the same neighbours as sample ids (for the overlap with the last epoch)."""
        rng = np.random.default_rng(self.cfg.train.seed * 7919 + epoch)
        prev = self._previous(epoch)
        rec: dict[str, Any] = {"epoch": epoch, "kind": kind, "rows": int(len(self.facts)), "k": self.neg.index_k,
                               "candidates": self.neg.index_candidates, "gpu": bool(self.resources.use_gpu),
                               "world_size": self.world_size}
        rec.update(epoch_summary(m, vectors, self.facts, rng))
        rec["overlap_prev"] = neighbour_overlap(prev, global_nb) if prev is not None else None
        if intent_of is not None:
            rec["intents"] = balance(np.bincount(intent_of[: len(self.facts)], minlength=num_intents))
        return rec

    def record_training(self, epoch: int, stats: dict[str, float]) -> None:
        """Add the training-time hardness of the epoch (from the loss) to its summary line."""
        if self.store is None or self.summary is None or int(self.summary["epoch"]) != epoch:
            return
        self.summary["train"] = {k: float(v) for k, v in stats.items()}
        self.store.append_summary(self.summary)
