#!/usr/bin/env python
"""Ray Train throughput: 1 worker vs 2 workers on this CPU, overheads reported separately.

    DS_ACCELERATOR=cpu .venv/bin/python bench/scale/bench_workers.py [--users 3000] [--epochs 2]

Same synthetic data and the same global batch (256: 1 x 256 vs 2 x 128, negatives gathered
across workers) for both runs. Reports training samples/s per epoch, Ray start-up
(``ray.init``), per-worker start-up (eval-table load, Ray Data ingest of the worker's
shard, DeepSpeed engine init) and the whole wall time. Writes bench/scale/results/workers.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def run(data: Path, workers: int, epochs: int, out: Path) -> dict:
    import ray

    from fenrec_dist.config import load_config
    from fenrec_dist.distributed.driver import run_distributed
    from fenrec_dist.train.report import read_metrics

    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"data.path={data}", f"train.epochs={epochs}", "negatives.warmup_epochs=1",
        f"train.batch_size={256 // workers}", f"distributed.num_workers={workers}", "distributed.cpus_per_worker=1",
    ])
    lines: list[str] = []
    t0 = time.perf_counter()
    run_distributed(cfg, out, log=lines.append)
    wall = time.perf_counter() - t0
    ray.shutdown()
    recs = read_metrics(out)
    ray_up = float(lines[0].split("ray up in ")[1].split("s")[0])
    return {"workers": workers, "global_batch": 256, "wall_s": round(wall, 1), "ray_init_s": ray_up,
            "worker_startup_s": {k: round(v, 2) for k, v in recs[0]["startup"].items()},
            "epochs": [{"epoch": r["epoch"], "phase": r["phase"], "samples_per_s": round(r["samples_per_s"], 1),
                        "train_s": round(r["time"]["train"], 1), "cluster_s": round(r["time"]["cluster"], 2),
                        "eval_s": round(r["time"]["eval"], 2)} for r in recs]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "workers.json"))
    args = ap.parse_args()
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.data.synth import SynthConfig, write_synth

    with tempfile.TemporaryDirectory() as tmp:
        write_synth(SynthConfig(users=args.users, items=400, seed=0), Path(tmp) / "log.csv")
        prepare(Path(tmp) / "log.csv", Path(tmp) / "data", max_len=20, num_shards=4)
        results = [run(Path(tmp) / "data", w, args.epochs, Path(tmp) / f"run{w}") for w in (1, 2)]
    speed = [r["epochs"][0]["samples_per_s"] for r in results]
    summary = {"command": " ".join(sys.argv), "runs": results,
               "warmup_epoch_speedup_2_vs_1": round(speed[1] / speed[0], 2)}
    return write_result(args.out, summary)


if __name__ == "__main__":
    sys.exit(main())
