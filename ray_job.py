#!/usr/bin/env python
"""Job entry point for `ray job submit` (and KubeRay RayJob): a thin face over the driver.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_job.py --config configs/beauty.yaml --set distributed.num_workers=4

Inside a submitted job RAY_ADDRESS is set, so the trainer joins that cluster.
``--dry-run`` prints the resolved config, scaling plan, storage path and data shards,
then exits without training.
"""

from __future__ import annotations

import argparse
import json
import sys

from fenrec_dist.cliutil import run_reporting_errors
from fenrec_dist.config import dump_yaml, load_config


def dry_run(cfg, run_dir) -> dict:  # type: ignore[no-untyped-def]
    from fenrec_dist.distributed.driver import local_num_cpus, resolve_run, train_files

    local, name, storage = resolve_run(cfg, run_dir)
    shards = train_files(cfg.data.path)
    d = cfg.distributed
    plan = {
        "workers": d.num_workers, "use_gpu": d.use_gpu, "cpus_per_worker": d.cpus_per_worker,
        "global_batch": d.num_workers * cfg.train.batch_size, "deepspeed": cfg.deepspeed.enabled,
        "zero_stage": cfg.deepspeed.zero_stage, "max_failures": d.max_failures,
        "embedded_ray_cpus_if_local": local_num_cpus(cfg),
    }
    from fenrec_dist.data.dataset import read_manifest
    from fenrec_dist.data.shards import assign_shards

    rows = [int(s["rows"]) for s in read_manifest(cfg.data.path)["shards"]]
    per_worker = [{"shards": len(p), "rows": sum(rows[i] for i in p)} for p in assign_shards(rows, d.num_workers)]
    return {"run_name": name, "storage_path": storage, "local_run_dir": str(local), "scaling": plan,
            "data": {"path": cfg.data.path, "shards": shards, "per_worker": per_worker}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", "-c", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="run directory (default: distributed.storage_path/distributed.name)")
    ap.add_argument("--address", help="Ray address (default: $RAY_ADDRESS)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit without training")
    args = ap.parse_args(argv)

    def run() -> int:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print("# resolved config\n" + dump_yaml(cfg))
            print("# plan\n" + json.dumps(dry_run(cfg, args.out), indent=2))
            return 0
        from fenrec_dist.distributed.driver import run_distributed

        final = run_distributed(cfg, args.out, address=args.address)
        print("FINAL " + json.dumps(final))
        return 0

    return run_reporting_errors("ray_job", run)


if __name__ == "__main__":
    sys.exit(main())
