#!/usr/bin/env python
"""Heap-trimming policies during FENRec training on Beauty: step time, page faults, resident size.

    .venv/bin/python bench/micro/bench_trim.py [--steps 300] [--rounds 2] [--threads 2]
        [--policy none --policy every=25 --policy growth=256 ...]

Each policy runs in a fresh process (the heap's state is the thing measured, so arms cannot
share one): configs/beauty.yaml after the warm-up (hard + noise negatives, intents of the
initial model), ``train.loop.train_epoch`` over the first ``--steps`` batches of epoch 0 with
``train.memory.HeapTrimmer(every, growth_mib)``, the same seed and batches for every policy.
The policies run in turn, round after round, the order reversed every other round, so drift
falls on all of them. Reports per policy the median over rounds of ms per step, minor page
faults per step, the peak resident size during the steps (sampled after every step) and the
number of trims, and each policy's step time over the first policy's. Writes
bench/micro/results/trim.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402


def parse_policy(text: str) -> tuple[int, float]:
    """'none' | 'every=N' | 'growth=MIB' | 'every=N,growth=MIB' -> (every, growth_mib)."""
    every, growth = 0, 0.0
    if text != "none":
        for part in text.split(","):
            key, _, value = part.partition("=")
            if key == "every":
                every = int(value)
            elif key == "growth":
                growth = float(value)
            else:
                raise SystemExit(f"--policy {text!r}: expected none, every=N, growth=MIB or both")
    return every, growth


def child(args: argparse.Namespace) -> int:
    """One policy in this process: prints one JSON line."""
    import resource
    import time

    import torch

    from _arms import epoch0_batches, fit_intents, prepared_arm
    from fenrec_dist.train import loop
    from fenrec_dist.train.memory import release_free_memory, resident_mib

    torch.set_num_threads(args.threads)
    every, growth = parse_policy(args.child)
    arm = prepared_arm(args.data, args.config)
    fit_intents(arm)
    batches = epoch0_batches(arm)[: args.steps]
    peak = [0.0]
    inner = arm.step

    def step(loss: torch.Tensor) -> None:
        inner(loss)
        peak[0] = max(peak[0], resident_mib())

    release_free_memory()
    torch.manual_seed(0)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = loop.train_epoch(arm.model, arm.model, step, arm.data.train, arm.partners, arm.data.train, batches,
                     arm.loss_fn, 0, arm.intents, arm.cfg.train.seed, arm.device,
                     trim_every=every, trim_growth_mib=growth)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = len(batches)
    print(json.dumps({"ms_per_step": 1000 * wall / n, "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / n,
                      "sys_ms_per_step": 1000 * (r1.ru_stime - r0.ru_stime) / n, "peak_rss_mib": peak[0],
                      "trims": res.trims}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policy", action="append", default=[])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "trim.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    if args.child is not None:
        return child(args)
    policies = args.policy or ["every=25", "none", "growth=256", "growth=512"]
    for p in policies:
        parse_policy(p)
    runs: dict[str, list[dict]] = {p: [] for p in policies}
    for r in range(args.rounds):
        for p in (policies if r % 2 == 0 else policies[::-1]):
            cmd = [sys.executable, __file__, "--child", p, "--data", args.data, "--config", args.config,
                   "--steps", str(args.steps), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            runs[p].append(rec)
            print(f"round {r} {p:>20}: {rec['ms_per_step']:.1f} ms/step, {rec['faults_per_step']:.0f} faults/step, "
                  f"peak {rec['peak_rss_mib']:.0f} MiB, {rec['trims']} trims", flush=True)
    med = {p: {k: round(statistics.median(x[k] for x in runs[p]), 1) for k in runs[p][0]} for p in policies}
    first = policies[0]
    res = {"command": " ".join(sys.argv), "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
           "median": med,
           "ms_ratio_to_" + first: {p: round(med[p]["ms_per_step"] / med[first]["ms_per_step"], 3) for p in policies},
           "runs": runs}
    for p in policies:
        print(f"{p:>20}: {med[p]['ms_per_step']:.1f} ms/step ({res['ms_ratio_to_' + first][p]:.3f}), "
              f"{med[p]['faults_per_step']:.0f} faults/step, peak {med[p]['peak_rss_mib']:.0f} MiB, {med[p]['trims']:.0f} trims")
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
