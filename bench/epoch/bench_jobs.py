#!/usr/bin/env python
"""Training throughput of several jobs sharing one machine, by threads per job.

    .venv/bin/python bench/epoch/bench_jobs.py [--steps 40] [--layouts 1x2,2x1,2x2]

A layout ``JxT`` starts J processes at once, each with T torch intra-op threads, each
training its own SASRec on the same post-warm-up Beauty batches (configs/beauty.yaml, hard
+ noise negatives on; the set-up of ``bench/micro/bench_step.py``). Every process prepares its
model, data and intents and takes 3 warm-up steps, then all start their ``--steps`` timed
steps together (a start file), so the timed windows overlap. Reports, per layout, the wall
time of each job's steps, the throughput of the machine (all jobs' steps / the slowest
job's time) and the process CPU split (user / system). What it answers: how to run an
ablation pair or a CPU Tune sweep on a small machine (threads per job x jobs <= cores).
Writes bench/epoch/results/jobs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402

WORKER = r"""
import json, os, sys, time, resource
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import torch
torch.set_num_threads({threads})
from _arms import epoch0_batches, fit_intents, prepared_arm
arm = prepared_arm({data!r}, {config!r})
fit_intents(arm)
batches = epoch0_batches(arm)
import numpy as np
pick = np.random.default_rng(1).choice(len(batches), {steps} + 3, replace=False)
for i in pick[:3]:
    arm.run(batches[i], seed=int(i))
open({ready!r}, "w").close()
while not os.path.exists({go!r}):
    time.sleep(0.01)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
for i in pick[3:]:
    arm.run(batches[i], seed=int(i))
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime}}))
"""


def run_layout(jobs: int, threads: int, steps: int, data: str, config: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        procs, readies = [], []
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        for j in range(jobs):
            ready = os.path.join(tmp, f"ready{j}")
            readies.append(ready)
            code = WORKER.format(root=str(ROOT), bench=str(ROOT / "bench"), threads=threads, data=data,
                                 config=config, steps=steps, ready=ready, go=go)
            procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True, env=env))
        while not all(os.path.exists(r) for r in readies):
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"a {jobs}x{threads} job failed during set-up")
            time.sleep(0.1)
        open(go, "w").close()
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    slowest = max(o["wall_s"] for o in outs)
    user = sum(o["user_s"] for o in outs)
    system = sum(o["sys_s"] for o in outs)
    return {
        "jobs": jobs, "threads_per_job": threads,
        "ms_per_step_each_job": [round(1000 * o["wall_s"] / steps, 1) for o in outs],
        "machine_steps_per_s": round(jobs * steps / slowest, 2),
        "system_share_of_cpu": round(system / max(user + system, 1e-9), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--layouts", default="1x2,2x1,2x2")
    ap.add_argument("--out", default=str(ROOT / "bench" / "epoch" / "results" / "jobs.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    layouts = [tuple(int(x) for x in s.split("x")) for s in args.layouts.split(",")]
    results = []
    for jobs, threads in layouts:
        results.append(run_layout(jobs, threads, args.steps, args.data, args.config))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["machine_steps_per_s"]
    for r in results:
        r["throughput_over_first_layout"] = round(r["machine_steps_per_s"] / base, 2)
    return write_result(args.out, {"command": " ".join(sys.argv), "cores": os.cpu_count(), "steps": args.steps,
                                   "layouts": results})


if __name__ == "__main__":
    sys.exit(main())
