"""Leave-one-out split and training samples of time-ordered sequences, vectorised.

Sequences arrive in CSR form: ``items`` int32 [total] holds the users' items in time
order, user ``u``'s sequence is ``items[offsets[u]:offsets[u+1]]`` (length n_u >= 3).

Split of a sequence of length n: ``train = seq[:n-2]`` (length L = n - 2),
``valid = seq[n-2]``, ``test = seq[n-1]``.

Training samples of a user: for every position t in 1..L-1 of the training part,
``input = train[max(0, t-max_len):t]`` (most recent last), ``target = train[t]``,
``future = train[t:min(t+horizon+1, L)]`` (target first, never reaching valid/test).
Positions, never first occurrences of ids, define everything (repeated items are fine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def samples_per_user(lengths: np.ndarray) -> np.ndarray:
    """int64 [U]: training samples of users with sequence lengths ``lengths`` (max(n-3, 0))."""
    return np.maximum(np.asarray(lengths, dtype=np.int64) - 3, 0)


def exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    """int64 [len(x)+1]: 0, x0, x0+x1, ..."""
    out = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out


def gather_ranges(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``values[starts[k]:starts[k]+lengths[k]]`` for all k.

    Returns (flat values [sum(lengths)], offsets int64 [K+1]).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = exclusive_cumsum(lengths)
    idx = np.arange(offsets[-1], dtype=np.int64)
    idx += np.repeat(np.asarray(starts, dtype=np.int64) - offsets[:-1], lengths)
    return values[idx], offsets


@dataclass
class SampleBlock:
    """Training samples of a block of users, in canonical order (user, then position).

    N samples; list columns as (values, offsets int64 [N+1]).
    """

    sample_id: np.ndarray      # int64 [N]
    user: np.ndarray           # int64 [N]
    input_values: np.ndarray   # int32 [sum input_len]
    input_offsets: np.ndarray  # int64 [N+1]
    input_len: np.ndarray      # int32 [N]
    target: np.ndarray         # int32 [N]
    future_values: np.ndarray  # int32 [sum future_len]
    future_offsets: np.ndarray  # int64 [N+1]
    future_len: np.ndarray     # int32 [N]
    position: np.ndarray       # int32 [N]

    def __len__(self) -> int:
        return len(self.sample_id)


@dataclass
class EvalBlock:
    """Evaluation rows of a block of U users: whole training part, valid and test item."""

    user: np.ndarray             # int64 [U]
    history_values: np.ndarray   # int32 [sum(n_u - 2)]
    history_offsets: np.ndarray  # int64 [U+1]
    valid: np.ndarray            # int32 [U]
    test: np.ndarray             # int32 [U]


def build_samples(items: np.ndarray, offsets: np.ndarray, users: np.ndarray, first_sample_id: np.ndarray,
                  max_len: int, horizon: int) -> SampleBlock:
    """Training samples of U users.

    items int32 [total], offsets int64 [U+1] (every n_u >= 3), users int64 [U] (output
    ids), first_sample_id int64 [U] (sample_id of each user's first sample).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = np.diff(offsets)
    train_len = n - 2
    per_user = samples_per_user(n)
    starts = exclusive_cumsum(per_user)
    total = int(starts[-1])
    owner = np.repeat(np.arange(len(n), dtype=np.int64), per_user)
    t = np.arange(total, dtype=np.int64) - starts[:-1][owner] + 1  # 1..L-1
    target_idx = offsets[:-1][owner] + t
    in_len = np.minimum(t, max_len)
    input_values, input_offsets = gather_ranges(items, target_idx - in_len, in_len)
    fut_len = np.minimum(horizon + 1, train_len[owner] - t)
    future_values, future_offsets = gather_ranges(items, target_idx, fut_len)
    return SampleBlock(
        sample_id=np.asarray(first_sample_id, dtype=np.int64)[owner] + t - 1,
        user=np.asarray(users, dtype=np.int64)[owner],
        input_values=input_values.astype(np.int32, copy=False),
        input_offsets=input_offsets,
        input_len=in_len.astype(np.int32),
        target=items[target_idx].astype(np.int32, copy=False),
        future_values=future_values.astype(np.int32, copy=False),
        future_offsets=future_offsets,
        future_len=fut_len.astype(np.int32),
        position=t.astype(np.int32),
    )


def build_eval(items: np.ndarray, offsets: np.ndarray, users: np.ndarray) -> EvalBlock:
    """Leave-one-out evaluation rows of U users (same inputs as ``build_samples``)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = np.diff(offsets)
    hist_values, hist_offsets = gather_ranges(items, offsets[:-1], n - 2)
    return EvalBlock(
        user=np.asarray(users, dtype=np.int64),
        history_values=hist_values.astype(np.int32, copy=False),
        history_offsets=hist_offsets,
        valid=items[offsets[1:] - 2].astype(np.int32, copy=False),
        test=items[offsets[1:] - 1].astype(np.int32, copy=False),
    )
