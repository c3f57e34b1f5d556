#!/usr/bin/env python
"""Evaluation on a large catalogue: the exact chunked full ranking against ``eval.ann``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale/bench_ann_eval.py \
        [--items 1000000] [--users 2000] [--nprobe 8 32] [--recall-users 1000]

Builds the Beauty SASRec (configs/beauty.yaml, d = 64) over ``--items`` items with the item
vectors drawn around 1,000 cluster centres (as bench_recommend.py: an untrained N(0, 0.02)
table has no structure for an index to find), ``--users`` synthetic users (histories of
lengths 1..50, geometric with mean about 9, Zipf(1.1) items) whose validation target is planted
among their exact top 100 (uniformly; so that HR@20 and NDCG@20 are not all zero), and
evaluates the validation split one thread: exact (``metrics.target_ranks``, every item) and
with the item index (IVF above ``negatives.item_index_exact_below``) at each ``--nprobe``,
once without the recall (ranking only) and once with ``eval.ann_recall_users``' sample
(``trainer.user_sample``; the recall costs an exact top-20 of each sampled user). Reports the
seconds of each, the index build, the metrics and the recall of the exact top-20. Writes
``--out`` (bench/scale/results/ann_eval.json) with provenance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--recall-users", type=int, default=1_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "ann_eval.json"))
    args = ap.parse_args()

    import dataclasses

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from _result import write_result

    from fenrec_dist.config import load_config
    from fenrec_dist.data.dataset import EvalTable
    from fenrec_dist.metrics import finalize, topk_items
    from fenrec_dist.model import build_encoder
    from fenrec_dist.negatives.item_index import ItemIndex
    from fenrec_dist.train.loop import embed, evaluate_sums
    from fenrec_dist.train.trainer import user_sample

    n, cpu = args.items, torch.device("cpu")
    cfg = load_config(ROOT / "configs" / "beauty.yaml")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    enc = build_encoder(cfg.model, n, cfg.data.max_len)
    with torch.no_grad():
        centres = torch.from_numpy(rng.normal(size=(1000, cfg.model.hidden)).astype(np.float32))
        assign = torch.from_numpy(rng.integers(0, 1000, n + 1))
        enc.item_emb.weight.copy_(0.05 * (centres[assign] + 0.5 * torch.randn(n + 1, cfg.model.hidden)))
        enc.item_emb.weight[0] = 0
    enc.eval()
    pop = 1.0 / np.arange(1, n + 1) ** 1.1
    cdf = np.cumsum(pop / pop.sum())
    lengths = np.minimum(rng.geometric(1 / 9.0, size=args.users), cfg.data.max_len)
    values = (np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), n - 1) + 1).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    users = np.arange(args.users, dtype=np.int64)
    table = EvalTable(users, values, offsets, np.zeros(args.users, np.int32), np.zeros(args.users, np.int32))
    items = enc.item_weights().detach()
    reprs = torch.from_numpy(embed(enc, table.inputs("valid", cfg.data.max_len), cfg.eval.batch_size, cpu))
    width = int(lengths.max())
    ex = torch.from_numpy(np.stack([np.pad(values[offsets[u]:offsets[u + 1]], (0, width - lengths[u]))
                                    for u in range(args.users)]).astype(np.int64))
    t0 = time.perf_counter()
    _, top = topk_items(reprs, items, ex, 100, cfg.eval.item_chunk)  # planted targets: one of the exact top 100
    plant_s = time.perf_counter() - t0
    table.valid = top[torch.arange(args.users), torch.from_numpy(rng.integers(0, 100, args.users))].numpy().astype(np.int32)

    ks = list(cfg.eval.ks)

    def run(index: ItemIndex | None, rows: np.ndarray | None) -> dict:
        t0 = time.perf_counter()
        sums = evaluate_sums(enc, table, "valid", cfg.data.max_len, cfg.eval.batch_size, cfg.eval.item_chunk, ks,
                             cpu, index, rows)
        secs = time.perf_counter() - t0
        recall, count = sums.pop("ann_recall_sum", None), sums.pop("ann_recall_count", None)
        out = {"seconds": secs, "users_per_s": args.users / secs, "metrics": finalize(sums)}
        if count:
            out.update({"ann_recall@20": recall / count, "recall_users": int(count)})
        print(out, file=sys.stderr, flush=True)
        return out

    exact = run(None, None)
    neg = dataclasses.replace(cfg.negatives, item_index_nprobe=max(args.nprobe))
    index = ItemIndex.build(items.numpy(), neg, seed=cfg.train.seed + 1)
    sample = user_sample(users, args.users, args.recall_users, cfg.train.seed)
    ann = {}
    for nprobe in args.nprobe:
        if index.kind == "ivf":
            index.index.nprobe = min(nprobe, index.index.nlist)
        ann[f"nprobe{nprobe}"] = {"ranking_only": run(index, np.zeros(args.users, dtype=bool)),
                                  "with_recall": run(index, sample)}
    best = ann[f"nprobe{args.nprobe[0]}"]
    return write_result(args.out, {
        "benchmark": "ann_eval", "threads": 1, "items": n, "users": args.users, "split": "valid",
        "index": {"kind": index.kind, "nlist": getattr(index.index, "nlist", None), "build_seconds": index.build_seconds},
        "plant_seconds": plant_s, "exact": exact, "ann": ann,
        "ratios": {"exact_over_ann_ranking_only": exact["seconds"] / best["ranking_only"]["seconds"],
                   "exact_over_ann_with_recall": exact["seconds"] / best["with_recall"]["seconds"]},
        "note": "synthetic clustered item table and untrained encoder, validation targets planted in the exact top "
                "100: times are representative, recall and metrics are those of this table",
    })


if __name__ == "__main__":
    raise SystemExit(main())
