#!/usr/bin/env python
"""An ablation run's validation curve against the reference run's, epoch by epoch.

    .venv/bin/python bench/accuracy/ablation_report.py runs/beauty-nosoft \\
        [--reference bench/accuracy/results/beauty_accuracy.md] [--png bench/accuracy/results/beauty_nosoft_valid.png]

The reference is either a run directory (its ``metrics.jsonl``: a rerun of the reference
configuration with the same code and seed, whose random draws match the ablation's) or the
per-epoch table that ``bench/accuracy/accuracy_report.py`` printed for the reference run
(``| epoch | phase | valid HR@20 | valid NDCG@20 | valid MRR | epoch s |``), which needs
neither the reference run's directory nor a rerun of it. The ablation is
a run directory (its ``metrics.jsonl``; it may still be running). Prints, for every epoch both
have, the three validation metrics of each and the ablation's NDCG@20 minus the reference's,
then the mean difference over the shared epochs and over those after the warm-up; draws both
NDCG@20 curves as a PNG.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import tee_to, write_sidecar  # noqa: E402
from fenrec_dist.train.report import read_metrics  # noqa: E402

ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\w+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|")


def read_reference_table(path: Path) -> dict[int, dict]:
    """epoch -> {"phase", "HR@20", "NDCG@20", "MRR"} from the first table of an accuracy report."""
    out: dict[int, dict] = {}
    started = False
    for line in path.read_text().splitlines():
        m = ROW.match(line)
        if m:
            started = True
            e = int(m.group(1))
            out[e] = {"phase": m.group(2), "HR@20": float(m.group(3)), "NDCG@20": float(m.group(4)),
                      "MRR": float(m.group(5))}
        elif started and not line.startswith("|"):
            break  # the first table ended
    if not out:
        raise SystemExit(f"{path}: no '| epoch | phase | HR@20 | NDCG@20 | MRR |' rows found")
    return out


def read_reference(path: Path) -> dict[int, dict]:
    """A run directory's metrics.jsonl or an accuracy report's table, as ``read_reference_table``."""
    if path.is_dir():
        return {r["epoch"]: {"phase": r["phase"], **{k: r["valid"][k] for k in ("HR@20", "NDCG@20", "MRR")}}
                for r in read_metrics(path)}
    return read_reference_table(path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--reference", default=str(ROOT / "bench" / "accuracy" / "results" / "beauty_accuracy.md"),
                    help="a run directory or an accuracy report (.md)")
    ap.add_argument("--png", default=None)
    ap.add_argument("--md", default=None, help="also write the printed report to this file (with its provenance)")
    args = ap.parse_args()
    with tee_to(args.md):
        return report(args)


def report(args: argparse.Namespace) -> int:
    ref = read_reference(Path(args.reference))
    if not ref:
        print(f"no metrics in {args.reference}")
        return 1
    recs = read_metrics(Path(args.run_dir))
    if not recs:
        print(f"no metrics in {args.run_dir}")
        return 1
    name = Path(args.run_dir).name
    shared = [r for r in recs if r["epoch"] in ref]
    print(f"| epoch | phase | ref HR@20 | {name} HR@20 | ref NDCG@20 | {name} NDCG@20 | difference | "
          f"ref MRR | {name} MRR |")
    print("|---|---|---|---|---|---|---|---|---|")
    diffs: list[tuple[str, float]] = []
    for r in shared:
        e, v, f = r["epoch"], r["valid"], ref[r["epoch"]]
        d = round(v["NDCG@20"], 4) - round(f["NDCG@20"], 4)  # as printed (a report table has 4 decimals)
        diffs.append((r["phase"], d))
        print(f"| {e} | {r['phase']} | {f['HR@20']:.4f} | {v['HR@20']:.4f} | {f['NDCG@20']:.4f} | "
              f"{v['NDCG@20']:.4f} | {d:+.4f} | {f['MRR']:.4f} | {v['MRR']:.4f} |")
    if diffs:
        mean = sum(d for _, d in diffs) / len(diffs)
        print(f"\nshared epochs {shared[0]['epoch']}-{shared[-1]['epoch']} ({len(diffs)}): mean NDCG@20 "
              f"difference {mean:+.4f} ({name} minus reference)")
        after = [d for p, d in diffs if p != "warmup"]
        if after:
            print(f"after the warm-up ({len(after)} epochs): mean difference {sum(after) / len(after):+.4f}")
        else:
            print("no shared epoch after the warm-up yet")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        last = max(r["epoch"] for r in recs)
        ref_ep = [e for e in sorted(ref) if e <= max(last, 0) + 5]
        ax.plot(ref_ep, [ref[e]["NDCG@20"] for e in ref_ep], marker=".", label=f"reference: {Path(args.reference).name}")
        ax.plot([r["epoch"] for r in recs], [r["valid"]["NDCG@20"] for r in recs], marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid NDCG@20")
        ax.set_title(f"{name} against the reference run: validation NDCG@20")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        write_sidecar(args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
