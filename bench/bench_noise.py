#!/usr/bin/env python
"""The noise-negative ascent (``nudge_noise_contrast``) of this checkout against a git revision's.

    .venv/bin/python bench/bench_noise.py [--baseline ad01344] [--reps 60] [--threads 2]

Beauty's shapes after the warm-up: N = 2B = 512 anchors, R = rho B = 512 noise vectors, d = 64,
4 steps of size 1e-3, shaping tau 8, m 0.2; anchors and the fixed log-denominators at the scale
of a fresh model (|z| about 8). Both versions run on the same inputs, interleaved
(``bench/_timing.py``); reports ms per ascent, their ratio and the largest difference of the
nudged vectors. No data needed. Writes bench/results/noise.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _result import write_result  # noqa: E402  (bench/ is the script's own folder)
from _timing import interleaved  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="ad01344", help="git revision with the tanh-form ascent")
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "noise.json"))
    args = ap.parse_args()
    import importlib

    import torch

    from bench_step import extract_baseline
    from fenrec_dist.losses.noise_negatives import nudge_noise_contrast
    from fenrec_dist.losses.shaping import Shaping

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        extract_baseline(args.baseline, Path(tmp))
        sys.path.insert(0, tmp)
        base_mod = importlib.import_module("fenrec_dist_base.losses.noise_negatives")
        base_shaping = importlib.import_module("fenrec_dist_base.losses.shaping").Shaping(True, 8.0, 0.2)
        g = torch.Generator().manual_seed(0)
        z = torch.nn.functional.normalize(torch.randn(512, 64, generator=g), dim=1) * 8
        fixed = torch.randn(512, generator=g) * 4 + 40
        noise = torch.randn(512, 64, generator=g)
        shaping = Shaping(True, 8.0, 0.2)
        arms = {
            "baseline": lambda: base_mod.nudge_noise_contrast(noise, z, fixed, base_shaping, 1.0, 4, 1e-3),
            "new": lambda: nudge_noise_contrast(noise, z, fixed, shaping, 1.0, 4, 1e-3),
        }
        for f in arms.values():  # warm-up
            f()
        times = interleaved(arms, args.reps)
        diff = float((arms["new"]() - arms["baseline"]()).abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"command": " ".join(sys.argv), "baseline": args.baseline, "threads": args.threads, "reps": args.reps,
           "shapes": {"anchors": [512, 64], "noise": [512, 64], "steps": 4},
           "ms_per_ascent_median": {k: round(v, 2) for k, v in med.items()},
           "ratio_new_over_baseline": round(med["new"] / med["baseline"], 3),
           "ratio_of_sums": round(sum(times["new"]) / sum(times["baseline"]), 3),
           "max_abs_difference": float(f"{diff:.3g}")}
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
