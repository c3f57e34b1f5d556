#!/usr/bin/env python
"""How familiar the validation and test targets are to training (why test scores trail validation).

    .venv/bin/python bench/accuracy/split_stats.py [--data data/beauty]

For each user's validation and test item: how often it is a training target (the
popularity the model learns from). Leave-one-out puts the test item last in time, so it
tends to be a rarer item; a model selected on validation then scores lower on test.
Writes bench/accuracy/results/split_stats.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT / "data" / "beauty"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "accuracy" / "results" / "split_stats.json"))
    args = ap.parse_args()
    if not (Path(args.data) / "manifest.json").exists():
        print(f"skip: no prepared data at {args.data} (fenrec prepare ../shared/data/Beauty.txt --out data/beauty)")
        return 0
    import numpy as np

    from fenrec_dist.data.dataset import load_prepared

    d = load_prepared(args.data, max_len=50)
    counts = np.bincount(d.train.target, minlength=d.num_items + 1)
    res: dict = {"command": " ".join(sys.argv), "data": args.data, "users": int(len(d.eval.user))}
    for name, items in (("valid", d.eval.valid), ("test", d.eval.test)):
        c = counts[items]
        res[name] = {"never_a_training_target": round(float(np.mean(c == 0)), 4),
                     "median_training_count": float(np.median(c)),
                     "mean_log1p_training_count": round(float(np.mean(np.log1p(c))), 3),
                     "share_in_top_1000_items": round(float(np.mean(np.isin(items, np.argsort(-counts)[:1000]))), 4)}
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
