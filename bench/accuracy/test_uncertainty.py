#!/usr/bin/env python
"""How far the test metrics of a run's best checkpoint are from a target, in standard errors.

    .venv/bin/python bench/accuracy/test_uncertainty.py runs/beauty-ref [--compare runs/beauty-nosoft-from30]
        [--out bench/accuracy/results/beauty_test_uncertainty.json]

Re-scores RUN_DIR's best checkpoint on the test split (full ranking, history excluded:
``train.loop.split_ranks``, the ranks ``fenrec evaluate`` sums) and keeps each user's HR@k,
NDCG@k and MRR. Reports every metric's mean over the users, its standard error
(sample std / sqrt(users)) and, for HR@5/20 and NDCG@5/20, the distance to ICSRec's
published Beauty numbers in standard errors. This is the test set's sampling noise only;
the variation between training seeds comes on top and is not measured here.
``--compare`` scores a second run's best checkpoint on the same users and reports the paired
difference per metric with its standard error (the noise the two runs share cancels).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402

ICSREC_BEAUTY = {"HR@5": 0.0698, "HR@20": 0.1298, "NDCG@5": 0.0494, "NDCG@20": 0.0663}


def per_user(run_dir: Path):  # type: ignore[no-untyped-def]
    """{metric: float64 [U]} of the best checkpoint's test ranks, and the metric names in order.
    The best weights of the run's newest complete checkpoint (either runtime's layout)."""
    import torch

    from fenrec_dist.data.shards import load_rank_data
    from fenrec_dist.train import layout
    from fenrec_dist.train.local import load_run_config
    from fenrec_dist.train.loop import split_ranks
    from fenrec_dist.train.trainer import build_model, resolve_device

    cfg = load_run_config(run_dir)
    device = resolve_device(cfg.train.device)
    data = load_rank_data(cfg.data.path, 0, 1, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    model = build_model(cfg, data.num_items, data.max_len, device)
    model.load_state_dict(layout.best_weights(run_dir, map_location=device)[0])
    r = split_ranks(model, data.eval, "test", data.max_len, cfg.eval.batch_size, cfg.eval.item_chunk,
                    device).double()
    out = {}
    for k in sorted(cfg.eval.ks):
        out[f"HR@{k}"] = (r < k).double()
    for k in sorted(cfg.eval.ks):
        out[f"NDCG@{k}"] = torch.where(r < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))
    out["MRR"] = 1.0 / (r + 1.0)
    return out


def mean_se(x) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    return float(x.mean()), float(x.std(unbiased=True)) / math.sqrt(x.numel())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--compare", metavar="RUN_DIR2", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "accuracy" / "results" / "test_uncertainty.json"))
    args = ap.parse_args()
    run = Path(args.run_dir)
    mine = per_user(run)
    users = int(next(iter(mine.values())).numel())
    res: dict = {"command": " ".join(sys.argv), "run": str(run), "test_users": users, "metrics": {}}
    for name, x in mine.items():
        m, se = mean_se(x)
        row = {"mean": round(m, 5), "standard_error": round(se, 5)}
        if name in ICSREC_BEAUTY:
            row["icsrec_beauty"] = ICSREC_BEAUTY[name]
            row["gap_in_standard_errors"] = round((m - ICSREC_BEAUTY[name]) / se, 2)
        res["metrics"][name] = row
    if args.compare:
        other = per_user(Path(args.compare))
        res["compare"] = {"run": args.compare, "paired_difference_run_minus_compare": {}}
        for name, x in mine.items():
            m, se = mean_se(x - other[name])
            res["compare"]["paired_difference_run_minus_compare"][name] = {
                "mean": round(m, 5), "standard_error": round(se, 5), "z": round(m / se, 2) if se > 0 else None}
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
