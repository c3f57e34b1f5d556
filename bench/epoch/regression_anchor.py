#!/usr/bin/env python
"""The regression anchor: three Beauty epochs of the reference preset in one process.

    .venv/bin/python bench/epoch/regression_anchor.py [--threads 2]

Runs ``fenrec train --local --config configs/beauty.yaml --set train.epochs=3`` (Beauty prepared
into data/beauty first when missing) and records validation HR@20 and NDCG@20 per epoch beside
the figures the package gave before the one-trainer refactor (0.0194 / 0.0343 / 0.0432 and
0.0086 / 0.0137 / 0.0184, 2 threads). Skips cleanly without ../shared/data/Beauty.txt. Writes
bench/epoch/results/regression_anchor.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from _result import write_result  # noqa: E402

BEFORE = {"HR@20": [0.0194, 0.0343, 0.0432], "NDCG@20": [0.0086, 0.0137, 0.0184]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "epoch" / "results" / "regression_anchor.json"))
    args = ap.parse_args()
    raw = ROOT.parent / "shared" / "data" / "Beauty.txt"
    data = ROOT / "data" / "beauty"
    if not (data / "manifest.json").exists():
        if not raw.exists():
            print(f"skipped: {raw} is absent")
            return 0
        subprocess.run([sys.executable, "-m", "fenrec_dist.cli", "prepare", str(raw), "--out", str(data)], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "fenrec_dist.cli", "train", "--local", "--config",
                        str(ROOT / "configs" / "beauty.yaml"), "--set", "train.epochs=3", "--set",
                        f"train.threads={args.threads}", "--set", "train.progress=false", "--set",
                        f"data.path={data}", "--out", str(run)], check=True)
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    now = {k: [r["valid"][k] for r in recs] for k in BEFORE}
    return write_result(args.out, {
        "command": "fenrec train --local --config configs/beauty.yaml --set train.epochs=3 "
                   f"--set train.threads={args.threads}",
        "valid": now, "before_4dp": BEFORE,
        "same_to_4dp": {k: [round(a, 4) == b for a, b in zip(now[k], BEFORE[k])] for k in BEFORE},
        "epoch_seconds": [r["time"]["epoch"] for r in recs],
    })


if __name__ == "__main__":
    sys.exit(main())
