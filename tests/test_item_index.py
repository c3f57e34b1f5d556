"""The item index (negatives/item_index.py) against brute-force scoring."""

from __future__ import annotations

import dataclasses

import numpy as np

from fenrec_dist.config import NegativesConfig
from fenrec_dist.negatives.item_index import ItemIndex, choose_item_kind, ivf_lists


def _table(n=2000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n + 1, d)).astype(np.float32)
    w[0] = 100.0  # the padding row would win every query: it must never be returned
    q = rng.normal(size=(50, d)).astype(np.float32)
    return w, q


def brute(w, q, k):
    s = q @ w[1:].T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids + 1


def test_flat_search_equals_brute_force_and_skips_padding():
    w, q = _table()
    idx = ItemIndex.build(w, NegativesConfig())
    assert idx.kind == "flat" and idx.num_items == 2000 and idx.build_seconds >= 0
    scores, ids = idx.search(q, 10)
    want_s, want_ids = brute(w, q, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5)
    assert (ids > 0).all()


def test_ivf_probing_every_list_is_exact_and_hnsw_finds_the_top_items():
    w, q = _table()
    cfg = dataclasses.replace(NegativesConfig(), item_index_exact_below=0, item_index_nlist=16, item_index_nprobe=16)
    assert choose_item_kind(2000, cfg) == "ivf" and ivf_lists(2000, cfg) == 16
    ivf = ItemIndex.build(w, cfg, seed=1)
    assert ivf.kind == "ivf"
    np.testing.assert_array_equal(ivf.search(q, 10)[1], brute(w, q, 10)[1])
    few = ItemIndex.build(w, dataclasses.replace(cfg, item_index_nprobe=2), seed=1)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(few.search(q, 10)[1], brute(w, q, 10)[1])])
    assert 0.3 < recall <= 1.0  # approximate when fewer lists are probed
    hnsw = ItemIndex.build(w, dataclasses.replace(cfg, item_index_type="hnsw"))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw.search(q, 10)[1], brute(w, q, 10)[1])])
    assert hnsw.kind == "hnsw" and recall > 0.95


def test_mine_drops_the_excluded_items_keeps_rank_order_and_pads_with_zero():
    w, q = _table(n=30)
    idx = ItemIndex.build(w, NegativesConfig())
    _, top = idx.search(q, 30)
    exclude = np.stack([top[:, 0], top[:, 2], np.zeros(len(q), np.int64)], 1)
    mined = idx.mine(q, 5, exclude)
    np.testing.assert_array_equal(mined, top[:, [1, 3, 4, 5, 6]])
    # asking for more than the catalogue minus the excluded items leaves empty (0) slots
    many = idx.mine(q, 29, exclude)
    assert (many[:, :28] > 0).all() and (many[:, 28] == 0).all()
    assert not (many[:, :, None] == exclude[:, None, :2]).any()


def test_save_and_load_round_trip(tmp_path):
    w, q = _table(n=500)
    idx = ItemIndex.build(w, NegativesConfig())
    idx.save(tmp_path / "items.faiss")
    back = ItemIndex.load(tmp_path / "items.faiss", "flat")
    assert back.num_items == 500 and back.dim == 16
    np.testing.assert_array_equal(back.search(q, 7)[1], idx.search(q, 7)[1])
