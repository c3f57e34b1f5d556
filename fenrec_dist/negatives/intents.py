"""Fine-grained intents: k-means over the epoch's sample representations.

At the start of every epoch the representations of all training samples (eval
mode) are clustered with k-means; the centroids are L2-normalised to serve as
positives, and each representation's intent is its nearest (raw) centroid by squared L2
distance, the k-means assignment rule.

Two backends compute the same thing (``intents.backend``):

* ``faiss``: ``faiss.Kmeans`` (on the GPU with faiss-gpu) and a flat L2 index;
* ``torch``: ``negatives/torch_kmeans.py`` and ``negatives/knn.py`` (matrix products and
  ``max``) on any torch device; from the same seed it starts from the same points as FAISS
  and gives the same centroids up to float rounding (tests/test_torch_kmeans.py).

``auto`` takes faiss-gpu on CUDA when it is installed, torch on CUDA otherwise (the CUDA 13
GPU image has no faiss-gpu; no host round trip per batch then), and FAISS on CPU (faster
there: 1.8 s against 5.2 s for 132,794 x 64, k = 256, 20 iterations, one thread), torch
when faiss is not importable.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "faiss", "torch"]


def _faiss():  # type: ignore[no-untyped-def]
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_gpus() -> int:
    """GPUs faiss can use (0 without faiss-gpu)."""
    faiss = _faiss()
    if faiss is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # a faiss-gpu build without a usable driver
        return 0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """'faiss' or 'torch' for the configured ``backend`` on ``device`` (None: CUDA when present).

    auto: faiss-gpu on CUDA when present, else torch on CUDA; faiss on CPU, torch when faiss
    is missing. An explicit 'faiss' without faiss installed raises ImportError saying so.
    """
    dev = torch.device(device) if device is not None else default_device()
    if backend == "torch":
        return "torch"
    if backend == "faiss":
        if _faiss() is None:
            raise ImportError("intents.backend=faiss, but faiss is not installed (pip install faiss-cpu, or "
                              "faiss-gpu-cu12 on GPU nodes); intents.backend=torch needs no faiss")
        return "faiss"
    if backend != "auto":
        raise ValueError(f"intents.backend: {backend!r} is not one of ['auto', 'faiss', 'torch']")
    if dev.type == "cuda":
        return "faiss" if faiss_gpus() > 0 else "torch"
    return "faiss" if _faiss() is not None else "torch"


class IntentClusters:
    """The epoch's intents.

    Args:
        centroids: float32 [k, d], raw k-means centroids.
        backend: how ``assign`` finds the nearest centroid: 'auto', 'faiss' (a flat L2 index
            on the host) or 'torch' (``knn.nearest`` on the queries' device).
        device: where auto looks for CUDA and where ``assign_numpy`` computes with torch
            (None: CUDA when present).
    """

    def __init__(self, centroids: np.ndarray | torch.Tensor, backend: Backend = "auto",
                 device: torch.device | str | None = None) -> None:
        if isinstance(centroids, torch.Tensor):
            centroids = centroids.detach().float().cpu().numpy()
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.device = torch.device(device) if device is not None else default_device()
        self.backend = resolve_backend(backend, self.device)
        self.index = None
        if self.backend == "faiss":
            faiss = _faiss()
            self.index = faiss.IndexFlatL2(self.centroids.shape[1])
            self.index.add(self.centroids)
        normed = self.centroids / np.maximum(np.linalg.norm(self.centroids, axis=1, keepdims=True), 1e-12)
        self._normed = torch.from_numpy(normed)
        self._normed_on: dict[str, torch.Tensor] = {}
        self._raw_on: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def fit(
        cls,
        reprs: np.ndarray | torch.Tensor,
        k: int,
        niter: int = 20,
        seed: int = 0,
        max_points_per_centroid: int = 1 << 30,
        nredo: int = 1,
        backend: Backend = "auto",
        device: torch.device | str | None = None,
    ) -> "IntentClusters":
        """k-means on reprs float32 [N, d] (numpy, or a tensor: the torch backend then clusters
        on its device); k is capped at N (with a warning). ``nredo`` runs it that many times
        from different seeds (the first as with nredo=1) and keeps the centroids of the lowest
        objective. ``backend``/``device``: see the class and ``resolve_backend`` (device None:
        the tensor's device, else CUDA when present)."""
        if device is None and isinstance(reprs, torch.Tensor):
            device = reprs.device
        dev = torch.device(device) if device is not None else default_device()
        which = resolve_backend(backend, dev)
        n = int(reprs.shape[0])
        if k > n:
            warnings.warn(f"intents.k={k} exceeds the {n} samples; using k={n}")
            k = n
        if which == "torch":
            from fenrec_dist.negatives.torch_kmeans import kmeans

            x = reprs if isinstance(reprs, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(reprs))
            res = kmeans(x.to(dev), k, niter=niter, seed=seed, nredo=nredo,
                         max_points_per_centroid=max_points_per_centroid)
            out = cls(res.centroids, backend="torch", device=dev)
            out._raw_on[str(dev)] = (res.centroids, (res.centroids * res.centroids).sum(dim=1))
            return out
        x = reprs.detach().float().cpu().numpy() if isinstance(reprs, torch.Tensor) else reprs
        x = np.ascontiguousarray(x, dtype=np.float32)
        km = _faiss().Kmeans(
            x.shape[1], k, niter=niter, seed=seed, verbose=False, nredo=nredo,
            max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1,
            gpu=dev.type == "cuda" and faiss_gpus() > 0,
        )
        km.train(x)
        return cls(km.centroids, backend="faiss", device=dev)

    def _raw(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(centroids float32 [k, d], their squared norms float32 [k]) on ``device``, cached."""
        key = str(device)
        if key not in self._raw_on:
            c = torch.from_numpy(self.centroids).to(device)
            self._raw_on[key] = (c, (c * c).sum(dim=1))
        return self._raw_on[key]

    def assign_numpy(self, reprs: np.ndarray) -> np.ndarray:
        """reprs float32 [N, d] -> int64 [N] nearest-centroid ids."""
        x = np.ascontiguousarray(reprs, dtype=np.float32)
        if self.index is not None:
            _, idx = self.index.search(x, 1)
            return idx[:, 0]
        return self.assign_ids(torch.from_numpy(x).to(self.device)).cpu().numpy()

    def assign_ids(self, z: torch.Tensor) -> torch.Tensor:
        """z float [N, d] -> long [N] nearest-centroid ids on z's device. With the torch
        backend no host round trip (matrix product and max on z's device)."""
        if self.index is not None:
            return torch.from_numpy(self.assign_numpy(z.detach().float().cpu().numpy())).to(z.device)
        from fenrec_dist.negatives.knn import nearest

        c, c_sq = self._raw(z.device)
        return nearest(z.detach().float(), c, c_sq)[1]

    def normed(self, device: torch.device | str) -> torch.Tensor:
        """float32 [k, d]: the L2-normalised centroids on ``device`` (copied there once)."""
        key = str(device)
        if key not in self._normed_on:
            self._normed_on[key] = self._normed.to(device)
        return self._normed_on[key]

    def assign(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z float [B, d] -> (intent ids long [B], normalised centroids float [B, d]) on z's device."""
        ids = self.assign_ids(z)
        return ids, self.normed(z.device)[ids].to(z.dtype)

    def sizes(self, reprs: np.ndarray) -> np.ndarray:
        """int64 [k]: cluster sizes of the given representations."""
        return np.bincount(self.assign_numpy(reprs), minlength=self.k)
