#!/usr/bin/env python
"""What static shapes cost without graphs: the encoder's forward+backward per batch, packed
(``model.pack_tokens``, the default) against ``StaticPlan`` bucketed (token_multiple 512) and the
full grid (token_multiple 0), interleaved on the same Beauty batches (2 x batch_size rows:
anchors and random partners), plus the host time to plan a batch.

    python bench/gpu/static_cost.py --data data/beauty [--device cpu] [--threads 1] [--batches 20]
        [--rounds 3] [--out FILE.json]

Prints one JSON line: median milliseconds per batch of each variant (dropout as configured),
their ratio to packed, the median planning time of PackPlan/StaticPlan on the host, and the
token counts (real tokens, bucketed, full grid).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fenrec_dist.config import load_config  # noqa: E402
from fenrec_dist.data.dataset import load_prepared  # noqa: E402
from fenrec_dist.model import build_encoder  # noqa: E402
from fenrec_dist.model.packing import PackPlan, StaticPlan  # noqa: E402


def _git_head() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfg = load_config(args.config, [f"data.path={args.data}"])
    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    rng = np.random.default_rng(0)
    n = len(data.train)
    batches = [data.train.inputs[rng.integers(0, n, 2 * cfg.train.batch_size)].astype(np.int64)
               for _ in range(args.batches)]
    torch.manual_seed(0)
    variants = {"packed": dataclasses.replace(cfg.model, static_shapes=False),
                "static_512": dataclasses.replace(cfg.model, static_shapes=True, token_multiple=512),
                "full_grid": dataclasses.replace(cfg.model, static_shapes=True, token_multiple=0)}
    base = build_encoder(cfg.model, data.num_items, data.max_len).to(dev)
    models = {}
    for name, mcfg in variants.items():
        m = build_encoder(mcfg, data.num_items, data.max_len).to(dev).train()
        m.load_state_dict(base.state_dict())
        models[name] = m
    times: dict[str, list[float]] = {k: [] for k in models}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.rounds):
        for ids in batches:
            x = torch.from_numpy(ids).to(dev)
            for name, m in models.items():  # interleaved: the machine's load hits all alike
                sync()
                t0 = time.perf_counter()
                m(x).square().sum().backward()
                sync()
                times[name].append(time.perf_counter() - t0)
                m.zero_grad(set_to_none=True)
    plan_ms = {"PackPlan": [], "StaticPlan_512": [], "full_grid": []}
    tokens = {"real": [], "bucketed": [], "full": []}
    for ids in batches:
        t = torch.from_numpy(ids)
        for key, fn in (("PackPlan", lambda: PackPlan.build(t, data.max_len)),
                        ("StaticPlan_512", lambda: StaticPlan.build(ids, data.max_len, 512, 16)),
                        ("full_grid", lambda: StaticPlan.full_grid(t, data.max_len))):
            t0 = time.perf_counter()
            plan = fn()
            plan_ms[key].append(1000 * (time.perf_counter() - t0))
            if key == "StaticPlan_512":
                tokens["real"].append(plan.tokens)
                tokens["bucketed"].append(plan.key[1])
            if key == "full_grid":
                tokens["full"].append(plan.key[1])
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    out = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "git": _git_head(), "device": args.device, "threads": args.threads, "torch": torch.__version__, "rows": 2 * cfg.train.batch_size,
           "batches": args.batches, "rounds": args.rounds, "dropout": cfg.model.dropout,
           "fwd_bwd_ms_median": {k: round(v, 2) for k, v in med.items()},
           "ratio_to_packed": {k: round(v / med["packed"], 3) for k, v in med.items()},
           "plan_ms_median": {k: round(statistics.median(v), 3) for k, v in plan_ms.items()},
           "tokens_mean": {k: round(float(np.mean(v)), 1) for k, v in tokens.items()}}
    print(json.dumps(out))
    if args.out:  # with the provenance every bench result carries (bench/_result.py)
        sys.path.insert(0, str(ROOT / "bench"))
        from _result import write_result

        write_result(args.out, out, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
