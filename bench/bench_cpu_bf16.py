#!/usr/bin/env python
"""train.cpu_bf16 against float32 on this CPU: the catalogue products, the training step, a whole epoch.

    .venv/bin/python bench/bench_cpu_bf16.py [--parts products,step,epoch] [--threads 1] [--steps 40]
                                             [--epoch-threads 2] [--out bench/results/cpu_bf16.json]

products: the soft-label loss's three catalogue products on Beauty's shapes
    ([256, 64] x [64, 12,102] and the two backward products), float32 against bf16 operands,
    interleaved, median ms.
step: post-warm-up training steps on Beauty (hard + noise negatives, the same intents), four
    arms from the same weights at every step (so each step's arms see the same batch and the
    same state): float32; bf16 catalogue products only; bf16 encoder autocast only; both
    (= train.cpu_bf16=true). Arms interleaved, order rotated per step; medians and the ratio of
    sums over float32, wall and process CPU time, and the largest relative loss difference.
epoch: bench/bench_epoch.py (one post-warm-up epoch with clustering and validation, peak RSS)
    run in subprocesses, float32 then bf16 then bf16 then float32; medians of the two and the
    ratio of the phases.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _result import write_result  # noqa: E402


def products(threads: int, reps: int = 30) -> dict:
    import torch

    torch.set_num_threads(threads)
    from fenrec_dist.scoring import score_items

    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 64, generator=g)
    w = torch.randn(12102, 64, generator=g)
    e = torch.rand(256, 12102, generator=g)
    arms = {}
    for name, dt in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        zz, ww, ee = z.to(dt), w.to(dt), e.to(dt)
        arms[name] = {"logits": lambda zz=zz, ww=ww: score_items(zz, ww), "grad_z": lambda ee=ee, ww=ww: ee @ ww,
                      "grad_items": lambda ee=ee, zz=zz: ee.t() @ zz}
    times: dict[str, dict[str, list[float]]] = {a: {k: [] for k in arms[a]} for a in arms}
    for r in range(reps + 2):
        for a in (("float32", "bf16") if r % 2 else ("bf16", "float32")):
            for k, f in arms[a].items():
                t0 = time.perf_counter()
                f()
                if r >= 2:
                    times[a][k].append(time.perf_counter() - t0)
    med = {a: {k: round(1000 * statistics.median(v), 2) for k, v in d.items()} for a, d in times.items()}
    return {"ms_median": med, "ratio_bf16_over_float32": {k: round(med["bf16"][k] / med["float32"][k], 3)
                                                         for k in med["float32"]}}


def step(data: str, config: str, threads: int, steps: int, warm: int = 3) -> dict:
    import torch

    from bench_step import epoch0_batches, twin_arms

    torch.set_num_threads(threads)
    arm, _ = twin_arms(data, config)  # intents of the initial model, hard + noise negatives on
    batches = epoch0_batches(arm)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    variants = {"float32": (None, torch.float32), "bf16_products": (None, torch.bfloat16),
                "bf16_encoder": (autocast, torch.float32), "bf16_both": (autocast, torch.bfloat16)}
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    worst = 0.0
    state, opt_state = copy.deepcopy(arm.model.state_dict()), copy.deepcopy(arm.opt.state_dict())
    names = list(variants)
    for i in range(warm + steps):
        b = batches[i % len(batches)]
        order = names[i % len(names):] + names[:i % len(names)]
        losses = {}
        for name in order:
            ac, dt = variants[name]
            arm.model.load_state_dict(state)
            arm.opt.load_state_dict(opt_state)
            arm.loss_fn.catalogue_dtype = dt
            torch.manual_seed(i)
            t0, c0 = time.perf_counter(), time.process_time()
            res = arm.loop.train_epoch(arm.model, arm.model, arm.step, arm.data.train, arm.partners, arm.data.train,
                                       [b], arm.loss_fn, 0, arm.intents, arm.cfg.train.seed, arm.device, autocast=ac)
            if i >= warm:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            losses[name] = res.losses
        for name in names[1:]:
            worst = max(worst, max(abs(losses[name][k] - losses["float32"][k]) / max(1.0, abs(losses["float32"][k]))
                                   for k in losses[name]))
        state, opt_state = copy.deepcopy(arm.model.state_dict()), copy.deepcopy(arm.opt.state_dict())
    return {
        "threads": threads, "steps": steps,
        "ms_per_step_median": {k: round(1000 * statistics.median(v), 1) for k, v in wall.items()},
        "ratio_over_float32_of_sums": {k: round(sum(v) / sum(wall["float32"]), 3) for k, v in wall.items()},
        "cpu_ratio_over_float32_of_sums": {k: round(sum(v) / sum(cpu["float32"]), 3) for k, v in cpu.items()},
        "max_relative_loss_difference_vs_float32": float(f"{worst:.3g}"),
    }


def epoch(data: str, config: str, threads: int) -> dict:
    runs: dict[str, list[dict]] = {"float32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(("float32", "bf16", "bf16", "float32")):
            out = Path(tmp) / f"{i}.json"
            extra = ["--set", "train.cpu_bf16=true"] if name == "bf16" else []
            subprocess.run([sys.executable, str(ROOT / "bench" / "bench_epoch.py"), "--data", data, "--config", config,
                            "--threads", str(threads), "--out", str(out), *extra], check=True, cwd=ROOT,
                           env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
            runs[name].append(json.loads(out.read_text()))
    med = {name: {ph: round(statistics.median(r["phases_s"][ph] for r in rs), 1) for ph in rs[0]["phases_s"]}
           for name, rs in runs.items()}
    return {
        "threads": threads, "order": "float32, bf16, bf16, float32",
        "phases_s_each": {name: [r["phases_s"] for r in rs] for name, rs in runs.items()},
        "phases_s_median": med,
        "ratio_bf16_over_float32": {ph: round(med["bf16"][ph] / med["float32"][ph], 3) for ph in med["float32"]},
        "peak_rss_mib": {name: max(r["peak_rss_mib"] for r in rs) for name, rs in runs.items()},
        "valid_NDCG@20_after_1_epoch": {name: [round(r["valid_after_1_epoch"]["NDCG@20"], 5) for r in rs]
                                       for name, rs in runs.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--parts", default="products,step,epoch")
    ap.add_argument("--threads", type=int, default=1, help="threads of the products and step parts")
    ap.add_argument("--epoch-threads", type=int, default=2, help="threads of the epoch part (as bench_epoch.py)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_bf16.json"))
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if (("step" in parts or "epoch" in parts)) and not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    from fenrec_dist.train.precision import cpu_has_native_bf16

    res: dict = {"command": " ".join(sys.argv), "cpu_native_bf16": cpu_has_native_bf16()}
    if "products" in parts:
        res["products"] = products(args.threads)
        print(json.dumps(res["products"]), flush=True)
    if "step" in parts:
        res["step"] = step(args.data, args.config, args.threads, args.steps)
        print(json.dumps(res["step"]), flush=True)
    if "epoch" in parts:
        res["epoch"] = epoch(str(Path(args.data).resolve()), args.config, args.epoch_threads)
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
