#!/usr/bin/env python
"""train.split_encoder against the plain step: whole Beauty epochs, by phase.

    .venv/bin/python bench/bench_split.py [--rounds 2] [--out bench/results/split.json]

Runs ``bench/bench_epoch.py`` (one post-warm-up epoch of configs/beauty.yaml with the
clustering pass and validation, peak RSS) in a subprocess per arm, the arms in rotating
order round by round:

- ``plain_2threads``: ``train.split_encoder=false``, 2 intra-op threads;
- ``split_2threads``: ``train.split_encoder=true`` (two encoding threads with 1 intra-op
  thread each, the loss with 2);
- ``plain_1thread``: ``train.threads=1`` and no split, the plain step on one core.

First ``--steps`` paired training steps (``steps``: the same batches, split and plain
interleaved; the steadier figure on a shared machine). Reports each epoch run's phases, the median per arm and the ratios to ``plain_2threads``; also
the validation NDCG@20 after the epoch (equal arms by construction differ only by their
dropout masks).

OpenMP's wait policy decides the result: run it as is (libgomp's default, threads spin a
while between parallel regions) and with ``OMP_WAIT_POLICY=PASSIVE`` (they sleep), which
the subprocesses inherit: bench/results/split_default.json and split_passive.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _result import write_result  # noqa: E402

ARMS = {
    "plain_2threads": ["--threads", "2", "--set", "train.split_encoder=false"],
    "split_2threads": ["--threads", "2", "--set", "train.split_encoder=true"],
    "plain_1thread": ["--threads", "1", "--set", "train.split_encoder=false"],
}


def steps(data: str, config: str, n: int, warm: int = 3) -> dict:
    """Paired post-warm-up steps: two copies of the same initial model on the same batches,
    one stepping with the split encoder and one plain (2 intra-op threads on the calling
    thread), the order alternated step by step; wall and process CPU time."""
    import time

    import torch

    from bench_step import epoch0_batches, twin_arms
    from fenrec_dist.train.split import SplitEncoder

    torch.set_num_threads(2)
    plain, split_arm = twin_arms(data, config, ["train.split_encoder=false"])
    split = SplitEncoder(split_arm.model, split_arm.device, parts=2, threads_per_part=1)
    batches = epoch0_batches(plain)
    wall: dict[str, list[float]] = {"plain": [], "split": []}
    cpu: dict[str, list[float]] = {"plain": [], "split": []}
    for i in range(warm + n):
        b = batches[i % len(batches)]
        arms = [("plain", plain, None), ("split", split_arm, split)]
        for name, arm, sp in (arms if i % 2 else arms[::-1]):
            torch.manual_seed(i)
            t0, c0 = time.perf_counter(), time.process_time()
            arm.loop.train_epoch(arm.model, arm.model, arm.step, arm.data.train, arm.partners, arm.data.train, [b],
                                 arm.loss_fn, 0, arm.intents, arm.cfg.train.seed, arm.device, split=sp)
            if i >= warm:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    split.close()
    pairs = [s_ / p_ for s_, p_ in zip(wall["split"], wall["plain"])]
    return {
        "steps": n, "ms_per_step_median": {k: round(1000 * statistics.median(v), 1) for k, v in wall.items()},
        "ratio_split_over_plain_median_of_pairs": round(statistics.median(pairs), 3),
        "ratio_split_over_plain_of_sums": round(sum(wall["split"]) / sum(wall["plain"]), 3),
        "cpu_ratio_split_over_plain_of_sums": round(sum(cpu["split"]) / sum(cpu["plain"]), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--rounds", type=int, default=2, help="rounds of whole epochs (0: none)")
    ap.add_argument("--steps", type=int, default=60, help="paired steps before the epochs (0: none)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "split.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    step_res = steps(args.data, args.config, args.steps) if args.steps else None
    if step_res is not None:
        print("steps", step_res, flush=True)
    names = list(ARMS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    order: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out = Path(tmp) / f"{name}.{r}.json"
                subprocess.run([sys.executable, str(ROOT / "bench" / "bench_epoch.py"), "--data",
                                str(Path(args.data).resolve()), "--config", args.config, "--out", str(out),
                                *ARMS[name]], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                               env=dict(os.environ))  # this process's OMP_WAIT_POLICY, or none
                runs[name].append(json.loads(out.read_text()))
                order.append(name)
                print(name, runs[name][-1]["phases_s"], flush=True)
    if not args.rounds:
        return write_result(args.out, {"command": " ".join(sys.argv), "steps": step_res})
    med = {n: {ph: round(statistics.median(x["phases_s"][ph] for x in rs), 1) for ph in rs[0]["phases_s"]}
           for n, rs in runs.items()}
    base = med["plain_2threads"]
    res = {
        "command": " ".join(sys.argv), "steps": step_res, "order": order,
        "phases_s_each": {n: [x["phases_s"] for x in rs] for n, rs in runs.items()},
        "phases_s_median": med,
        "ratio_over_plain_2threads": {n: {ph: round(m[ph] / base[ph], 3) for ph in base} for n, m in med.items()},
        "peak_rss_mib": {n: max(x["peak_rss_mib"] for x in rs) for n, rs in runs.items()},
        "valid_NDCG@20_after_1_epoch": {n: [round(x["valid_after_1_epoch"]["NDCG@20"], 5) for x in rs]
                                       for n, rs in runs.items()},
        "reference_here_s": runs["plain_2threads"][0]["reference_here_s"],
    }
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
