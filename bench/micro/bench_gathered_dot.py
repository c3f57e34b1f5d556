#!/usr/bin/env python
"""The mined items' logits of the sampled L_rec: ``gathered_dot`` against autograd's gather and product.

    OMP_NUM_THREADS=1 .venv/bin/python bench/micro/bench_gathered_dot.py [--reps 30] [--unique 60000]

Forward and backward of logits[b, k] = rows[idx[b, k]] . z[b] at the shapes of a sampled step
with 256 mined items (B = K = 256, d = 64, ``--unique`` distinct rows: about B x K at a 1M-item
catalogue, where mined items rarely repeat), one thread. The two arms alternate round by round;
each call is timed in CPU time of this thread (``time.thread_time``), so other processes on a
shared host do not enter the ratio. Writes bench/micro/results/gathered_dot.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result

from _result import write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mined", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--unique", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench/micro/results/gathered_dot.json"))
    args = ap.parse_args()

    import torch

    from fenrec_dist.losses.sampled_softmax import gathered_dot

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(args.unique, args.dim, generator=g).requires_grad_()
    z = torch.randn(args.batch, args.dim, generator=g).requires_grad_()
    idx = torch.randint(0, args.unique, (args.batch, args.mined), generator=g)
    up = torch.randn(args.batch, args.mined, generator=g)

    arms = {
        "autograd": lambda: (rows[idx] * z[:, None, :]).sum(-1),
        "gathered_dot": lambda: gathered_dot(rows, idx, z),
    }
    grads = {}
    for name, fn in arms.items():
        rows.grad = z.grad = None
        fn().backward(up)
        grads[name] = (rows.grad.clone(), z.grad.clone())
    max_diff = max(float((a - b).abs().max()) for a, b in zip(grads["autograd"], grads["gathered_dot"]))

    ms: dict[str, list[float]] = {k: [] for k in arms}
    names = list(arms)
    for r in range(args.reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            rows.grad = z.grad = None
            t0 = time.thread_time()
            arms[name]().backward(up)
            ms[name].append(1000 * (time.thread_time() - t0))
    med = {k: statistics.median(v) for k, v in ms.items()}
    result = {
        "benchmark": "gathered_dot",
        "shape": {"batch": args.batch, "mined": args.mined, "dim": args.dim, "unique_rows": args.unique},
        "threads": args.threads,
        "reps": args.reps,
        "cpu_ms_median": med,
        "cpu_ms": ms,
        "ratio_gathered_dot_over_autograd": med["gathered_dot"] / med["autograd"],
        "max_grad_difference": max_diff,
    }
    print(f"forward+backward CPU ms (median of {args.reps}): autograd {med['autograd']:.1f}, "
          f"gathered_dot {med['gathered_dot']:.1f} (ratio {result['ratio_gathered_dot_over_autograd']:.2f}); "
          f"max gradient difference {max_diff:.2e}")
    return write_result(args.out, result, echo=False)


if __name__ == "__main__":
    raise SystemExit(main())
