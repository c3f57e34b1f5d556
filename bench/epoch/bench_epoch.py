#!/usr/bin/env python
"""One FENRec epoch on Beauty after the warm-up (hard + noise negatives on), by phase.

    .venv/bin/python bench/epoch/bench_epoch.py [--data ../shared/data/Beauty.txt] [--threads 2] [--set k=v ...]
                                          [--baseline REV]

Prepares Beauty into a temp dir, then runs one epoch of the single-process path
(``train.local.train_local``, the one trainer; ``train.single`` at a baseline revision from
before it) with ``negatives.warmup_epochs=0`` (so the epoch takes the post-warm-up path), including the
intent clustering pass and validation, and reports each phase, samples/s and the peak RSS
of the whole process, also per phase (a thread samples the resident size every 50 ms and
the phase functions are wrapped to label the samples: setup = loading before the first
phase, between = the time after each phase until the next). ``--baseline REV`` first runs
the same epoch on REV's code (``bench/_baseline.py``: a temporary git worktree) and adds
its phases, peak RSS and the ratios. Writes bench/epoch/results/epoch.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _baseline import run_at_revision  # noqa: E402
from _result import write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--baseline", default="", help="a git revision to time first, on the same data")
    ap.add_argument("--out", default=str(ROOT / "bench" / "epoch" / "results" / "epoch.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    baseline = None
    if args.baseline:
        baseline = run_at_revision(args.baseline, "epoch/bench_epoch.py",
                                   ["--threads", str(args.threads), "--data", str(Path(args.data).resolve())]
                                   + [x for o in args.overrides for x in ("--set", o)], config=args.config)
    import torch

    from fenrec_dist.config import load_config
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.train.memory import resident_mib

    phase_peak: dict[str, float] = {}
    phase = ["prepare"]

    def label(name, fn):  # type: ignore[no-untyped-def]
        """``fn`` with the samples taken while it runs labelled ``name`` (a str, or a callable
        returning one at call time)."""
        def wrapped(*a, **k):  # type: ignore[no-untyped-def]
            phase[0] = name() if callable(name) else name
            try:
                return fn(*a, **k)
            finally:
                phase[0] = "between"  # checkpoint saving, batching, logging after a phase
        return wrapped

    try:  # the one trainer (train/trainer.py) in one process (train/local.py)
        import fenrec_dist.train.local as local
        import fenrec_dist.train.trainer as trainer

        committed = [False]  # the epoch's record is written: evaluations from here on are the final scoring
        commit = local.LocalRuntime.commit

        def commit_epoch(self, *a, **k):  # type: ignore[no-untyped-def]
            try:
                return commit(self, *a, **k)
            finally:
                committed[0] = True

        local.LocalRuntime.commit = commit_epoch  # type: ignore[method-assign]
        trainer.epoch_intents = label("cluster", trainer.epoch_intents)
        trainer.train_epoch = label("train", trainer.train_epoch)
        trainer.evaluate = label(lambda: "final_test" if committed[0] else "eval", trainer.evaluate)
        train_run = local.train_local
    except ModuleNotFoundError as exc:  # a baseline revision from before it (--baseline): train/single.py
        if exc.name != "fenrec_dist.train.local":
            raise
        import fenrec_dist.train.single as single

        single.epoch_representations = label("cluster", single.epoch_representations)
        single.train_epoch = label("train", single.train_epoch)
        single.evaluate_split = label("eval", single.evaluate_split)
        single.finish = label("final_test", single.finish)
        train_run = single.train_single
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            r = resident_mib()
            phase_peak[phase[0]] = max(phase_peak.get(phase[0], 0.0), r)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prepare(args.data, Path(tmp) / "data")
        t_prep = time.perf_counter() - t0
        cfg = load_config(args.config, [f"data.path={tmp}/data", "negatives.warmup_epochs=0", "train.epochs=1",
                                        "train.progress=false", f"train.threads={args.threads}"] + args.overrides)
        t0 = time.perf_counter()
        phase[0] = "setup"
        train_run(cfg, Path(tmp) / "run", log=lambda *_: None)
        total = time.perf_counter() - t0
        rec = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[0])
    stop.set()
    sampler.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    out = {
        "command": " ".join(sys.argv), "threads": args.threads, "prepare_s": round(t_prep, 2),
        "phases_s": {k: round(v, 1) for k, v in rec["time"].items()},
        "samples_per_s": round(rec["samples_per_s"], 1), "run_total_s": round(total, 1),
        "peak_rss_mib": round(peak, 0), "peak_rss_mib_by_phase": {k: round(v) for k, v in phase_peak.items()},
        "trim_every": cfg.train.trim_every, "valid_after_1_epoch": rec["valid"], "loss": rec["loss"],
        "reference_here_s": {"train": 314, "cluster": "26-30", "eval": 7, "epoch": 350, "peak_rss_gib": 5.3},
    }
    if baseline is not None:
        out["baseline"] = {"rev": args.baseline, **{k: baseline[k] for k in (
            "phases_s", "samples_per_s", "peak_rss_mib", "peak_rss_mib_by_phase", "trim_every")}}
        out["epoch_ratio_new_over_baseline"] = round(out["phases_s"]["epoch"] / baseline["phases_s"]["epoch"], 3)
        out["train_ratio_new_over_baseline"] = round(out["phases_s"]["train"] / baseline["phases_s"]["train"], 3)
    return write_result(args.out, out)


if __name__ == "__main__":
    sys.exit(main())
