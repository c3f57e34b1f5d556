"""Epoch plans: which samples form each batch, and each anchor's same-target partner.

Everything here is a pure function of (seed, epoch), so an epoch is reproducible
and a resumed run replays exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fenrec_dist.data.dataset import same_target_index


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """Independent, deterministic numpy generator for (seed, epoch, stream)."""
    return np.random.default_rng([seed, epoch, stream])


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    grouping: bool = False,
    window_batches: int = 64,
    order_rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Partition ``range(N)`` into batches for one epoch.

    Args:
        lengths: int [N] input lengths (used only when ``grouping``).
        batch_size: samples per batch (the last batch of a window may be smaller).
        rng: the epoch's generator.
        grouping: sort each shuffled window of ``window_batches * batch_size`` samples
            by length, so batches hold similar lengths and little padding is computed;
            the batch order is then shuffled across the whole epoch. Each sample's own
            computation is unchanged, but which samples share a batch (the in-batch, hard
            and noise negatives' context) is not the random draw of the paper. False: the
            shuffled epoch cut in order, random batches.
        order_rng: draws that shuffle of the batch order instead of ``rng``. Data-parallel
            workers pass one generator seeded alike on every rank: with equal batch counts
            the ranks then take their k-th batch from the same position of a length-sorted
            window, so the batches of one synchronous step have similar lengths and no rank
            waits for another's long batch.

    Returns:
        list of int64 arrays; every sample appears exactly once.
    """
    n = len(lengths)
    perm = rng.permutation(n)
    if not grouping:
        return [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    window = max(1, window_batches) * batch_size
    batches: list[np.ndarray] = []
    for w in range(0, n, window):
        chunk = perm[w : w + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = (rng if order_rng is None else order_rng).permutation(len(batches))
    return [batches[i] for i in order]


@dataclass
class PartnerIndex:
    """Samples grouped by target, for drawing same-target partners.

    order: int64 [N] sample indices sorted by target; offsets: int64 [I + 2] CSR
    offsets (group of target t is order[offsets[t]:offsets[t+1]]); rank: int64 [N]
    position of each sample inside its group.
    """

    order: np.ndarray
    offsets: np.ndarray
    rank: np.ndarray

    @classmethod
    def build(cls, target: np.ndarray, num_items: int) -> "PartnerIndex":
        target = np.asarray(target, dtype=np.int64)
        order, offsets = same_target_index(target, num_items)
        rank = np.empty(len(target), dtype=np.int64)
        rank[order] = np.arange(len(target)) - offsets[target[order]]
        return cls(order, offsets, rank)

    def draw(self, idx: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each sample in ``idx`` (targets ``target[idx]``) a random *other* sample with the
        same target, or itself when it is alone in its group. int64 [len(idx)]."""
        t = np.asarray(target, dtype=np.int64)[idx]
        start = self.offsets[t]
        size = self.offsets[t + 1] - start
        r = np.floor(rng.random(len(idx)) * np.maximum(size - 1, 1)).astype(np.int64)
        r = r + (r >= self.rank[idx])  # skip the anchor itself
        out = self.order[np.minimum(start + r, start + size - 1)]
        return np.where(size > 1, out, idx)


def to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.int64, copy=False)).to(device, non_blocking=True)
