"""Fine-grained intents: k-means over the epoch's sample representations (FAISS).

At the start of every epoch the representations of all training samples (eval
mode) are clustered with FAISS k-means; the centroids are L2-normalised to serve as
positives, and each representation's intent is its nearest (raw) centroid, found
through a FAISS flat L2 index — the k-means assignment rule.
"""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import torch


class IntentClusters:
    """The epoch's intents.

    Args:
        centroids: float32 [k, d], raw k-means centroids.
    """

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.index = faiss.IndexFlatL2(self.centroids.shape[1])
        self.index.add(self.centroids)
        normed = self.centroids / np.maximum(np.linalg.norm(self.centroids, axis=1, keepdims=True), 1e-12)
        self._normed = torch.from_numpy(normed)
        self._normed_on: dict[str, torch.Tensor] = {}

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def fit(
        cls,
        reprs: np.ndarray,
        k: int,
        niter: int = 20,
        seed: int = 0,
        max_points_per_centroid: int = 1 << 30,
        nredo: int = 1,
    ) -> "IntentClusters":
        """k-means on reprs float32 [N, d]; k is capped at N (with a warning). ``nredo`` runs it
        that many times from different seeds (the first as with nredo=1) and keeps the centroids
        of the lowest objective."""
        x = np.ascontiguousarray(reprs, dtype=np.float32)
        if k > x.shape[0]:
            warnings.warn(f"intents.k={k} exceeds the {x.shape[0]} samples; using k={x.shape[0]}")
            k = x.shape[0]
        km = faiss.Kmeans(
            x.shape[1], k, niter=niter, seed=seed, verbose=False, nredo=nredo,
            max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1,
        )
        km.train(x)
        return cls(km.centroids)

    def assign_numpy(self, reprs: np.ndarray) -> np.ndarray:
        """reprs float32 [N, d] -> int64 [N] nearest-centroid ids (FAISS search)."""
        _, idx = self.index.search(np.ascontiguousarray(reprs, dtype=np.float32), 1)
        return idx[:, 0]

    def normed(self, device: torch.device | str) -> torch.Tensor:
        """float32 [k, d]: the L2-normalised centroids on ``device`` (copied there once)."""
        key = str(device)
        if key not in self._normed_on:
            self._normed_on[key] = self._normed.to(device)
        return self._normed_on[key]

    def assign(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z float [B, d] -> (intent ids long [B], normalised centroids float [B, d]) on z's device."""
        ids = torch.from_numpy(self.assign_numpy(z.detach().float().cpu().numpy())).to(z.device)
        return ids, self.normed(z.device)[ids].to(z.dtype)

    def sizes(self, reprs: np.ndarray) -> np.ndarray:
        """int64 [k]: cluster sizes of the given representations."""
        return np.bincount(self.assign_numpy(reprs), minlength=self.k)
