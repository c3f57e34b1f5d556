#!/usr/bin/env python
"""A/B of one post-warm-up FENRec training step: a baseline commit against the working tree.

    .venv/bin/python bench/bench_step.py [--baseline REV] [--steps 40] [--threads 2]

The baseline's ``fenrec_dist`` is extracted with ``git archive`` into a temporary package
``fenrec_dist_base``; both packages train their own copy of the same initial SASRec on the
same Beauty batches (hard + noise negatives on, epoch 0 with ``warmup_epochs=0``), one
``train_epoch`` call per batch, the two arms interleaved and their order alternated, with
the same dropout seed per step. Timings on a shared machine are noisy, so the paired
per-step ratio (new / baseline) is the number to read; the process CPU-time ratio is the
steadier one when other jobs share the cores (run with OMP_WAIT_POLICY=PASSIVE). The losses of the two arms are
compared step by step too: equal math keeps them equal to float tolerance. Writes
bench/results/step.json.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _result import write_result  # noqa: E402  (bench/ is the script's own folder)

BASELINE = "e5ddba1"  # the last commit before the step speed-ups


def extract_baseline(rev: str, dest: Path) -> None:
    """``rev``'s fenrec_dist as the importable package ``fenrec_dist_base`` under ``dest``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fenrec_dist"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    pkg = dest / "fenrec_dist"
    for f in pkg.rglob("*.py"):
        f.write_text(re.sub(r"\bfenrec_dist\b", "fenrec_dist_base", f.read_text()))
    pkg.rename(dest / "fenrec_dist_base")


class Arm:
    """One package's model, optimizer and loss, stepping through given batches."""

    def __init__(self, pkg: str, cfg_path: str, overrides: list[str], data_dir: str, state: dict | None,
                 centroids) -> None:  # type: ignore[no-untyped-def]
        import torch

        mod = lambda name: importlib.import_module(f"{pkg}.{name}")  # noqa: E731
        self.torch = torch
        cfg = mod("config").load_config(cfg_path, [f"data.path={data_dir}", "negatives.warmup_epochs=0",
                                                   "train.progress=false"] + overrides)
        self.cfg = cfg
        self.data = mod("data.dataset").load_prepared(data_dir, max_len=cfg.data.max_len)
        self.device = torch.device("cpu")
        self.model = mod("train.single").build_model(cfg, self.data, self.device)
        if state is not None:
            self.model.load_state_dict(state)
        self.loop = mod("train.loop")
        make_adam = getattr(self.loop, "make_adam", None)  # the package's own optimizer, where it has one
        self.opt = (make_adam(self.model.parameters(), cfg.train.lr) if make_adam is not None
                    else torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, foreach=True))
        self.step = self.loop.torch_step(self.model, self.opt)
        self.loss_fn = mod("losses.fenrec").FENRecLoss(cfg.loss, cfg.negatives)
        self.partners = mod("train.batches").PartnerIndex.build(self.data.train.target, self.data.num_items)
        self.intents = mod("intents").IntentClusters(centroids) if centroids is not None else None

    def run(self, batch, seed: int) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
        self.torch.manual_seed(seed)  # dropout draws
        t0, c0 = time.perf_counter(), time.process_time()
        res = self.loop.train_epoch(self.model, self.model, self.step, self.data.train, self.partners, self.data.train,
                                    [batch], self.loss_fn, seed, self.intents, self.cfg.train.seed, self.device)
        return time.perf_counter() - t0, time.process_time() - c0, res.losses


def prepared_arm(data: str, config: str, overrides: list[str] | None = None) -> Arm:
    """An Arm of this checkout's package on ``data`` (a raw dataset file) prepared into a temporary
    directory; the prepared tables are loaded into memory, so the directory is gone on return."""
    from fenrec_dist.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepare(data, Path(tmp) / "data")
        return Arm("fenrec_dist", config, list(overrides or []), str(Path(tmp) / "data"), None, None)


