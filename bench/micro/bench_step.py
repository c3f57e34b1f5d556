#!/usr/bin/env python
"""A/B of one post-warm-up FENRec training step: a baseline commit against the working tree.

    .venv/bin/python bench/micro/bench_step.py [--baseline REV] [--steps 40] [--threads 2]

The baseline's ``fenrec_dist`` is extracted with ``git archive`` into a temporary package
``fenrec_dist_base``; both packages train their own copy of the same initial SASRec on the
same Beauty batches (hard + noise negatives on, epoch 0 with ``warmup_epochs=0``), one
``train_epoch`` call per batch, the two arms interleaved and their order alternated, with
the same dropout seed per step. Timings on a shared machine are noisy, so the paired
per-step ratio (new / baseline) is the number to read; the process CPU-time ratio is the
steadier one when other jobs share the cores (run with OMP_WAIT_POLICY=PASSIVE). The losses of the two arms are
compared step by step too: equal math keeps them equal to float tolerance. Writes
bench/micro/results/step.json.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _arms import Arm, epoch0_batches, fit_intents  # noqa: E402
from _baseline import revision_package  # noqa: E402
from _result import write_result  # noqa: E402

BASELINE = "e5ddba1"  # the last commit before the step speed-ups


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "step.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import numpy as np
    import torch

    from fenrec_dist.data.prepare import prepare

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        revision_package(args.baseline, Path(tmp))
        sys.path.insert(0, tmp)
        prepare(args.data, Path(tmp) / "data")
        # the baseline reads only its own prepared format (format 2 since c5ba52a): its own prepare
        importlib.import_module("fenrec_dist_base.data.prepare").prepare(args.data, Path(tmp) / "data_base")
        new = Arm("fenrec_dist", args.config, args.overrides, str(Path(tmp) / "data"), None, None)
        centroids = fit_intents(new)
        base = Arm("fenrec_dist_base", args.config, args.overrides, str(Path(tmp) / "data_base"),
                   new.model.state_dict(), centroids)
        if not (np.array_equal(new.data.train.inputs, base.data.train.inputs)
                and np.array_equal(new.data.train.target, base.data.train.target)):
            raise SystemExit(f"{args.baseline}'s prepared training samples differ from this checkout's: "
                             "the arms' batches would not be the same samples")
        batches = epoch0_batches(new)
        times: dict[str, list[float]] = {"baseline": [], "new": []}
        cpu: dict[str, list[float]] = {"baseline": [], "new": []}
        loss_diff = 0.0
        for i in range(args.warm + args.steps):
            b = batches[i % len(batches)]
            arms = [("baseline", base), ("new", new)]
            if i % 2:
                arms.reverse()
            out = {}
            for name, arm in arms:
                dt, dc, losses = arm.run(b, seed=i)
                out[name] = losses
                if i >= args.warm:
                    times[name].append(dt)
                    cpu[name].append(dc)
            loss_diff = max(loss_diff, max(abs(out["new"][k] - out["baseline"][k]) / max(1.0, abs(out["baseline"][k]))
                                           for k in out["new"]))
    ratios = [n / b for n, b in zip(times["new"], times["baseline"])]
    res = {
        "command": " ".join(sys.argv), "baseline": args.baseline, "threads": args.threads, "steps": args.steps,
        "ms_per_step_median": {k: round(1000 * statistics.median(v), 1) for k, v in times.items()},
        "ms_per_step_min": {k: round(1000 * min(v), 1) for k, v in times.items()},
        "ratio_new_over_baseline_median_of_pairs": round(statistics.median(ratios), 3),
        "ratio_new_over_baseline_of_sums": round(sum(times["new"]) / sum(times["baseline"]), 3),
        "cpu_ms_per_step_median": {k: round(1000 * statistics.median(v), 1) for k, v in cpu.items()},
        "cpu_ratio_new_over_baseline_of_sums": round(sum(cpu["new"]) / sum(cpu["baseline"]), 3),
        "max_relative_loss_difference": float(f"{loss_diff:.3g}"),
        "mean_input_len": float(np.mean([new.data.train.input_len[batches[i % len(batches)]].max()
                                          for i in range(args.warm, args.warm + args.steps)])),
    }
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
