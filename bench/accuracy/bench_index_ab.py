#!/usr/bin/env python
"""Beauty: in-batch negatives only vs in-batch plus FAISS-index-mined negatives, at an
equal epoch count, from one shared warm-up.

    .venv/bin/python bench/accuracy/bench_index_ab.py [--data ../shared/data/Beauty.txt] [--warmup 5] [--epochs 10]
                                             [--threads 1] [--workdir runs/index-ab]

Both arms are identical during the warm-up (plain in-batch InfoNCE; the index is not
used before it ends), so the warm-up is trained once (``negatives.sources=[in_batch]``,
``train.epochs=warmup``) and then branched: each arm is a copy of that run directory
whose config gets its own ``negatives.sources`` and ``train.epochs``, continued with
``fenrec train --local --resume`` (the two arms run side by side). Writes
bench/accuracy/results/index_ab.json: per arm the validation NDCG@20 per epoch, the test metrics
of the best checkpoint, epoch times (index refresh included) and the index summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "index-ab"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "accuracy" / "results" / "index_ab.json"))
    ap.add_argument("--reuse-partial-warmup", action="store_true",
                    help="branch from an interrupted warm-up run as it is (the arms' warm-up ends where it stopped)")
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import yaml

    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.train import layout
    from fenrec_dist.train.report import read_metrics

    work = Path(args.workdir)
    data = work / "data"
    if not (data / "manifest.json").exists():
        prepare(args.data, data)
    fenrec = [sys.executable, "-m", "fenrec_dist.cli"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads)}
    base = work / "warmup"
    t0 = time.perf_counter()
    warmup = args.warmup
    newest = None  # the warm-up run's newest complete checkpoint (an earlier layout's last.pt converted first)
    if args.reuse_partial_warmup and base.is_dir():
        layout.upgrade_legacy(base)
        newest = layout.newest(layout.candidates(base))
    if newest is not None:
        warmup = layout.checkpoint_epoch(newest)  # epochs the warm-up finished
    elif not (base / "final.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(fenrec + ["train", "--local", "--config", args.config, "--out", str(base),
                                 "--set", f"data.path={data}", "--set", "negatives.sources=[in_batch]",
                                 "--set", f"negatives.warmup_epochs={args.warmup}", "--set", f"train.epochs={args.warmup}",
                                 "--set", f"train.threads={args.threads}", "--set", "train.progress=false"],
                       check=True, env=env)
    t_warm = time.perf_counter() - t0
    arms = {"in_batch": ["in_batch"], "in_batch+index": ["in_batch", "index"]}
    procs = {}
    for name, sources in arms.items():
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base, d, ignore=shutil.ignore_patterns("final.json", "curves.png", "tensorboard"))
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["negatives"]["sources"] = sources
        cfg["negatives"]["warmup_epochs"] = warmup
        cfg["train"]["epochs"] = args.epochs
        (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        log = open(work / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(fenrec + ["train", "--local", "--resume", str(d)], env=env, stdout=log,
                                        stderr=subprocess.STDOUT), log)
    for name, (p, log) in procs.items():
        if p.wait() != 0:
            print(f"{name} failed; see {work / (name + '.log')}")
            return 1
        log.close()
    out = {"command": " ".join(["bench/accuracy/bench_index_ab.py"] + sys.argv[1:]), "threads": args.threads,
           "warmup_epochs": warmup, "epochs": args.epochs, "warmup_s": round(t_warm, 1), "arms": {}}
    for name in arms:
        d = work / name
        recs = read_metrics(d)
        final = json.loads((d / "final.json").read_text())
        arm = {
            "valid_ndcg20": [round(r["valid"]["NDCG@20"], 5) for r in recs],
            "best_epoch": final["best_epoch"], "test": {k: round(v, 5) for k, v in final["test"].items()},
            "epoch_s": [round(r["time"]["epoch"], 1) for r in recs[warmup:]],
            "index_s": [round(r["time"].get("index", 0.0), 2) for r in recs[warmup:]],
        }
        if (d / "negatives" / "summary.jsonl").exists():
            arm["index_summary_last"] = json.loads((d / "negatives" / "summary.jsonl").read_text().splitlines()[-1])
        out["arms"][name] = arm
        print(name, json.dumps({k: arm[k] for k in ("best_epoch", "test", "epoch_s", "index_s")}))
    return write_result(args.out, out, echo=False)


if __name__ == "__main__":
    sys.exit(main())
