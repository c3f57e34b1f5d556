#!/usr/bin/env python
"""A short real Ray Tune sweep on Amazon Beauty: 8 trials over loss.gamma in [0.05, 0.6] with ASHA.

    nohup .venv/bin/python bench/accuracy/bench_tune_beauty.py > /tmp/tune_beauty.log 2>&1 &
    .venv/bin/python bench/accuracy/bench_tune_beauty.py [--trials 8] [--epochs 3] [--grace 1] [--reduction 2] \
        [--workdir /tmp/fenrec_tune_beauty] [--set key=value ...]

Prepares ../shared/data/Beauty.txt into WORKDIR/data (skips cleanly when the file is
absent; reuses an existing preparation), writes the space file WORKDIR/beauty_gamma.yaml
and runs ``fenrec tune`` with ``configs/beauty.yaml``: one TorchTrainer per trial (1 worker,
1 torch thread), random search of loss.gamma (seeded), ASHA over completed epochs
(grace 1, reduction 2, max_t = epochs). The epochs are all in the warm-up phase of the
reference config (20 epochs), the cheap phase; gamma acts through the soft-label loss
from the first epoch. Concurrency is derived from the machine (2 cores: 2 trials at once).
Re-running with the same WORKDIR resumes an interrupted sweep.

Writes bench/accuracy/results/tune_beauty.{csv,md,json} (and tune_beauty_params.png).
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
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _result import write_result, write_text  # noqa: E402


def _clean(v):  # NaN (no test metric: stopped early) -> null in the JSON
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def space_yaml(trials: int, epochs: int, grace: int, reduction: float) -> str:
    return f"""# Beauty gamma sweep of bench/accuracy/bench_tune_beauty.py (see tune_spaces/quick.yaml for the format).
metric: NDCG@20
mode: max
search: random
num_samples: {trials}
seed: 0
scheduler: {{type: asha, grace_period: {grace}, reduction_factor: {reduction}, max_t: {epochs}}}
resources: {{num_workers: 1, cpus_per_worker: 1}}
fixed:
  train.epochs: {epochs}
  train.threads: 1
  train.progress: false
  distributed.keep_checkpoints: 1
params:
  loss.gamma: {{type: uniform, low: 0.05, high: 0.6}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--grace", type=int, default=1)
    ap.add_argument("--reduction", type=float, default=2.0)
    ap.add_argument("--max-concurrent", type=int, default=None)
    ap.add_argument("--workdir", default="/tmp/fenrec_tune_beauty")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "accuracy" / "results" / "tune_beauty"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0

    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.tune.results import columns
    from fenrec_dist.tune.space import load_space
    from fenrec_dist.tune.sweep import run_sweep

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    t0 = time.perf_counter()
    if not (data / "manifest.json").exists():
        prepare(args.data, data, overwrite=True)
    t_prep = time.perf_counter() - t0
    space_file = work / "beauty_gamma.yaml"
    space_file.write_text(space_yaml(args.trials, args.epochs, args.grace, args.reduction))

    t0 = time.perf_counter()
    summary = run_sweep(config_path=args.config, space_path=str(space_file),
                        overrides=[f"data.path={data}", *args.overrides], out=str(work / "sweep"),
                        max_concurrent=args.max_concurrent)
    wall = time.perf_counter() - t0

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.with_suffix(".csv"), Path(summary["csv"]).read_bytes())
    write_text(out.with_suffix(".md"), Path(summary["markdown"]).read_bytes())
    if summary["png"]:
        write_text(out.parent / f"{out.name}_params.png", Path(summary["png"]).read_bytes())
    space = load_space(space_file)
    best = summary["best"]
    rows = [dict(zip(columns(space), [r.trial_id, *r.params.values(), r.best, r.test, r.epochs, r.status]))
            for r in summary["rows"]]
    result = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "config": args.config, "space": space_yaml(args.trials, args.epochs, args.grace, args.reduction),
        "overrides": args.overrides, "prepare_s": round(t_prep, 1), "sweep_wall_s": round(wall, 1),
        "tune_fit_s": round(summary["seconds"], 1), "concurrent_trials": summary["concurrency"],
        "machine": f"{os.cpu_count()} CPU cores, shared with other jobs",
        "sweep_dir": str(summary["sweep_dir"]),
        "best": {"trial_id": best.trial_id, "params": best.params, "valid_NDCG@20": best.best,
                 "test_NDCG@20": best.test, "epochs": best.epochs},
        "epochs_total": sum(r.epochs for r in summary["rows"]),
        "statuses": {s: sum(r.status == s for r in summary["rows"]) for s in {r.status for r in summary["rows"]}},
        "trials": rows,
    }
    result = _clean(result)
    write_result(out.with_suffix(".json"), result, echo=False)
    print(json.dumps({k: v for k, v in result.items() if k not in ("trials", "space")}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
