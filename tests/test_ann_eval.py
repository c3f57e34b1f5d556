"""eval.ann: evaluation ranked with the item index, and its recall of the exact top-20."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from conftest import tiny_overrides
from fenrec_dist.config import NegativesConfig, load_config
from fenrec_dist.data.shards import load_rank_data
from fenrec_dist.metrics import candidate_ranks, first_kept, overlap_recall, rank_metrics, target_ranks
from fenrec_dist.negatives.item_index import ItemIndex
from fenrec_dist.train.local import train_local
from fenrec_dist.train.loop import embed, evaluate_sums, exclude_block
from fenrec_dist.train.report import read_metrics
from fenrec_dist.train.trainer import build_model

CUT = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


def test_exact_index_candidates_give_the_exact_ranks_up_to_the_cutoff():
    g = torch.Generator().manual_seed(0)
    n, d, b = 500, 8, 64
    emb, q = torch.randn(n + 1, d, generator=g), torch.randn(b, d, generator=g)
    targets = torch.randint(1, n + 1, (b,), generator=g)
    ex = torch.randint(0, n + 1, (b, 7), generator=g)
    ex[:5, 0] = targets[:5]  # a repeat: the target is never excluded
    _, cand = ItemIndex.build(emb.numpy(), NegativesConfig()).search(q.numpy(), 20 + ex.shape[1])
    exact = target_ranks(q, emb, targets, ex)
    ann = candidate_ranks(q, emb, torch.from_numpy(cand), targets, ex, miss_rank=n)
    found = ann != n  # a retrieved target has its exact rank, and every target in the exact top 20 is retrieved
    assert torch.equal(ann[found], exact[found]) and found[exact < 20].all()
    a, e = rank_metrics(ann), rank_metrics(exact)
    assert all(a[k] == e[k] for k in CUT) and (exact < 20).any() and (exact >= 20).any()
    top = first_kept(torch.from_numpy(cand), ex, 20)
    assert (top > 0).all() and not (top[:, :, None] == ex[:, None, :]).any()  # 20 kept, none excluded
    assert torch.equal(overlap_recall(top, top), torch.ones(b, dtype=torch.float64))


def test_ann_eval_with_the_exact_index_equals_exact_eval_in_the_trainer(tiny_data, tmp_path):
    """80 items: the item index is flat; metrics equal the exact run's and the recall is 1.0,
    in metrics.jsonl, final.json and the progress line."""
    kw = dict(train__epochs=2, distributed__num_workers=1)
    lines: list[str] = []
    ann = train_local(load_config(None, tiny_overrides(tiny_data, eval__ann=True, **kw)), tmp_path / "ann",
                      log=lines.append)
    exact = train_local(load_config(None, tiny_overrides(tiny_data, **kw)), tmp_path / "exact", log=lambda *_: None)
    for split in ("valid", "test"):
        assert ann[split]["ann_recall@20"] == 1.0 and "ann_recall@20" not in exact[split]
        assert {k: ann[split][k] for k in CUT} == {k: exact[split][k] for k in CUT}
    assert json.loads((tmp_path / "ann" / "final.json").read_text())["test"]["ann_recall@20"] == 1.0
    recs = read_metrics(tmp_path / "ann")
    assert [r["valid"]["ann_recall@20"] for r in recs] == [1.0, 1.0]
    assert all("eval_index" in r["time"] for r in recs)
    assert [{k: r["valid"][k] for k in CUT} for r in recs] == [{k: r["valid"][k] for k in CUT}
                                                                for r in read_metrics(tmp_path / "exact")]
    assert any("ann_recall@20=1.0000" in line for line in lines)


def test_ivf_recall_equals_the_brute_force_overlap(tiny_data):
    cfg = load_config(None, tiny_overrides(tiny_data))
    data = load_rank_data(str(tiny_data), 0, 1, max_len=10, horizon=2)
    model = build_model(cfg, data.num_items, data.max_len, torch.device("cpu"))
    w = model.item_weights().detach().numpy()
    neg = dataclasses.replace(cfg.negatives, item_index_exact_below=0, item_index_type="ivf", item_index_nlist=2,
                              item_index_nprobe=1)
    index = ItemIndex.build(w, neg, seed=3)
    assert index.kind == "ivf"
    table = data.eval
    rows = np.arange(len(table.user)) % 3 == 0
    sums = evaluate_sums(model, table, "valid", data.max_len, 64, 16, [5, 10, 20], torch.device("cpu"), index, rows)
    recall = sums["ann_recall_sum"] / sums["ann_recall_count"]
    # brute force: every item scored, the history removed, the top 20; the index's 20 first items outside it
    reprs = embed(model, table.inputs("valid", data.max_len), 64, torch.device("cpu"))
    ex_values, ex_offsets = table.exclude("valid")
    want = []
    for u in np.flatnonzero(rows):
        hist = set(exclude_block(ex_values, ex_offsets, u, u + 1)[0].tolist()) | {0}
        s = reprs[u] @ w.T
        exact = [i for i in np.argsort(-s, kind="stable") if i not in hist][:20]
        _, cand = index.search(reprs[u:u + 1], 20 + len(hist))
        approx = [i for i in cand[0] if i not in hist][:20]
        want.append(len(set(exact) & set(approx)) / len(exact))
    assert sums["ann_recall_count"] == rows.sum() and 0.0 <= recall <= 1.0
    assert abs(recall - float(np.mean(want))) < 1e-9
    assert recall < 1.0  # one list of two probed: the index misses some of the exact top-20
