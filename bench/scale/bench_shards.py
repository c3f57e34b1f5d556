#!/usr/bin/env python
"""Sharded data at scale: what each Ray Train worker holds and reads, with 1 and with 2 workers.

    .venv/bin/python bench/scale/bench_shards.py [--users 500000 --items 200000 --mean-length 10]
        [--steps 200] [--workers 1 2] [--work /tmp/fenrec-bench-shards] [--set KEY=VALUE ...]
        [--out bench/scale/results/shards.json]

A synthetic log (``fenrec synth``: by default 500k users, 200k items, about 5M interactions)
is prepared into 32 target-partitioned shards, then ``fenrec train`` runs one epoch of
``--steps`` steps (``train.epoch_steps``) with W embedded Ray Train workers (1 CPU and 1
thread each, DeepSpeed, batch 256 per worker) for each W. The epoch includes the intent
refresh at that size (every rank embeds its samples, k-means on a sample of at most
``intents.max_points``, the centroids broadcast); validation and the final scoring use a fixed
sample of 2,000 users (``eval.max_users``). Per W it records, from the run's metrics.jsonl:
every rank's peak RSS (overall, and each phase's own: load, engine, cluster, refresh, train,
eval) and bytes read, its local rows, samples/s, and the phase times. ``--set`` overrides the
config (for example ``loss.rec_softmax=sampled``, the large-catalogue setting). Writes
bench/scale/results/shards.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _result import write_result  # noqa: E402


def prepare_data(work: Path, users: int, items: int, mean_length: float) -> tuple[Path, dict, float, float]:
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.data.synth import SynthConfig, write_synth

    log, data = work / "log.txt", work / "data"
    t_synth = t_prep = 0.0
    if not (data / "manifest.json").exists():
        t0 = time.perf_counter()
        write_synth(SynthConfig(users=users, items=items, mean_length=mean_length, seed=0), log, fmt="seq")
        t_synth = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare(log, data, max_len=50, horizon=2, num_shards=32, overwrite=True)
        t_prep = time.perf_counter() - t0
    return data, json.loads((data / "manifest.json").read_text()), t_synth, t_prep


def run(data: Path, work: Path, workers: int, steps: int, overrides: list[str]) -> dict:
    import ray

    from fenrec_dist.config import load_config
    from fenrec_dist.distributed.driver import run_distributed
    from fenrec_dist.train.report import read_metrics

    run_dir = work / f"run-w{workers}-{int(time.time())}"
    cfg = load_config(ROOT / "configs" / "beauty.yaml", [
        f"data.path={data}", "train.epochs=1", f"train.epoch_steps={steps}", "train.threads=1",
        "train.progress=false", "eval.max_users=2000", f"distributed.num_workers={workers}",
        "distributed.cpus_per_worker=1", *overrides,
    ])
    t0 = time.perf_counter()
    final = run_distributed(cfg, run_dir, log=lambda *_: None)
    wall = time.perf_counter() - t0
    ray.shutdown()
    rec = read_metrics(run_dir)[0]
    return {
        "workers": workers, "steps": steps, "wall_s": round(wall, 1),
        "peak_rss_mib_per_rank": rec["memory"]["peak_rss_mib"],
        "peak_rss_mib_by_phase_end": {**rec["memory"].get("peak_rss_mib_startup", {}),
                                      **rec["memory"].get("peak_rss_mib_by_phase_end", {})},
        "peak_rss_mib_in_phase": rec["memory"].get("peak_rss_mib_in_phase", {}),
        "bytes_read_per_rank": rec["startup"]["bytes_read"],
        "local_rows_per_rank": rec["startup"]["local_rows"],
        "samples_per_s": rec["samples_per_s"], "time_s": rec["time"],
        "startup_s": {k: v for k, v in rec["startup"].items() if not isinstance(v, list)},
        "valid_sample": rec["valid"], "test_sample": final["test"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=500_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--mean-length", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", default="/tmp/fenrec-bench-shards")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "shards.json"))
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, manifest, t_synth, t_prep = prepare_data(work, args.users, args.items, args.mean_length)
    runs = [run(data, work, w, args.steps, args.overrides) for w in args.workers]
    by_w = {r["workers"]: r for r in runs}
    ratios = {}
    if 1 in by_w and 2 in by_w:
        one, two = by_w[1], by_w[2]
        ratios = {
            "peak_rss_2w_over_1w": max(two["peak_rss_mib_per_rank"]) / one["peak_rss_mib_per_rank"][0],
            "bytes_read_2w_over_1w": max(two["bytes_read_per_rank"]) / one["bytes_read_per_rank"][0],
            "rows_2w_over_1w": max(two["local_rows_per_rank"]) / one["local_rows_per_rank"][0],
            "phase_peak_rss_2w_over_1w": {k: max(v) / one["peak_rss_mib_in_phase"][k][0]
                                          for k, v in two["peak_rss_mib_in_phase"].items()
                                          if k in one["peak_rss_mib_in_phase"]},
        }
    return write_result(args.out, {
        "data": {k: manifest[k] for k in ("users", "items", "interactions", "train_samples")} |
                {"shards": len(manifest["shards"]), "synth_s": round(t_synth, 1), "prepare_s": round(t_prep, 1)},
        "overrides": args.overrides, "runs": runs, "ratios": ratios,
    })


if __name__ == "__main__":
    sys.exit(main())
