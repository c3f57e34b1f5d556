#!/usr/bin/env python
"""One Beauty epoch by OpenMP wait policy: what ``OMP_WAIT_POLICY`` does to the step.

    .venv/bin/python bench/epoch/bench_wait_policy.py [--rounds 2] [--threads 2] [--out bench/epoch/results/wait_policy.json]

Runs ``bench/epoch/bench_epoch.py`` (one post-warm-up epoch of configs/beauty.yaml with the
clustering pass and validation, peak RSS) in a subprocess per arm, the arms in rotating
order round by round:

- ``default``: ``OMP_WAIT_POLICY`` unset (libgomp's default: a thread spins for a while
  after a parallel region before it sleeps);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once);
- ``active``: ``OMP_WAIT_POLICY=ACTIVE`` (threads spin).

A training step runs about 4,500 operators, most of them small, each its own parallel
region: how fast the second thread wakes for the next one is most of the difference.
Reports each run's phases, the median per arm and the ratios to ``default``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402

POLICIES = {"default": None, "passive": "PASSIVE", "active": "ACTIVE"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "epoch" / "results" / "wait_policy.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    names = list(POLICIES)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    order: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                if POLICIES[name] is not None:
                    env["OMP_WAIT_POLICY"] = POLICIES[name]
                out = Path(tmp) / f"{name}.{r}.json"
                subprocess.run([sys.executable, str(ROOT / "bench" / "epoch" / "bench_epoch.py"), "--data",
                                str(Path(args.data).resolve()), "--config", args.config, "--threads",
                                str(args.threads), "--out", str(out)], check=True, cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL)
                runs[name].append(json.loads(out.read_text()))
                order.append(name)
                print(name, runs[name][-1]["phases_s"], flush=True)
    med = {n: {ph: round(statistics.median(x["phases_s"][ph] for x in rs), 1) for ph in rs[0]["phases_s"]}
           for n, rs in runs.items()}
    base = med["default"]
    res = {
        "command": " ".join(sys.argv), "threads": args.threads, "order": order,
        "phases_s_each": {n: [x["phases_s"] for x in rs] for n, rs in runs.items()},
        "phases_s_median": med,
        "ratio_over_default": {n: {ph: round(m[ph] / base[ph], 3) for ph in base} for n, m in med.items()},
        "peak_rss_mib": {n: max(x["peak_rss_mib"] for x in rs) for n, rs in runs.items()},
        "samples_per_s_median": {n: round(statistics.median(x["samples_per_s"] for x in rs), 1)
                                 for n, rs in runs.items()},
        "valid_NDCG@20_after_1_epoch": {n: [round(x["valid_after_1_epoch"]["NDCG@20"], 5) for x in rs]
                                       for n, rs in runs.items()},
        "reference_here_s": runs["default"][0]["reference_here_s"],
    }
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
