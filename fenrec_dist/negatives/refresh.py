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
from typing import Any, Callable

import faiss
import numpy as np
import torch

from fenrec_dist.config import Config
from fenrec_dist.comm import gather_rows_to_all
from fenrec_dist.negatives.intents import IntentClusters
from fenrec_dist.negatives.index import (
    FaissResources,
    Mined,
    TrainingFacts,
    balance,
    build_index,
    epoch_summary,
    mine,
    neighbour_overlap,
)
from fenrec_dist.negatives.store import NegativesStore, neighbors_from_table, samples_table

# (ids int64 [n_r], rows [n_r, ...]) -> every rank's rows, ordered by id
GatherRows = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _local_gather(ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return gather_rows_to_all(ids, rows, torch.device("cpu"))  # one process: sorts by id


@dataclass
class EpochIndex:
    """The epoch's index as the loss uses it.

    vectors: float [N, d] epoch-start representations by sample id (training device).
    neighbors: long [N, k] mined negatives by sample id (-1 = none).
    intent_of: long [N] intent of every sample at the epoch start, or None.
    index: the FAISS index (queryable by every worker).
    """

    epoch: int
    vectors: torch.Tensor
    neighbors: torch.Tensor
    intent_of: torch.Tensor | None
    index: faiss.Index
    seconds: dict[str, float] = field(default_factory=dict)


class IndexRefresher:
    """Owns the FAISS resources (one per process) and the previous epoch's neighbours."""

    def __init__(self, cfg: Config, facts: TrainingFacts, store: NegativesStore | None = None,
                 rank: int = 0, world_size: int = 1, gather_rows: GatherRows = _local_gather,
                 gpu_id: int = 0) -> None:
        self.cfg = cfg
        self.neg = cfg.negatives
        self.facts = facts
        self.store = store if rank == 0 else None
        self.rank = rank
        self.world_size = world_size
        self.gather_rows = gather_rows
        self.resources = FaissResources(self.neg.index_device, self.neg.index_gpu_temp_mb, gpu_id)
        self.prev: np.ndarray | None = None
        self.summary: dict[str, Any] | None = None

    def _previous(self, epoch: int) -> np.ndarray | None:
        if self.prev is not None or self.store is None:
            return self.prev
        if epoch - 1 in self.store.epochs():  # resumed run: read last epoch's neighbours back
            return neighbors_from_table(self.store.load_samples(epoch - 1), len(self.facts), self.neg.index_k)
        return None

    def refresh(self, epoch: int, vectors: np.ndarray, device: torch.device,
                intents: IntentClusters | None = None) -> EpochIndex:
        """Build, mine, gather and (rank 0) save. ``vectors``: float32 [N, d] by sample id."""
        neg = self.neg
        n = len(vectors)
        if n != len(self.facts):
            raise ValueError(f"index refresh got {n} representations for {len(self.facts)} training samples")
        t0 = time.perf_counter()
        index, kind = build_index(vectors, neg, seed=self.cfg.train.seed + epoch, resources=self.resources,
                                  centroids=intents.centroids if intents is not None else None)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        q = np.arange(self.rank, n, self.world_size, dtype=np.int64)
        m = mine(index, vectors, q, self.facts, neg.index_k, neg.index_candidates, neg.index_exclude_same_user)
        if self.world_size > 1:
            m = self._gather(m)
        t_mine = time.perf_counter() - t0
        intent_of = intents.assign_numpy(vectors) if intents is not None else None
        seconds = {"build": t_build, "mine": t_mine}
        if self.rank == 0:
            t0 = time.perf_counter()
            k_int = intents.k if intents is not None else 0
            self.summary = self._summarise(epoch, kind, m, vectors, intent_of, k_int)
            if self.store is not None and neg.index_save:
                self.store.save_epoch(epoch, index, samples_table(m, self.facts, epoch, intent_of))
                self.store.prune(neg.index_keep)
            seconds["save"] = time.perf_counter() - t0
            self.summary["seconds"] = dict(seconds)
            if self.store is not None:
                self.store.append_summary(self.summary)
        self.prev = m.neighbors
        return EpochIndex(
            epoch=epoch,
            vectors=torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device),
            neighbors=torch.from_numpy(m.neighbors).to(device),
            intent_of=torch.from_numpy(intent_of.astype(np.int64)).to(device) if intent_of is not None else None,
            index=index, seconds=seconds,
        )

    def _gather(self, m: Mined) -> Mined:
        parts = {}
        for name in ("raw_ids", "raw_sims", "reasons", "neighbors", "neighbor_sims"):
            ids, rows = self.gather_rows(m.query_ids, getattr(m, name))
            parts[name] = rows
        return Mined(query_ids=ids, **parts)

    def _summarise(self, epoch: int, kind: str, m: Mined, vectors: np.ndarray, intent_of: np.ndarray | None,
                   num_intents: int) -> dict[str, Any]:
        rng = np.random.default_rng(self.cfg.train.seed * 7919 + epoch)
        prev = self._previous(epoch)
        rec: dict[str, Any] = {"epoch": epoch, "kind": kind, "rows": int(len(vectors)), "k": self.neg.index_k,
                               "candidates": self.neg.index_candidates, "gpu": bool(self.resources.use_gpu)}
        rec.update(epoch_summary(m, vectors, self.facts, rng))
        rec["overlap_prev"] = neighbour_overlap(prev, m.neighbors) if prev is not None else None
        if intent_of is not None:
            rec["intents"] = balance(np.bincount(intent_of, minlength=num_intents))
        return rec

    def record_training(self, epoch: int, stats: dict[str, float]) -> None:
        """Add the training-time hardness of the epoch (from the loss) to its summary line."""
        if self.store is None or self.summary is None or int(self.summary["epoch"]) != epoch:
            return
        self.summary["train"] = {k: float(v) for k, v in stats.items()}
        self.store.append_summary(self.summary)
