#!/usr/bin/env python
"""Validation curve of a (possibly still running) training run: table + PNG.

    .venv/bin/python bench/accuracy/accuracy_report.py runs/beauty-ref [--png bench/accuracy/results/beauty_valid_ndcg20.png]
        [--compare runs/beauty-nosoft-from30 --since 31]

Reads RUN_DIR/metrics.jsonl and prints a markdown table of validation HR@20 / NDCG@20 /
MRR per epoch (with the phase: warm-up or hard/noise negatives) and the best epoch so
far; draws validation NDCG@20 per epoch as a PNG. If final.json exists, prints the test
metrics of the best checkpoint. ``--compare`` puts a second run (an ablation branched off
the same checkpoint) beside it on the shared epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import tee_to, write_sidecar  # noqa: E402
from fenrec_dist.train.report import read_metrics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--png", default=None)
    ap.add_argument("--md", default=None, help="also write the printed report to this file (with its provenance)")
    ap.add_argument("--metric", default="NDCG@20")
    ap.add_argument("--compare", metavar="RUN_DIR2", default=None,
                    help="a second run (an ablation): its validation metric side by side on the shared epochs, "
                         "drawn in the PNG too")
    ap.add_argument("--since", type=int, default=0,
                    help="with --compare: compare epochs from this one on (e.g. where an ablation branched off)")
    args = ap.parse_args()
    with tee_to(args.md):
        return report(args)


def report(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    recs = read_metrics(run)
    if not recs:
        print(f"no metrics in {run}")
        return 1
    print(f"| epoch | phase | valid HR@20 | valid NDCG@20 | valid MRR | epoch s |")
    print("|---|---|---|---|---|---|")
    for r in recs:
        v = r["valid"]
        print(f"| {r['epoch']} | {r['phase']} | {v['HR@20']:.4f} | {v['NDCG@20']:.4f} | {v['MRR']:.4f} | "
              f"{r['time']['epoch']:.0f} |")
    best = max(recs, key=lambda r: r["valid"][args.metric])
    print(f"\nbest valid {args.metric} {best['valid'][args.metric]:.4f} at epoch {best['epoch']} "
          f"of {len(recs)} epochs run")
    final = run / "final.json"
    if final.exists():
        print("test of best checkpoint: " + json.dumps(json.loads(final.read_text())["test"]))
    other = read_metrics(Path(args.compare)) if args.compare else []
    if other:
        mine = {r["epoch"]: r["valid"][args.metric] for r in recs}
        theirs = {r["epoch"]: r["valid"][args.metric] for r in other}
        shared = sorted(e for e in set(mine) & set(theirs) if e >= args.since)
        print(f"\n| epoch | {run.name} | {Path(args.compare).name} |\n|---|---|---|")
        for e in shared:
            print(f"| {e} | {mine[e]:.4f} | {theirs[e]:.4f} |")
        if shared:
            last = shared[-1]
            print(f"\nshared epochs {shared[0]}-{last}: best valid {args.metric} {max(mine[e] for e in shared):.4f} "
                  f"vs {max(theirs[e] for e in shared):.4f}; mean {sum(mine[e] for e in shared) / len(shared):.4f} "
                  f"vs {sum(theirs[e] for e in shared) / len(shared):.4f}")
        other_final = Path(args.compare) / "final.json"
        if other_final.exists():
            print(f"test of {Path(args.compare).name}'s best checkpoint: "
                  + json.dumps(json.loads(other_final.read_text())["test"]))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ep = [r["epoch"] for r in recs]
        ax.plot(ep, [r["valid"][args.metric] for r in recs], marker=".", label=f"valid {args.metric}")
        if other:
            ax.plot([r["epoch"] for r in other], [r["valid"][args.metric] for r in other], marker=".",
                    label=f"valid {args.metric}, {Path(args.compare).name}")
        warm = [r["epoch"] for r in recs if r["phase"] == "warmup"]
        if warm and len(warm) < len(recs):
            ax.axvline(max(warm) + 0.5, color="gray", linestyle=":", label="hard/noise negatives on")
        ax.axhline(0.0663, color="red", linestyle="--", label="ICSRec published test NDCG@20 (0.0663)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(args.metric)
        ax.set_title(f"{run.name}: validation {args.metric} (full ranking)")
        ax.legend()
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110)
        write_sidecar(args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