def twin_arms(data: str, config: str, overrides: list[str] | None = None) -> tuple[Arm, Arm]:
    """Two Arms of this checkout's package on ``data`` (prepared once) with the same initial
    model and the same intents of that model (``fit_intents``): the two sides of an A/B."""
    from fenrec_dist.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepare(data, Path(tmp) / "data")
        data_dir = str(Path(tmp) / "data")
        first = Arm("fenrec_dist", config, list(overrides or []), data_dir, None, None)
        centroids = fit_intents(first)
        second = Arm("fenrec_dist", config, list(overrides or []), data_dir, first.model.state_dict(), centroids)
    return first, second


def fit_intents(arm: Arm):  # type: ignore[no-untyped-def]
    """k-means intents of ``arm``'s initial model over the training set; sets ``arm.intents``
    and returns the centroids (to hand to another arm)."""
    from fenrec_dist.intents import IntentClusters
    from fenrec_dist.train.loop import embed

    reprs = embed(arm.model, arm.data.train.inputs, arm.cfg.intents.batch_size, arm.device)
    centroids = IntentClusters.fit(reprs, arm.cfg.intents.k, arm.cfg.intents.niter, seed=0).centroids
    arm.intents = IntentClusters(centroids)
    return centroids


def epoch0_batches(arm: Arm) -> list:
    """Epoch 0's batches of ``arm``'s training set (seed 0; length-grouped when the config's
    ``train.length_grouping`` is on)."""
    from fenrec_dist.train.batches import epoch_batches, epoch_rng

    return epoch_batches(arm.data.train.input_len, arm.cfg.train.batch_size, epoch_rng(0, 0),
                         arm.cfg.train.length_grouping,
                         arm.cfg.train.length_bucket_batches)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "step.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import numpy as np
    import torch

    from fenrec_dist.data.prepare import prepare

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        extract_baseline(args.baseline, Path(tmp))
        sys.path.insert(0, tmp)
        prepare(args.data, Path(tmp) / "data")
        data_dir = str(Path(tmp) / "data")
        new = Arm("fenrec_dist", args.config, args.overrides, data_dir, None, None)
        centroids = fit_intents(new)
        base = Arm("fenrec_dist_base", args.config, args.overrides, data_dir, new.model.state_dict(), centroids)
        batches = epoch0_batches(new)
        times: dict[str, list[float]] = {"baseline": [], "new": []}
        cpu: dict[str, list[float]] = {"baseline": [], "new": []}
        loss_diff = 0.0
        for i in range(args.warm + args.steps):
            b = batches[i % len(batches)]
            arms = [("baseline", base), ("new", new)]
            if i % 2:
                arms.reverse()
            out = {}
            for name, arm in arms:
                dt, dc, losses = arm.run(b, seed=i)
                out[name] = losses
                if i >= args.warm:
                    times[name].append(dt)
                    cpu[name].append(dc)
            loss_diff = max(loss_diff, max(abs(out["new"][k] - out["baseline"][k]) / max(1.0, abs(out["baseline"][k]))
                                           for k in out["new"]))
    ratios = [n / b for n, b in zip(times["new"], times["baseline"])]
    res = {
        "command": " ".join(sys.argv), "baseline": args.baseline, "threads": args.threads, "steps": args.steps,
        "ms_per_step_median": {k: round(1000 * statistics.median(v), 1) for k, v in times.items()},
        "ms_per_step_min": {k: round(1000 * min(v), 1) for k, v in times.items()},
        "ratio_new_over_baseline_median_of_pairs": round(statistics.median(ratios), 3),
        "ratio_new_over_baseline_of_sums": round(sum(times["new"]) / sum(times["baseline"]), 3),
        "cpu_ms_per_step_median": {k: round(1000 * statistics.median(v), 1) for k, v in cpu.items()},
        "cpu_ratio_new_over_baseline_of_sums": round(sum(cpu["new"]) / sum(cpu["baseline"]), 3),
        "max_relative_loss_difference": float(f"{loss_diff:.3g}"),
        "mean_input_len": float(np.mean([new.data.train.input_len[batches[i % len(batches)]].max()
                                          for i in range(args.warm, args.warm + args.steps)])),
    }
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
