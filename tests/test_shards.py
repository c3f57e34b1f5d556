"""What a rank reads: its target-partitioned shards and its users; the k-means sample."""

from __future__ import annotations

import numpy as np
import pytest

from fenrec_dist.data.dataset import load_prepared
from fenrec_dist.data.errors import DataError
from fenrec_dist.data.shards import assign_shards, load_rank_data
from fenrec_dist.train.trainer import kmeans_sample


def test_assign_shards_is_a_deterministic_balanced_partition():
    rows = [50, 10, 40, 30, 30, 0, 20]
    got = assign_shards(rows, 3)
    assert got == assign_shards(list(rows), 3)
    assert sorted(s for part in got for s in part) == list(range(len(rows)))
    loads = [sum(rows[s] for s in part) for part in got]
    assert loads == [60, 60, 60]  # largest first, each to the least-loaded rank (ties: the lower rank)
    assert got == [[0, 1, 5], [2, 6], [3, 4]]
    assert assign_shards(rows, 1) == [list(range(len(rows)))]


def test_one_rank_reads_exactly_the_prepared_table(tiny_data):
    whole = load_prepared(tiny_data)
    one = load_rank_data(tiny_data, 0, 1)
    for f in whole.train.__dataclass_fields__:
        assert np.array_equal(getattr(whole.train, f), getattr(one.train, f)), f
    for f in whole.eval.__dataclass_fields__:
        assert np.array_equal(getattr(whole.eval, f), getattr(one.eval, f)), f
    assert one.total_train == len(whole.train) and one.num_items == whole.num_items


def test_two_ranks_split_samples_by_target_and_users_by_position(tiny_data):
    whole = load_prepared(tiny_data)
    parts = [load_rank_data(tiny_data, r, 2) for r in range(2)]
    ids = [p.train.sample_id for p in parts]
    assert not set(ids[0]) & set(ids[1])
    assert np.array_equal(np.sort(np.concatenate(ids)), whole.train.sample_id)
    # every ICSRec partner is local: a target's samples all live on one rank
    t0, t1 = set(parts[0].train.target.tolist()), set(parts[1].train.target.tolist())
    assert not t0 & t1
    for p in parts:  # rows agree with the whole table's
        assert np.array_equal(whole.train.inputs[p.train.sample_id], p.train.inputs)
        assert (np.diff(p.train.sample_id) > 0).all()
    # users rank::2 in user order, as the evaluation always split them
    for r, p in enumerate(parts):
        assert np.array_equal(p.eval.user, whole.eval.user[r::2])
        assert np.array_equal(p.eval.history_values, whole.eval.subset(np.arange(r, len(whole.eval), 2)).history_values)
    # each rank reads only its shards: about half the training bytes, never all of them
    total = load_rank_data(tiny_data, 0, 1).bytes_read
    assert all(p.bytes_read < total for p in parts)
    assert parts[0].shards and set(parts[0].shards).isdisjoint(parts[1].shards)


def test_more_workers_than_shards_is_one_line_naming_the_manifest(tiny_data):
    with pytest.raises(DataError, match=r"manifest.json: 5 workers but only 4 non-empty training shards"):
        load_rank_data(tiny_data, 0, 5)


def test_kmeans_sample_is_the_same_whatever_the_number_of_ranks():
    ids = np.arange(10_000, dtype=np.int64)
    assert kmeans_sample(ids, 10_000, 0, 1, 3).all() and kmeans_sample(ids, 10_000, 20_000, 1, 3).all()
    whole = kmeans_sample(ids, 10_000, 1_000, seed=1, epoch=3)
    assert 850 < whole.sum() < 1150
    rng = np.random.default_rng(0)
    part = rng.permutation(ids)[:4000]  # a rank's ids, in any order
    assert np.array_equal(kmeans_sample(part, 10_000, 1_000, 1, 3), whole[part])
    assert not np.array_equal(kmeans_sample(ids, 10_000, 1_000, 1, 4), whole)  # it varies by epoch
