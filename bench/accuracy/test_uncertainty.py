#!/usr/bin/env python
"""How far the test metrics of a run's best checkpoint are from a target, in standard errors.

    .venv/bin/python bench/accuracy/test_uncertainty.py runs/beauty-ref [--compare runs/beauty-nosoft-from30]
        [--save-ranks bench/accuracy/results/beauty_ref_test_ranks.npz]
        [--out bench/accuracy/results/beauty_test_uncertainty.json]

Re-scores RUN_DIR's best checkpoint on the test split (full ranking, history excluded:
``train.loop.split_ranks``, the ranks ``fenrec evaluate`` sums) and keeps each user's HR@k,
NDCG@k and MRR. Reports every metric's mean over the users, its standard error
(sample std / sqrt(users)) and, for HR@5/20 and NDCG@5/20, the distance to ICSRec's
published Beauty numbers in standard errors. This is the test set's sampling noise only;
the variation between training seeds comes on top and is not measured here.
``--compare`` scores a second run's best checkpoint on the same users and reports the paired
difference per metric with its standard error (the noise the two runs share cancels).
Either run may be given as the ``.npz`` of per-user test ranks that ``--save-ranks`` kept
(a few hundred KiB for Beauty), so a run whose checkpoints are gone still pairs with new ones.
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


def test_ranks(source: Path):  # type: ignore[no-untyped-def]
    """(users long [U], ranks long [U], ks) of a run's best checkpoint on the test split (the
    best weights of its newest complete checkpoint, either runtime's layout), or of a file that
    ``--save-ranks`` wrote (``.npz``: users, ranks, ks), which needs no checkpoint."""
    import numpy as np
    import torch

    if source.suffix == ".npz":
        with np.load(source) as z:
            return torch.from_numpy(z["users"]), torch.from_numpy(z["ranks"]), tuple(int(k) for k in z["ks"])

    from fenrec_dist.data.shards import load_rank_data
    from fenrec_dist.train import layout
    from fenrec_dist.train.local import load_run_config
    from fenrec_dist.train.loop import split_ranks
    from fenrec_dist.train.trainer import build_model, resolve_device

    cfg = load_run_config(source)
    device = resolve_device(cfg.train.device)
    data = load_rank_data(cfg.data.path, 0, 1, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    model = build_model(cfg, data.num_items, data.max_len, device)
    model.load_state_dict(layout.best_weights(source, map_location=device)[0])
    r = split_ranks(model, data.eval, "test", data.max_len, cfg.eval.batch_size, cfg.eval.item_chunk, device)
    return torch.as_tensor(np.asarray(data.eval.user)).long(), r.long(), tuple(sorted(cfg.eval.ks))


def per_user(ranks, ks):  # type: ignore[no-untyped-def]
    """{metric: float64 [U]} of 0-based full-ranking ranks [U]: HR@k, NDCG@k, MRR."""
    import torch

    r = ranks.double()
    out = {}
    for k in ks:
        out[f"HR@{k}"] = (r < k).double()
    for k in ks:
        out[f"NDCG@{k}"] = torch.where(r < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))
    out["MRR"] = 1.0 / (r + 1.0)
    return out


def save_ranks(path: Path, users, ranks, ks) -> None:  # type: ignore[no-untyped-def]
    """The test ranks as a small ``.npz`` (with its provenance sidecar), written atomically."""
    import os

    import numpy as np

    from _result import write_sidecar

    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, users=users.numpy().astype(np.int32), ranks=ranks.numpy().astype(np.int32),
                        ks=np.asarray(ks, dtype=np.int32))
    os.replace(tmp, path)
    write_sidecar(path)


def mean_se(x) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    return float(x.mean()), float(x.std(unbiased=True)) / math.sqrt(x.numel())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", help="a run directory, or the .npz of its test ranks (--save-ranks)")
    ap.add_argument("--compare", metavar="RUN_DIR2", default=None, help="a run directory or a ranks .npz")
    ap.add_argument("--save-ranks", metavar="NPZ", default=None,
                    help="also keep RUN_DIR's per-user test ranks here (pairs later comparisons without checkpoints)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "accuracy" / "results" / "test_uncertainty.json"))
    args = ap.parse_args()
    run = Path(args.run_dir)
    users, ranks, ks = test_ranks(run)
    if args.save_ranks:
        save_ranks(Path(args.save_ranks), users, ranks, ks)
    mine = per_user(ranks, ks)
    res: dict = {"command": " ".join(sys.argv), "run": str(run), "test_users": int(users.numel()), "metrics": {}}
    for name, x in mine.items():
        m, se = mean_se(x)
        row = {"mean": round(m, 5), "standard_error": round(se, 5)}
        if name in ICSREC_BEAUTY:
            row["icsrec_beauty"] = ICSREC_BEAUTY[name]
            row["gap_in_standard_errors"] = round((m - ICSREC_BEAUTY[name]) / se, 2)
        res["metrics"][name] = row
    if args.compare:
        o_users, o_ranks, o_ks = test_ranks(Path(args.compare))
        if not (o_users.numel() == users.numel() and bool((o_users == users).all())) or o_ks != ks:
            raise SystemExit(f"{args.compare}: not the same test users (or ks) as {run}; a paired difference needs both")
        other = per_user(o_ranks, ks)
        res["compare"] = {"run": args.compare, "paired_difference_run_minus_compare": {}}
        for name, x in mine.items():
            m, se = mean_se(x - other[name])
            res["compare"]["paired_difference_run_minus_compare"][name] = {
                "mean": round(m, 5), "standard_error": round(se, 5), "z": round(m / se, 2) if se > 0 else None}
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
