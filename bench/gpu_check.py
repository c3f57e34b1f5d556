#!/usr/bin/env python
"""Single-GPU check of the training path: Beauty-sized synthetic data, bf16 autocast on CUDA.

    python bench/gpu_check.py [--device cuda] [--users 22363] [--items 12101] [--epochs 2]

Generates a synthetic log shaped like Beauty (22,363 users, 12,101 items, ~8.9
interactions a user), prepares it, and trains ``--epochs`` epochs of configs/beauty.yaml
(the first in the warm-up phase, the rest with hard and noise negatives) in one process.
Prints samples/s, epoch time by phase and the peak GPU memory. Needs no network, Ray or
DeepSpeed; FAISS is used for the intents when importable, else the fine-grained term is
switched off and the output says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--users", type=int, default=22363)
    ap.add_argument("--items", type=int, default=12101)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=None, help="write the JSON summary here too")
    args = ap.parse_args()
    import torch

    from fenrec_dist.config import load_config
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.data.synth import SynthConfig, write_synth
    from fenrec_dist.train.report import read_metrics
    from fenrec_dist.train.single import train_single

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available")
        return 1
    try:
        import faiss  # noqa: F401

        have_faiss = True
    except ImportError:
        have_faiss = False
    overrides = [f"train.device={args.device}", f"train.epochs={args.epochs}", "negatives.warmup_epochs=1",
                 "train.progress=false", f"train.batch_size={args.batch_size}", "deepspeed.bf16=auto"]
    if not have_faiss:
        overrides.append("loss.beta_fine=0")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_synth(SynthConfig(users=args.users, items=args.items, mean_length=8.9, seed=0), Path(tmp) / "log.csv")
        m = prepare(Path(tmp) / "log.csv", Path(tmp) / "data")
        t_data = time.perf_counter() - t0
        cfg = load_config(ROOT / "configs" / "beauty.yaml", [f"data.path={tmp}/data"] + overrides)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        final = train_single(cfg, Path(tmp) / "run", log=lambda line: print(line, flush=True))
        total = time.perf_counter() - t0
        recs = read_metrics(Path(tmp) / "run")
    summary = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__, "bf16_autocast": args.device == "cuda", "faiss_intents": have_faiss,
        "data": {"users": m["users"], "items": m["items"], "train_samples": m["train_samples"],
                 "synth_and_prepare_s": round(t_data, 1)},
        "epochs": [{"epoch": r["epoch"], "phase": r["phase"], "samples_per_s": round(r["samples_per_s"], 1),
                    "time_s": {k: round(v, 2) for k, v in r["time"].items()}} for r in recs],
        "peak_gpu_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device == "cuda" else None,
        "train_total_s": round(total, 1), "test": final["test"],
    }
    print("GPU_CHECK " + json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
