#!/usr/bin/env python
"""The FAISS negative index on Beauty: refresh cost, recall of the approximate kinds,
false-negative rate of raw neighbours and hardness of mined vs random negatives.

    .venv/bin/python bench/micro/bench_index.py [--data ../shared/data/Beauty.txt] [--checkpoint RUN_DIR]
                                          [--threads 2] [--kinds flat,ivf,hnsw]

Prepares Beauty in a temp dir, embeds every training sample with the given checkpoint
(a trained SASRec: a run directory of ``fenrec train``, whose newest complete checkpoint's
best weights are used (``train.layout.best_weights``), or a ``best.pt`` file; a fresh model
when none is given), then
for each index kind builds the index and mines every sample's negatives exactly as an
epoch refresh does (``IndexRefresher.refresh``: build + search + filter + summary + save).
Recall@k of ivf/hnsw is measured against the exact flat index's raw neighbours. Writes
bench/micro/results/index.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--checkpoint", default=None,
                    help="a trained run directory (the best weights of its newest complete checkpoint), "
                         "or a best.pt file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", default="flat,ivf,hnsw")
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "index.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import faiss
    import numpy as np
    import torch

    from fenrec_dist.config import load_config
    from fenrec_dist.data.dataset import load_prepared
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.negatives.intents import IntentClusters
    from fenrec_dist.negatives.index import TrainingFacts, build_index, search
    from fenrec_dist.negatives.refresh import IndexRefresher
    from fenrec_dist.negatives.store import NegativesStore
    from fenrec_dist.train.checkpoint import load_state
    from fenrec_dist.train.loop import embed
    from fenrec_dist.train.trainer import build_model
    from fenrec_dist.train import layout

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    out: dict = {"command": " ".join(["bench/micro/bench_index.py"] + sys.argv[1:]), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args.data, Path(tmp) / "data")
        cfg = load_config(args.config, [f"data.path={tmp}/data", "train.device=cpu"])
        data = load_prepared(cfg.data.path, max_len=cfg.data.max_len)
        model = build_model(cfg, data.num_items, data.max_len, torch.device("cpu"))
        if args.checkpoint and Path(args.checkpoint).is_dir():  # a run: its newest complete checkpoint's best
            model.load_state_dict(layout.best_weights(Path(args.checkpoint))[0])
        elif args.checkpoint:  # a weights file holding {"model": state}, e.g. a checkpoint's best.pt
            model.load_state_dict(load_state(Path(args.checkpoint))["model"])
        out["checkpoint"] = args.checkpoint or "fresh model"
        t0 = time.perf_counter()
        reprs = embed(model, data.train.inputs, cfg.intents.batch_size, torch.device("cpu"))
        out["embed_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        intents = IntentClusters.fit(reprs, cfg.intents.k, cfg.intents.niter, seed=0)
        out["kmeans_s"] = round(time.perf_counter() - t0, 2)
        facts = TrainingFacts.from_table(data.train)
        out["rows"] = len(reprs)
        exact_ids = None
        out["kinds"] = {}
        for kind in args.kinds.split(","):
            cfg.negatives.index_type = kind if kind != "flat" else "ivf"
            cfg.negatives.index_exact_below = 10**12 if kind == "flat" else 0
            run = Path(tmp) / f"run-{kind}"
            ref = IndexRefresher(cfg, facts, NegativesStore(str(run)))
            t0 = time.perf_counter()
            ei = ref.refresh(0, reprs, torch.device("cpu"), intents)
            total = time.perf_counter() - t0
            s = ref.summary
            # recall of the raw neighbours vs exact search, on 4096 random queries
            rng = np.random.default_rng(0)
            q = rng.choice(len(reprs), 4096, replace=False)
            _, ids = search(ei.index, reprs[q], cfg.negatives.index_candidates)
            if exact_ids is None:
                flat, _ = build_index(reprs, cfg.negatives.__class__(index_exact_below=10**12))
                _, exact_ids = search(flat, reprs[q], cfg.negatives.index_candidates)
            recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact_ids)]))
            out["kinds"][kind] = {
                "refresh_s": round(total, 2), "build_s": round(ei.seconds["build"], 2),
                "mine_s": round(ei.seconds["mine"], 2), "save_s": round(ei.seconds.get("save", 0.0), 2),
                "recall_at_candidates": round(recall, 4),
                "raw_fn_rate": round(s["raw_fn_rate"], 4), "removed_by": {k: round(v, 4) for k, v in s["removed_by"].items()},
                "kept_per_anchor": round(s["kept_per_anchor"], 3),
                "mined_cos": round(s["mined_cos"], 4), "random_cos": round(s["random_cos"], 4),
                "saved_mib": round(sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) / 2**20, 1),
            }
            print(kind, json.dumps(out["kinds"][kind]), flush=True)
    print("INDEX " + json.dumps(out))
    return write_result(args.out, out, echo=False)


if __name__ == "__main__":
    sys.exit(main())
