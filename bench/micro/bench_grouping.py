#!/usr/bin/env python
"""What grouping batches by input length buys, and what it changes: the same samples trained
in length-grouped batches (``train.length_grouping=true``) and in random batches (``false``).

    .venv/bin/python bench/micro/bench_grouping.py [--windows 1] [--threads 1] [--out bench/micro/results/grouping.json]

Timing: the first ``--windows`` windows of epoch 0's shuffled samples (64 batches x 256 each,
``train.length_bucket_batches``), each cut two ways: sorted by length into batches (the
grouped plan) and in their shuffled order (the random plan). Both plans then hold exactly the
same samples and tokens, so the ratio of their summed step times is the epoch's ratio for
those windows. Two copies of one initial SASRec (configs/beauty.yaml, hard + noise negatives
on) train on the two plans, steps interleaved and their order alternated, the grouped
batches in shuffled order. CPU time per step is the steadier figure when other jobs share
the cores (run with OMP_WAIT_POLICY=PASSIVE).

Composition, over the whole of epoch 0 for both plans (``epoch_batches``): batches whose
inputs all have one length, distinct lengths per batch, the share of in-batch anchor pairs of
equal length and their mean length gap (the coarse term's in-batch and hard negatives), the
share of same-target pairs (masked out of the negatives), and the padded positions a batch
would compute without token packing. Writes bench/micro/results/grouping.json.
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


def composition(batches: list, lengths, targets) -> dict:  # type: ignore[no-untyped-def]
    """Length and target make-up of an epoch's batches (numpy int arrays of sample ids)."""
    import numpy as np

    one_len = distinct = pairs = eq_pairs = gap_sum = same_t = padded = tokens = 0
    for b in batches:
        ln, tg = lengths[b], targets[b]
        u, c = np.unique(ln, return_counts=True)
        one_len += len(u) == 1
        distinct += len(u)
        n = len(b)
        pairs += n * (n - 1)
        eq_pairs += int((c * (c - 1)).sum())
        s = np.sort(ln).astype(np.float64)  # sum over ordered pairs of |l_i - l_j| from the sorted values
        gap_sum += 2.0 * float(((2 * np.arange(n) - n + 1) * s).sum())
        _, ct = np.unique(tg, return_counts=True)
        same_t += int((ct * (ct - 1)).sum())
        padded += n * int(ln.max())
        tokens += int(ln.sum())
    nb = len(batches)
    return {
        "batches": nb,
        "single_length_batches": round(one_len / nb, 3),
        "distinct_lengths_per_batch": round(distinct / nb, 2),
        "equal_length_pair_share": round(eq_pairs / pairs, 4),
        "mean_length_gap_of_pairs": round(gap_sum / pairs, 2),
        "same_target_pair_share": round(same_t / pairs, 5),
        "padded_positions_over_tokens": round(padded / tokens, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--windows", type=int, default=1, help="64-batch windows of epoch 0 to time")
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "grouping.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import numpy as np
    import torch
    from _arms import twin_arms

    from fenrec_dist.train.batches import epoch_batches, epoch_rng

    torch.set_num_threads(args.threads)
    grouped, random_ = twin_arms(args.data, args.config)
    cfg = grouped.cfg
    lengths, targets = grouped.data.train.input_len, grouped.data.train.target
    bs, wb = cfg.train.batch_size, cfg.train.length_bucket_batches
    comp = {
        "grouped": composition(epoch_batches(lengths, bs, epoch_rng(cfg.train.seed, 0), True, wb), lengths, targets),
        "random": composition(epoch_batches(lengths, bs, epoch_rng(cfg.train.seed, 0), False, wb), lengths, targets),
    }
    # the first windows of epoch 0's shuffled samples, cut into batches both ways by epoch_batches itself
    chunk = epoch_rng(cfg.train.seed, 0).permutation(len(lengths))[: args.windows * wb * bs]
    plan_g = [chunk[b] for b in epoch_batches(lengths[chunk], bs, np.random.default_rng(1), True, wb)]
    plan_r = [chunk[b] for b in epoch_batches(lengths[chunk], bs, np.random.default_rng(1), False, wb)]
    assert sorted(np.concatenate(plan_g).tolist()) == sorted(np.concatenate(plan_r).tolist())
    for i in range(args.warm):
        grouped.run(plan_g[i], seed=10_000 + i)
        random_.run(plan_r[i], seed=10_000 + i)
    wall = {"grouped": [], "random": []}
    cpu = {"grouped": [], "random": []}
    for i in range(len(plan_g)):
        arms = [("grouped", grouped, plan_g[i]), ("random", random_, plan_r[i])]
        if i % 2:
            arms.reverse()
        for name, arm, batch in arms:
            dt, dc, _ = arm.run(batch, seed=i)
            wall[name].append(dt)
            cpu[name].append(dc)
    res = {
        "command": " ".join(sys.argv), "threads": args.threads, "windows": args.windows, "steps_per_plan": len(plan_g),
        "samples_timed": int(sum(len(b) for b in plan_g)),
        "wall_s_sum": {k: round(sum(v), 2) for k, v in wall.items()},
        "cpu_s_sum": {k: round(sum(v), 2) for k, v in cpu.items()},
        "wall_ms_per_step_median": {k: round(1000 * statistics.median(v), 1) for k, v in wall.items()},
        "ratio_grouped_over_random_wall": round(sum(wall["grouped"]) / sum(wall["random"]), 3),
        "ratio_grouped_over_random_cpu": round(sum(cpu["grouped"]) / sum(cpu["random"]), 3),
        "epoch0_composition": comp,
    }
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
