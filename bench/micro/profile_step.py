#!/usr/bin/env python
"""torch.profiler table of post-warm-up FENRec training steps on Beauty (one process).

    .venv/bin/python bench/micro/profile_step.py [--steps 10] [--threads 1] [--shapes]

Same set-up as ``bench/micro/bench_step.py`` (configs/beauty.yaml, hard + noise negatives, intents
from a k-means of the initial model), 5 warm-up steps, then ``--steps`` steps under the
profiler. Prints the operators with the most self CPU time (per step), the share of matrix
products, and the number of ATen calls a step; ``--shapes`` groups the operators by input
shape as well. Writes bench/micro/results/profile_step.json.
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

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--shapes", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "profile_step.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import torch
    from torch.profiler import ProfilerActivity, profile

    from _arms import epoch0_batches, fit_intents, prepared_arm

    torch.set_num_threads(args.threads)
    arm = prepared_arm(args.data, args.config)
    fit_intents(arm)
    batches = epoch0_batches(arm)
    for i in range(5):
        arm.run(batches[i], seed=i)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        t0 = time.perf_counter()
        for i in range(5, 5 + args.steps):
            arm.run(batches[i], seed=i)
        wall = time.perf_counter() - t0
    events = prof.key_averages(group_by_input_shape=args.shapes)
    total_us = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
    table = [{"op": e.key, **({"shapes": str(e.input_shapes)} if args.shapes else {}),
              "calls_per_step": round(e.count / args.steps, 1),
              "self_ms_per_step": round(e.self_cpu_time_total / 1000 / args.steps, 2),
              "share": round(e.self_cpu_time_total / total_us, 3)} for e in rows]
    for r in table:
        print(f"{r['self_ms_per_step']:8.2f} ms {100 * r['share']:5.1f}%  x{r['calls_per_step']:<6} {r['op']}"
              + (f"  {r['shapes']}" if args.shapes else ""))
    matmul_us = sum(e.self_cpu_time_total for e in events if e.key in MATMUL)
    aten_calls = sum(e.count for e in events if e.key.startswith("aten::"))
    res = {"command": " ".join(sys.argv), "threads": args.threads, "steps": args.steps,
           "wall_ms_per_step": round(1000 * wall / args.steps, 1),
           "profiled_self_cpu_ms_per_step": round(total_us / 1000 / args.steps, 1),
           "matmul_share_of_self_cpu": round(matmul_us / total_us, 3),
           "aten_calls_per_step": round(aten_calls / args.steps), "top": table}
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
