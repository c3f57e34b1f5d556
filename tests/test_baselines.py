"""Popularity and first-order Markov baselines on hand-checkable logs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fenrec_dist.baselines import (
    MarkovBaseline,
    eval_arrays,
    evaluate_popularity,
    item_counts,
    popularity_scores,
    train_parts,
)


def test_popularity_scores_break_ties_by_id_and_skip_padding():
    s = popularity_scores(np.array([0, 5, 3, 3, 0, 7]), 5)
    assert s.shape == (6,) and s.dtype == torch.float64
    assert torch.isneginf(s[0])
    order = torch.argsort(s[1:], descending=True) + 1
    assert order.tolist() == [5, 1, 2, 3, 4]


def test_evaluate_popularity_hand_example():
    counts = np.array([0, 5, 3, 3, 1])
    # user 0: target 3, item 1 in history -> only item 2 (tie, lower id) is above: rank 1
    # user 1: target 1, nothing excluded -> rank 0
    # user 2: target 4, history {2} -> items 1, 3 above: rank 2
    m = evaluate_popularity(counts, np.array([3, 1, 4]), np.array([[1, 0], [0, 0], [0, 2]]), 4, batch_size=2)
    assert m["HR@5"] == pytest.approx(1.0)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(4)) / 3)
    assert m["MRR"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)


def _toy() -> list[np.ndarray]:
    return [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([1, 3]), np.array([5])]


def test_markov_fit_counts_transitions_as_csr():
    mk = MarkovBaseline.fit(_toy(), num_items=5)
    assert mk.indptr.shape == (7,)
    rows = {r: dict(zip(mk.cols[mk.indptr[r]:mk.indptr[r + 1]].tolist(), mk.vals[mk.indptr[r]:mk.indptr[r + 1]].tolist()))
            for r in range(6)}
    assert rows == {0: {}, 1: {2: 2.0, 3: 1.0}, 2: {3: 1.0, 4: 1.0}, 3: {}, 4: {}, 5: {}}
    # reducing in tiny blocks gives the same counts
    small = MarkovBaseline.fit(_toy(), num_items=5, block_pairs=1)
    assert np.array_equal(small.indptr, mk.indptr) and np.array_equal(small.cols, mk.cols)
    assert np.array_equal(small.vals, mk.vals)


def test_markov_scores_transitions_then_popularity():
    mk = MarkovBaseline.fit(_toy(), num_items=5)
    s = mk.scores(np.array([1, 2, 0, 5]))
    assert s.shape == (4, 6)
    rank = lambda row: (torch.argsort(row[1:], descending=True) + 1).tolist()  # noqa: E731
    # popularity: 1 (3x), 2 (2x), 3 (2x), 4 (1x), 5 (1x); ties by id
    assert rank(s[0]) == [2, 3, 1, 4, 5]
    assert rank(s[1]) == [3, 4, 1, 2, 5]
    assert rank(s[2]) == rank(s[3]) == [1, 2, 3, 4, 5]
    assert s[0, 2] == pytest.approx(2.0, abs=1e-5) and s[0, 3] == pytest.approx(1.0, abs=1e-5)


def test_markov_evaluate_hand_example():
    mk = MarkovBaseline.fit(_toy(), num_items=5)
    # after 1 the target 3 is second (2 is above) unless 2 is in the history
    m = mk.evaluate(np.array([1, 1]), np.array([3, 3]), np.array([[1, 0], [1, 2]]))
    assert m["MRR"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1) / 2)


def test_eval_arrays_and_train_parts():
    seqs = [np.array([4, 5, 6, 7]), np.array([1, 2, 3])]
    last, tg, ex = eval_arrays(seqs, "test")
    assert last.tolist() == [6, 2] and tg.tolist() == [7, 3]
    assert ex.tolist() == [[4, 5, 6], [1, 2, 0]]
    last, tg, ex = eval_arrays(seqs, "valid")
    assert last.tolist() == [5, 1] and tg.tolist() == [6, 2] and ex.tolist() == [[4, 5], [1, 0]]
    assert [p.tolist() for p in train_parts(seqs)] == [[4, 5], [1]]
    assert item_counts(train_parts(seqs), 7).tolist() == [0, 1, 0, 0, 1, 1, 0, 0]
