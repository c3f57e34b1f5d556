#!/usr/bin/env python
"""How a Beauty training step's time grows with the batch's tokens (one process).

    .venv/bin/python bench/micro/bench_step_cost.py [--batches 200] [--threads 2]

Same set-up as ``bench/micro/bench_step.py`` (configs/beauty.yaml after the warm-up, intents of
the initial model), then one step on each of epoch 0's first ``--batches`` length-grouped
batches (``train.length_grouping=true``: each batch holds similar lengths and the epoch's order
is random across length groups, so they span its mix of lengths). Fits
step ms = a + b x (thousands of anchor tokens) by least squares and reports a, b, the
correlation, and the mean step of the shortest and longest halves. Writes
bench/micro/results/step_cost.json.
"""

from __future__ import annotations

import argparse
import sys
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
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "step_cost.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import numpy as np
    import torch

    from _arms import epoch0_batches, fit_intents, prepared_arm

    torch.set_num_threads(args.threads)
    arm = prepared_arm(args.data, args.config, ["train.length_grouping=true"])  # batches spanning the lengths
    fit_intents(arm)
    batches = epoch0_batches(arm)
    for i in range(3):
        arm.run(batches[-1 - i], seed=i)  # warm-up on batches not timed
    sel = batches[: args.batches]
    ms = []
    for i, b in enumerate(sel):
        t0 = time.perf_counter()
        arm.run(b, seed=i)
        ms.append(1000 * (time.perf_counter() - t0))
    ms_a = np.array(ms)
    tokens = np.array([arm.data.train.input_len[b].sum() for b in sel], dtype=float) / 1000
    slope, intercept = np.polyfit(tokens, ms_a, 1)
    order = np.argsort(tokens)
    half = len(order) // 2
    res = {"command": " ".join(sys.argv), "threads": args.threads, "batches": len(sel),
           "ms_per_step_mean": round(float(ms_a.mean()), 1),
           "fit_ms": {"intercept": round(float(intercept), 1), "per_1000_anchor_tokens": round(float(slope), 1)},
           "correlation_tokens_ms": round(float(np.corrcoef(tokens, ms_a)[0, 1]), 3),
           "anchor_tokens_per_batch": {"mean": round(float(1000 * tokens.mean())),
                                       "median": round(float(1000 * np.median(tokens))),
                                       "max": round(float(1000 * tokens.max()))},
           "ms_mean_shorter_half": round(float(ms_a[order[:half]].mean()), 1),
           "ms_mean_longer_half": round(float(ms_a[order[half:]].mean()), 1)}
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
