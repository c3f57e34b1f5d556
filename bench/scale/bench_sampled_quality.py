#!/usr/bin/env python
"""Does the sampled L_rec learn what the full one learns? Equal epochs on a synthetic log.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale/bench_sampled_quality.py \
        [--users 3000] [--items 3000] [--epochs 8] [--arms full sampled sampled_mined64 sampled_nologq]

A seeded ``fenrec synth`` log, prepared (max_len 50, horizon 2), then for each arm the Beauty
SASRec (configs/beauty.yaml) trained from the same initialisation on the same shuffles with
L_rec alone (lambda_coarse = beta_fine = 0: the arms differ only in the rec softmax) by a
plain loop (model, ``FENRecLoss``, ``optim.make_optimizer``; for mined arms the item index is
rebuilt at each epoch start and mined per step, excluding the sample's window), one thread.
After every epoch: validation NDCG@20 and HR@20 by exact full ranking (history excluded). Arms:

- full: the full soft-label softmax, dense fused Adam;
- sampled: in-batch + 1,024 random items by popularity, logQ, row-sparse Adam;
- sampled_mined64: the same plus 64 mined items per anchor;
- sampled_enduring: the same plus their enduring copies (lam 0.4, weight 0.1);
- sampled_nologq: sampled without the logQ correction.

This is a synthetic catalogue and a short schedule: it says whether an arm learns and how far
it is from full at equal epochs, not what Beauty's numbers will be. Writes ``--out``
(bench/scale/results/sampled_quality.json) with provenance.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result

ARMS = {
    "full": ["loss.rec_softmax=full"],
    "sampled": ["loss.rec_softmax=sampled"],
    "sampled_mined64": ["loss.rec_softmax=sampled", "loss.sampled_mined=64"],
    "sampled_enduring": ["loss.rec_softmax=sampled", "loss.sampled_mined=64", "loss.sampled_enduring_lam=0.4"],
    "sampled_nologq": ["loss.rec_softmax=sampled", "loss.sampled_logq=false"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--arms", nargs="+", default=["full", "sampled", "sampled_mined64", "sampled_nologq"],
                    choices=sorted(ARMS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "sampled_quality.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from _result import write_result

    from fenrec_dist.config import load_config
    from fenrec_dist.data.dataset import load_prepared
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.data.synth import SynthConfig, write_synth
    from fenrec_dist.losses.fenrec import FENRecLoss
    from fenrec_dist.metrics import finalize, rank_metrics, target_ranks
    from fenrec_dist.model import build_encoder
    from fenrec_dist.negatives.item_index import ItemIndex
    from fenrec_dist.optim import make_optimizer

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synth(SynthConfig(users=args.users, items=args.items, intents=20, mean_length=12, seed=0),
                    tmp / "log.csv", fmt="csv")
        prepare(tmp / "log.csv", tmp / "data", max_len=50, horizon=2, num_shards=1)
        data = load_prepared(tmp / "data")
        tr, ev = data.train, data.eval
        counts = torch.bincount(torch.from_numpy(tr.target.astype(np.int64)), minlength=data.num_items + 1).float()
        valid_in = torch.from_numpy(ev.inputs("valid", data.max_len).astype(np.int64))
        vals, offs = ev.sequences("valid")
        width = int(np.diff(offs).max())
        ex = np.zeros((len(ev), width), dtype=np.int64)
        for u in range(len(ev)):
            ex[u, : offs[u + 1] - offs[u]] = vals[offs[u]:offs[u + 1]]
        ex_t, valid_t = torch.from_numpy(ex), torch.from_numpy(ev.valid.astype(np.int64))

        def evaluate(enc) -> dict:
            enc.eval()
            with torch.no_grad():
                z = torch.cat([enc(valid_in[i:i + 1024]) for i in range(0, len(ev), 1024)])
                ranks = target_ranks(z, enc.item_weights().detach(), valid_t, ex_t)
            enc.train()
            m = finalize(rank_metrics(ranks, [20]))
            return {"NDCG@20": m["NDCG@20"], "HR@20": m["HR@20"]}

        for arm in args.arms:
            sets = ["loss.lambda_coarse=0", "loss.beta_fine=0", "loss.sampled_popularity=true", *ARMS[arm]]
            cfg = load_config(ROOT / "configs" / "beauty.yaml", sets)
            torch.manual_seed(0)
            enc = build_encoder(cfg.model, data.num_items, data.max_len)
            opt = make_optimizer(enc, cfg)
            loss_fn = FENRecLoss(cfg.loss, cfg.negatives, item_counts=counts)
            gen = torch.Generator().manual_seed(0)
            rng = np.random.default_rng(0)
            k = cfg.loss.sampled_mined if cfg.loss.rec_softmax == "sampled" else 0
            curve, t_train, t_index = [], 0.0, 0.0
            for epoch in range(args.epochs):
                index = None
                if k:
                    index = ItemIndex.build(enc.item_weights().detach().float().numpy(), cfg.negatives, seed=epoch)
                    t_index += index.build_seconds
                order = rng.permutation(len(tr))
                t0 = time.process_time()
                for i in range(0, len(order), cfg.train.batch_size):
                    b = order[i:i + cfg.train.batch_size]
                    ids = torch.from_numpy(tr.inputs[b].astype(np.int64))
                    fut = torch.from_numpy(tr.future[b].astype(np.int64))
                    flen = torch.from_numpy(tr.future_len[b].astype(np.int64))
                    z = enc(ids)
                    mined = None
                    if index is not None:
                        mined = torch.from_numpy(index.mine(z.detach().numpy(), k, tr.future[b].astype(np.int64)))
                    parts = loss_fn(z, z, enc.item_weights(), fut[:, 0], fut, flen, epoch, None, gen,
                                    mined_items=mined)
                    parts.objective.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                t_train += time.process_time() - t0
                curve.append({"epoch": epoch, **evaluate(enc)})
                print(arm, curve[-1], file=sys.stderr, flush=True)
            best = max(curve, key=lambda r: r["NDCG@20"])
            results[arm] = {"overrides": sets, "curve": curve, "best": best, "train_cpu_s": t_train,
                            "index_build_s": t_index}
    full = results.get("full")
    rel = {a: r["best"]["NDCG@20"] / full["best"]["NDCG@20"] for a, r in results.items()} if full else {}
    return write_result(args.out, {
        "benchmark": "sampled_quality", "threads": 1, "users": args.users, "items": args.items,
        "samples": int(len(tr)), "epochs": args.epochs, "arms": results, "best_ndcg20_over_full": rel,
        "note": "synthetic log, L_rec only, short schedule: whether the sampled arms learn and how far from full",
    })


if __name__ == "__main__":
    raise SystemExit(main())
