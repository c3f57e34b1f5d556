#!/usr/bin/env python
"""Catalogue scoring on the CPU: ``z @ E.T`` (MKL sgemm) against ``score_items`` (oneDNN).

    .venv/bin/python bench/micro/bench_score.py [--threads 1] [--items 12102] [--reps 20]

Times the product of B representations (d = 64) with the whole item table (Beauty's
12,102 rows) for B = 256 (a training batch) and 1024 (an evaluation batch), and the whole
soft-label cross-entropy (forward + backward) with each product; the two arms alternate
rep by rep. Also times tanh(s / tau) on a 512 x 512 contrast block: ``torch.tanh`` against
2 sigmoid(2 s / tau) - 1 (one vectorised exponential; the shaped denominators and the noise
ascent are written in that sigmoid). Also prints the CPU vendor: MKL's slow path is an AMD one. Writes
bench/micro/results/score.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402
from _timing import interleaved  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--items", type=int, default=12102)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "score.json"))
    args = ap.parse_args()
    import torch

    from fenrec_dist import scoring as sl
    from fenrec_dist.losses.soft_labels import soft_label_loss_from_reprs

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.items, args.dim, generator=g) * 0.1
    vendor = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("vendor_id")), "?") \
        if Path("/proc/cpuinfo").exists() else "?"
    res: dict = {"command": " ".join(sys.argv), "threads": args.threads, "cpu_vendor": vendor,
                 "onednn_available": sl._LINEAR is not None, "ms_median": {}}

    for b in (256, 1024):
        z = torch.randn(b, args.dim, generator=g)
        arms = {"mkl_matmul": lambda: z @ w.t(), "score_items": lambda: sl.score_items(z, w)}
        for f in arms.values():
            f()
        times = interleaved(arms, args.reps)
        res["ms_median"][f"product_B{b}"] = {k: round(statistics.median(v), 2) for k, v in times.items()}

    b = 256
    z = (torch.randn(b, args.dim, generator=g) * 3).requires_grad_(True)
    wt = w.clone().requires_grad_(True)
    fut = torch.randint(1, args.items, (b, 3), generator=g)
    flen = torch.randint(1, 4, (b,), generator=g)
    fast = sl._LINEAR

    def ce(use_onednn: bool) -> None:
        sl._LINEAR = fast if use_onednn else None
        try:
            soft_label_loss_from_reprs(z, wt, fut, flen, 0.2).backward()
        finally:
            sl._LINEAR = fast

    times = interleaved({"mkl_matmul": lambda: ce(False), "score_items": lambda: ce(True)}, args.reps)
    res["ms_median"]["soft_label_ce_fwd_bwd_B256"] = {k: round(statistics.median(v), 2) for k, v in times.items()}
    def tanh_scaled(s: torch.Tensor, tau: float) -> torch.Tensor:
        return torch.mul(s, 2.0 / tau).sigmoid_().mul_(2.0).sub_(1.0)

    sims = torch.randn(512, 512, generator=g) * 20  # a contrast block: 2B x 2B similarities
    arms = {"torch_tanh": lambda: torch.div(sims, 8.0).tanh_(), "tanh_scaled": lambda: tanh_scaled(sims, 8.0)}
    times = interleaved(arms, args.reps * 10)
    res["ms_median"]["tanh_512x512"] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
