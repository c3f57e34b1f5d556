"""Non-neural baselines under the full-ranking protocol: popularity and first-order Markov.

Both work on plain numpy arrays so they depend on nothing but ``fenrec_dist.metrics``:

* ``last_items`` int [U]: the last input item of each evaluated user (0 = no history);
* ``targets`` int [U]: the item to rank (1..I);
* ``exclude_ids`` int [U, H]: the user's history, 0-padded (0 entries are ignored);
* ``num_items``: I, the catalogue is 1..I.

Scores are float64 and deterministic ties are broken (popularity by lower id), so the
"ties count for the target" rule of ``metrics`` does not flatter these baselines.
``eval_arrays`` builds the three arrays from raw sequences under the leave-one-out split.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from fenrec_dist.metrics import DEFAULT_KS, finalize, merge, rank_metrics, scores_ranks


def _batch_rows(num_items: int, batch_size: int, max_cells: int = 1 << 24) -> int:
    """Rows per batch so that a [rows, I + 1] float64 score block stays under ``max_cells``."""
    return max(1, min(batch_size, max_cells // (num_items + 1)))


def item_counts(sequences: Iterable[np.ndarray], num_items: int) -> np.ndarray:
    """int64 [I + 1]: occurrences of each item in ``sequences`` (index 0 unused, 0)."""
    counts = np.zeros(num_items + 1, dtype=np.int64)
    for s in sequences:
        counts += np.bincount(np.asarray(s, dtype=np.int64), minlength=num_items + 1)[: num_items + 1]
    counts[0] = 0
    return counts


def popularity_scores(train_item_counts: np.ndarray, num_items: int) -> Tensor:
    """float64 [I + 1]: training counts with ties broken toward lower ids; column 0 = -inf.

    score(i) = count(i) + 0.5 * (1 - i / (I + 1)), so equal counts rank by id and the
    ordering between different counts is unchanged.
    """
    c = torch.as_tensor(np.asarray(train_item_counts[: num_items + 1], dtype=np.float64))
    if c.numel() != num_items + 1:
        raise ValueError(f"train_item_counts needs I + 1 = {num_items + 1} entries, got {c.numel()}")
    ids = torch.arange(num_items + 1, dtype=torch.float64)
    s = c + 0.5 * (1.0 - ids / (num_items + 1))
    s[0] = float("-inf")
    return s


def _evaluate(score_rows, targets: np.ndarray, exclude_ids: np.ndarray, num_items: int,
              batch_size: int, ks) -> dict[str, float]:
    targets = np.asarray(targets, dtype=np.int64)
    exclude_ids = np.asarray(exclude_ids, dtype=np.int64)
    if exclude_ids.ndim != 2 or len(exclude_ids) != len(targets):
        raise ValueError("exclude_ids must be [U, H] with U = len(targets)")
    rows = _batch_rows(num_items, batch_size)
    sums: dict[str, float] = {}
    for i in range(0, len(targets), rows):
        sl = slice(i, i + rows)
        ranks = scores_ranks(score_rows(sl), torch.from_numpy(targets[sl]), torch.from_numpy(exclude_ids[sl]))
        sums = merge(sums, rank_metrics(ranks, ks))
    return finalize(sums)


def evaluate_popularity(
    train_item_counts: np.ndarray,
    targets: np.ndarray,
    exclude_ids: np.ndarray,
    num_items: int,
    batch_size: int = 1024,
    ks=DEFAULT_KS,
) -> dict[str, float]:
    """Full-ranking metrics of the popularity baseline.

    Args:
        train_item_counts: int64 [I + 1] training counts; targets: int [U];
        exclude_ids: int [U, H] 0-padded histories; num_items: I.

    Returns:
        ``metrics.finalize`` dict (HR@k, NDCG@k, MRR).
    """
    pop = popularity_scores(train_item_counts, num_items)
    return _evaluate(lambda sl: pop.expand(len(targets[sl]), -1), targets, exclude_ids, num_items, batch_size, ks)


class MarkovBaseline:
    """First-order Markov model: score(next | prev) = count(prev -> next) in training.

    Transition counts are kept sparse as CSR (``indptr`` int64 [I + 2], ``cols`` int64 [nnz],
    ``vals`` float64 [nnz]); a user's scores are the transition row of its last input item
    plus ``1e-6 *`` normalised popularity (ties by id), so unseen transitions fall back to
    popularity without changing the order of observed ones.
    """

    def __init__(self, num_items: int, indptr: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                 popularity: np.ndarray) -> None:
        self.num_items = num_items
        self.indptr, self.cols, self.vals = indptr, cols, vals
        pop = popularity_scores(popularity, num_items).numpy().copy()
        pop[0] = 0.0
        self._prior = torch.from_numpy(1e-6 * pop / (pop.max() + 1.0))
        self._prior[0] = float("-inf")

    @classmethod
    def fit(cls, sequences: Iterable[np.ndarray], num_items: int, block_pairs: int = 1 << 22) -> "MarkovBaseline":
        """Count transitions ``s[t] -> s[t+1]`` over training sequences (each int [L], ids 1..I).

        Pairs are reduced with ``np.unique`` on ``prev * (I + 1) + next`` every ``block_pairs``
        pairs, so memory is O(block_pairs + distinct transitions).
        """
        base = num_items + 1
        counts = np.zeros(base, dtype=np.int64)
        keys_acc: list[np.ndarray] = []
        cnts_acc: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        n_pending = 0

        def reduce(keys: list[np.ndarray], weights: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
            k = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
            w = np.concatenate(weights) if weights else np.ones(len(k), dtype=np.int64)
            uniq, inv = np.unique(k, return_inverse=True)
            return uniq, np.bincount(inv.reshape(-1), weights=w, minlength=len(uniq)).astype(np.int64)

        for s in sequences:
            s = np.asarray(s, dtype=np.int64)
            counts += np.bincount(s, minlength=base)[:base]
            if len(s) > 1:
                pending.append(s[:-1] * base + s[1:])
                n_pending += len(s) - 1
            if n_pending >= block_pairs:
                k, c = reduce(pending, None)
                keys_acc.append(k)
                cnts_acc.append(c)
                pending, n_pending = [], 0
        if pending:
            k, c = reduce(pending, None)
            keys_acc.append(k)
            cnts_acc.append(c)
        keys, vals = reduce(keys_acc, cnts_acc) if len(keys_acc) > 1 else (
            (keys_acc[0], cnts_acc[0]) if keys_acc else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        rows, cols = keys // base, keys % base
        indptr = np.zeros(base + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=base), out=indptr[1:])
        counts[0] = 0
        return cls(num_items, indptr, cols.astype(np.int64), vals.astype(np.float64), counts)

    def scores(self, last_items: np.ndarray) -> Tensor:
        """float64 [B, I + 1]: transition counts from each last item, plus the popularity prior.

        ``last_items`` int [B]; 0 (no history) gives the popularity prior alone.
        """
        last = np.asarray(last_items, dtype=np.int64)
        out = self._prior.expand(len(last), -1).clone()
        starts, ends = self.indptr[last], self.indptr[last + 1]
        lens = ends - starts
        if lens.sum() > 0:
            row = np.repeat(np.arange(len(last)), lens)
            pos = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
            out[torch.from_numpy(row), torch.from_numpy(self.cols[pos])] += torch.from_numpy(self.vals[pos])
        return out

    def evaluate(self, last_items: np.ndarray, targets: np.ndarray, exclude_ids: np.ndarray,
                 batch_size: int = 1024, ks=DEFAULT_KS) -> dict[str, float]:
        """Full-ranking metrics (``metrics.finalize`` dict) of the Markov baseline."""
        last = np.asarray(last_items, dtype=np.int64)
        return _evaluate(lambda sl: self.scores(last[sl]), targets, exclude_ids, self.num_items, batch_size, ks)


def eval_arrays(sequences: Iterable[np.ndarray], split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out evaluation arrays from full user sequences (each int [L], L >= 3).

    ``split='test'``: target = s[-1], history = s[:-1] (the validation item counts as history);
    ``split='valid'``: target = s[-2], history = s[:-2].

    Returns:
        (last_items int64 [U], targets int64 [U], exclude_ids int64 [U, H] right-padded with 0).
    """
    if split not in ("valid", "test"):
        raise ValueError("split must be 'valid' or 'test'")
    cut = 1 if split == "test" else 2
    hists, targets = [], []
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        hists.append(s[:-cut])
        targets.append(s[-cut])
    width = max([len(h) for h in hists] + [1])
    ex = np.zeros((len(hists), width), dtype=np.int64)
    for r, h in enumerate(hists):
        ex[r, : len(h)] = h
    last = np.array([h[-1] if len(h) else 0 for h in hists], dtype=np.int64)
    return last, np.array(targets, dtype=np.int64), ex


def train_parts(sequences: Iterable[np.ndarray]) -> list[np.ndarray]:
    """The training part of each sequence under leave-one-out: ``s[:-2]``."""
    return [np.asarray(s, dtype=np.int64)[:-2] for s in sequences]
