#!/usr/bin/env python
"""One FENRec epoch on Beauty after the warm-up through Ray Train data-parallel workers.

    DS_ACCELERATOR=cpu .venv/bin/python bench/scale/bench_epoch_workers.py [--workers 2] [--single]

The same epoch as ``bench/epoch/bench_epoch.py`` (configs/beauty.yaml, ``negatives.warmup_epochs=0``,
hard + noise negatives, the clustering pass and validation), run by ``--workers`` Ray Train
workers with one CPU and one torch thread each and the global batch of the config
(256 = W x 256 / W, negatives gathered across workers). Each worker computes the contrastive
rows of its own samples (``losses/fenrec.py``), so the work divides between them.

Reports each phase as the workers timed it (cluster, train, eval, epoch), the wall time of the
whole job (Ray start-up included), peak resident memory sampled every 250 ms (of each
training worker, and of the whole process tree: driver, Ray's daemons, workers), and the CPU
seconds and niceness of each process of that tree (sampled every 5 s, so a process's last
few seconds may be missing), and the cores each kind of process used in the middle of the
job (30-80% of its wall time, inside the training phase).
``--single`` first runs ``bench/epoch/bench_epoch.py --threads W`` in a subprocess, so the two paths
are timed in the same run on the same machine. ``--baseline REV`` first runs this script on
REV's code (a temporary ``git worktree``, its package first on PYTHONPATH, which Ray's workers
inherit) and reports the two 2-worker epochs side by side. Writes bench/scale/results/epoch_workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def process_label(cmdline: list[str]) -> str:
    """A short name for a process of the tree: the Ray actor or daemon, or the script run."""
    if not cmdline:
        return "?"
    first = cmdline[0]
    if first.startswith("ray::"):
        return first.split()[0]
    name = Path(first.split()[0]).name
    if name.startswith("python") and len(cmdline) > 1:
        arg = next((a for a in cmdline[1:] if not a.startswith("-")), cmdline[1])
        return f"python {Path(arg).name}"
    return name


class TreeMemory:
    """Samples the resident memory of this process and all its descendants, and the CPU
    time each of them used (by ``process_label``), with its niceness."""

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.peak_tree_mib = 0.0
        self.peak_worker_mib: dict[int, float] = {}
        self.labels: dict[int, tuple[str, int]] = {}  # pid -> (process_label, niceness)
        self.cpu_trace: dict[int, list[tuple[float, float]]] = {}  # pid -> [(seconds since start, CPU seconds)]
        self.t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = self.psutil.Process()
        procs: dict[int, tuple[object, str]] = {}  # pid -> (Process, first word of its command line)
        tick = 0
        while not self._stop.is_set():
            if tick % 20 == 0:  # new processes are looked for every 20 samples: the walk costs CPU
                for p in [me] + me.children(recursive=True):
                    try:  # names are re-read: a Ray worker renames itself once it runs an actor
                        cmdline = p.cmdline()
                        cpu = p.cpu_times()
                        procs[p.pid] = (p, " ".join(cmdline[:1]))
                        self.labels[p.pid] = (process_label(cmdline), p.nice())
                        self.cpu_trace.setdefault(p.pid, []).append((time.perf_counter() - self.t0,
                                                                     cpu.user + cpu.system))
                    except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                        continue
            total = 0.0
            for pid, (p, name) in list(procs.items()):
                try:
                    rss = p.memory_info().rss / 2**20  # type: ignore[attr-defined]
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    del procs[pid]
                    continue
                total += rss
                if "RayTrainWorker" in name:
                    self.peak_worker_mib[pid] = max(self.peak_worker_mib.get(pid, 0.0), rss)
            self.peak_tree_mib = max(self.peak_tree_mib, total)
            tick += 1
            self._stop.wait(self.interval)

    def cpu_by_label(self) -> dict[str, dict[str, float]]:
        """CPU seconds (as last sampled, every 5 s) and niceness per process label, largest first."""
        out: dict[str, dict[str, float]] = {}
        for pid, trace in self.cpu_trace.items():
            label, nice = self.labels[pid]
            row = out.setdefault(label, {"cpu_s": 0.0, "processes": 0, "nice": nice})
            row["cpu_s"] = round(row["cpu_s"] + trace[-1][1], 1)
            row["processes"] += 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))

    def cores_in_window(self, start: float, end: float) -> dict[str, float]:
        """Average cores used per process label between ``start`` and ``end`` seconds after the
        sampler started: each process's CPU-time delta between its first and last sample inside
        the window, over the time between those samples."""
        out: dict[str, float] = {}
        for pid, trace in self.cpu_trace.items():
            inside = [(t, c) for t, c in trace if start <= t <= end]
            if len(inside) < 2:
                continue
            label = self.labels[pid][0]
            (t_a, c_a), (t_b, c_b) = inside[0], inside[-1]
            out[label] = out.get(label, 0.0) + (c_b - c_a) / (t_b - t_a)
        return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def __enter__(self) -> "TreeMemory":
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_baseline(args: argparse.Namespace) -> dict:
    """This script's 2-worker epoch on ``args.baseline``'s code, in a temporary git worktree."""
    return run_at_revision(args.baseline, "scale/bench_epoch_workers.py",
                           ["--workers", str(args.workers), "--data", str(Path(args.data).resolve())]
                           + [x for o in args.overrides for x in ("--set", o)], config=args.config)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--single", action="store_true", help="also run bench_epoch.py (one process) first")
    ap.add_argument("--baseline", default="", help="a git revision to time first, on the same data")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "epoch_workers.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    baseline = run_baseline(args) if args.baseline else None
    single = None
    if args.single:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "epoch.json"
            subprocess.run([sys.executable, str(ROOT / "bench" / "epoch" / "bench_epoch.py"), "--threads", str(args.workers),
                            "--data", args.data, "--config", args.config, "--out", str(out)]
                           + [x for o in args.overrides for x in ("--set", o)], check=True)
            single = json.loads(out.read_text())

    import ray

    from fenrec_dist.config import load_config
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.distributed.driver import run_distributed
    from fenrec_dist.train.report import read_metrics

    w = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args.data, Path(tmp) / "data")
        base = load_config(args.config, [])
        cfg = load_config(args.config, [
            f"data.path={tmp}/data", "negatives.warmup_epochs=0", "train.epochs=1", "train.progress=false",
            f"train.batch_size={base.train.batch_size // w}", f"distributed.num_workers={w}",
            "distributed.cpus_per_worker=1", "train.threads=1",
        ] + args.overrides)
        lines: list[str] = []
        t0 = time.perf_counter()
        with TreeMemory() as mem:
            run_distributed(cfg, Path(tmp) / "run", log=lines.append)
            wall = time.perf_counter() - t0
            ray.shutdown()
        rec = read_metrics(Path(tmp) / "run")[0]
    res = {
        "command": " ".join(sys.argv), "workers": w, "threads_per_worker": 1,
        "global_batch": cfg.train.batch_size * w,
        "phases_s": {k: round(v, 1) for k, v in rec["time"].items()},
        "samples_per_s": round(rec["samples_per_s"], 1),
        "job_wall_s": round(wall, 1), "worker_startup_s": {k: round(v, 2) for k, v in rec.get("startup", {}).items()},
        "peak_rss_mib_per_worker": sorted(round(v) for v in mem.peak_worker_mib.values()),
        "peak_rss_mib_process_tree": round(mem.peak_tree_mib),
        "cpu_s_by_process": mem.cpu_by_label(),
        # the middle of the job is inside the training phase (start-up and the final
        # evaluation are outside it): the cores each kind of process used then
        "cores_by_process_mid_job": mem.cores_in_window(0.3 * wall, 0.8 * wall),
        "valid_after_1_epoch": rec["valid"], "loss": rec["loss"],
    }
    if baseline is not None:
        res["baseline"] = {"rev": args.baseline, **{k: baseline[k] for k in (
            "phases_s", "samples_per_s", "peak_rss_mib_per_worker", "peak_rss_mib_process_tree")}}
        res["epoch_ratio_new_over_baseline"] = round(res["phases_s"]["epoch"] / baseline["phases_s"]["epoch"], 3)
        res["train_ratio_new_over_baseline"] = round(res["phases_s"]["train"] / baseline["phases_s"]["train"], 3)
    if single is not None:
        res["single_process"] = {k: single[k] for k in ("threads", "phases_s", "samples_per_s", "peak_rss_mib")}
        res["epoch_speedup_vs_single"] = round(single["phases_s"]["epoch"] / res["phases_s"]["epoch"], 2)
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
