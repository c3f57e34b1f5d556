#!/usr/bin/env python
"""``fenrec recommend`` throughput on a large catalogue: exact ranking against the item index.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale/bench_recommend.py \
        [--items 1000000] [--users 100000] [--exact-users 2000] [--k 20]

Builds the Beauty SASRec (configs/beauty.yaml, d = 64) over ``--items`` items, exports it with
``serve.export.export_run`` (the item index as configured: IVF above
``negatives.item_index_exact_below``), writes ``--users`` synthetic histories (lengths 1..50,
geometric with mean about 9; Zipf(1.1) items) to Parquet and times ``recommend_file``, one
thread: with ``--ann`` over all users, exact over the first ``--exact-users`` (exact ranking
scores every item for every user: at 1M items that is the slow path this compares against).
Reports users/s of each and the ANN's recall of the exact top-k on those users. The weights
are the seeded initialisation with item vectors drawn around 1,000 cluster centres (an
untrained N(0, 0.02) table has no structure for an index to find), so the recall is that of
this synthetic table, not of a trained one. Writes ``--out``
(bench/scale/results/recommend.json) with provenance.
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
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--exact-users", type=int, default=2_000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "recommend.json"))
    args = ap.parse_args()

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(1)
    from _result import write_result

    from fenrec_dist.config import load_config
    from fenrec_dist.data.prepare import FORMAT_VERSION, MANIFEST
    from fenrec_dist.model import build_encoder
    from fenrec_dist.serve.export import export_run
    from fenrec_dist.serve.recommend import Recommender, recommend_file

    n = args.items
    cfg = load_config(ROOT / "configs" / "beauty.yaml")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    enc = build_encoder(cfg.model, n, cfg.data.max_len)
    with torch.no_grad():
        centres = torch.from_numpy(rng.normal(size=(1000, cfg.model.hidden)).astype(np.float32))
        assign = torch.from_numpy(rng.integers(0, 1000, n + 1))
        enc.item_emb.weight.copy_(0.05 * (centres[assign] + 0.5 * torch.randn(n + 1, cfg.model.hidden)))
        enc.item_emb.weight[0] = 0
    pop = 1.0 / np.arange(1, n + 1) ** 1.1
    cdf = np.cumsum(pop / pop.sum())
    lengths = np.minimum(rng.geometric(1 / 9.0, size=args.users), cfg.data.max_len)
    flat = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), n - 1) + 1
    offs = np.concatenate([[0], np.cumsum(lengths)])
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "scale") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"  # only what export reads of a prepared dataset: its manifest
        data.mkdir()
        (data / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION, "items": n, "users": args.users,
                                                 "train_samples": 0, "shards": [], "eval": {},
                                                 "max_len": cfg.data.max_len, "horizon": 2}))
        t0 = time.perf_counter()
        manifest = export_run(enc.state_dict(), cfg, data, tmp / "export")
        export_s = time.perf_counter() - t0
        hist = pa.ListArray.from_arrays(pa.array(offs, pa.int32()), pa.array(flat, pa.int64()))
        pq.write_table(pa.table({"user": np.arange(args.users), "history": hist}), tmp / "all.parquet")
        pq.write_table(pa.table({"user": np.arange(args.exact_users), "history": hist[: args.exact_users]}),
                       tmp / "few.parquet")
        t0 = time.perf_counter()
        rec = Recommender(tmp / "export")
        load_s = time.perf_counter() - t0
        runs = {}
        for name, inp, ann in (("ann_all", "all", True), ("ann_few", "few", True), ("exact_few", "few", False)):
            t0 = time.perf_counter()
            counts = recommend_file(rec, tmp / f"{inp}.parquet", tmp / f"{name}.parquet", args.k, ann=ann,
                                    progress=False)
            secs = time.perf_counter() - t0
            runs[name] = {"users": counts.rows, "seconds": secs, "users_per_s": counts.rows / secs}
            print(name, json.dumps(runs[name]), file=sys.stderr, flush=True)
        exact = pq.read_table(tmp / "exact_few.parquet").column("items").to_pylist()
        approx = pq.read_table(tmp / "ann_few.parquet").column("items").to_pylist()
    recall = float(np.mean([len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(approx, exact)]))
    return write_result(args.out, {
        "benchmark": "recommend", "threads": 1, "items": n, "users": args.users, "exact_users": args.exact_users,
        "k": args.k, "index": manifest["index"], "export_seconds": export_s, "load_seconds": load_s, "runs": runs,
        "ann_recall_at_k_of_exact": recall,
        "note": "synthetic clustered item table and untrained encoder: throughput is representative, recall is "
                "that of this table",
    })


if __name__ == "__main__":
    raise SystemExit(main())
