#!/usr/bin/env python
"""Ray Data's two Parquet readers on the prepared training shards: V2 (Ray 2.60's default) vs V1.

    .venv/bin/python bench/scale/bench_ingest.py [--data data/beauty] [--reps 3]

Starts an embedded Ray (2 CPUs), then reads every row of the shards with each reader in
turn (``DataContext.use_datasource_v2``), as the training workers do (``iter_batches`` in
Arrow format), and reports the median seconds and the row count of each; the readers
alternate rep by rep. ``fenrec train`` and Tune trials use V1 (distributed/driver.py).
Writes bench/scale/results/ingest.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT / "data" / "beauty"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "ingest.json"))
    args = ap.parse_args()
    if not (Path(args.data) / "manifest.json").exists():
        print(f"skip: no prepared data at {args.data} (fenrec prepare ../shared/data/Beauty.txt --out data/beauty)")
        return 0
    import ray
    import ray.data

    from fenrec_dist.config import load_config
    from fenrec_dist.distributed.driver import init_ray, train_files

    files = train_files(args.data)
    t0 = time.perf_counter()
    init_ray(load_config(None, []), num_cpus=2)
    ray_up = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    times: dict[str, list[float]] = {"v2": [], "v1": []}
    rows: dict[str, int] = {}
    for i in range(args.reps):
        for name in (("v2", "v1") if i % 2 == 0 else ("v1", "v2")):
            ray.data.DataContext.get_current().use_datasource_v2 = name == "v2"
            t = time.perf_counter()
            ds = ray.data.read_parquet(files)
            n = sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
            times[name].append(time.perf_counter() - t)
            rows[name] = n
    ray.shutdown()
    res = {"command": " ".join(sys.argv), "files": len(files), "rows": rows, "ray_init_s": round(ray_up, 1),
           "seconds_median": {k: round(statistics.median(v), 2) for k, v in times.items()},
           "seconds_all": {k: [round(x, 2) for x in v] for k, v in times.items()}}
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
