#!/usr/bin/env python
"""One-call GPU check (issue 28): Beauty epochs through the CLI, and the step eager vs graphed.

    python bench/gpu/gpu_check.py [--device cuda] [--data Beauty.txt|PREPARED_DIR] [--budget-s 400]
        [--out FILE.json] [--tiny] [--dry-run]

Stages, each with its own time limit inside ``--budget-s`` (a stage that does not fit is
reported as skipped, never silently dropped):

1. ``preflight``: torch, CUDA, and the modules the CLI needs (yaml, tqdm, pyarrow); a missing one
   ends the check with a message naming the wheel to carry (``bench/gpu/fetch_wheels.sh``).
2. ``tests``: ``pytest tests/test_graph_step.py tests/test_buckets.py tests/test_torch_kmeans.py``
   (the CUDA-graph replays and the torch k-means on CUDA run only on a GPU; FAISS comparisons
   only with faiss installed).
3. ``data``: Beauty when found (``--data``, ``$FENREC_BEAUTY``, ``data/gpu_check/Beauty.txt``,
   ``shared/data/Beauty.txt``, ``../shared/data/Beauty.txt``), prepared with ``fenrec prepare``;
   else a Beauty-shaped synthetic log (``fenrec synth`` 22,363 users, 12,101 items, 8.9 a user).
4. ``cli_eager``, ``cli_graphs``, ``cli_graphs_full`` (and last ``cli_static``): ``python -m fenrec_dist.cli train
   --local`` with configs/beauty.yaml for 2 epochs (the first in the warm-up phase, the second
   with hard and noise negatives): as configured (eager, packed), with ``model.static_shapes``
   and ``model.cuda_graphs`` (the encoder replayed from CUDA graphs inside ``model(ids)``), and
   with the whole grid planned on the device (``model.token_multiple=0``: no host read per
   step), and with static shapes alone; phases, samples/s and epoch times read from the run's
   metrics.jsonl (``time``: cluster, train, eval, epoch). The CLI is the interface that
   survives the trainer's rewrite.
5. ``steps``: ``bench/gpu/step_bench.py``: eager, static, CUDA-graphed-encoder and whole-step
   captured steps on the same batches, both phases, kernel launches per step (profiler), and a
   whole hard-phase epoch graphed and eager.

GPU utilisation and memory are sampled with nvidia-smi every 0.25 s on a thread; each stage
reports its mean and peak (the CLI runs' peak memory is nvidia-smi's memory.used, CUDA context
included; the step bench also reports torch's max_memory_allocated). Prints ONE JSON line on
stdout (progress goes to stderr) and writes it to ``--out``. Exit 0 when every stage ran, 1
otherwise (the JSON then has ``errors``).

``--tiny`` (with ``--device cpu``) runs the same stages on a 300-user synthetic log with a small
model, for testing this script without a GPU (tests/test_gpu_check.py is not needed: run
``python bench/gpu/gpu_check.py --device cpu --tiny``). ``--dry-run`` prints the plan as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BEAUTY_CANDIDATES = ["data/gpu_check/Beauty.txt", "shared/data/Beauty.txt", "../shared/data/Beauty.txt"]
NEEDED = {"torch": "torch", "numpy": "numpy", "pyarrow": "pyarrow", "yaml": "pyyaml", "tqdm": "tqdm"}
TINY_SET = ["model.hidden=16", "data.max_len=10", "intents.k=8", "intents.niter=5", "train.batch_size=64",
            "model.token_multiple=64", "eval.batch_size=256", "train.threads=1"]


def log(line: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


class GpuSampler:
    """nvidia-smi utilisation.gpu (%) and memory.used (MiB) of GPU 0 every ``period`` s, with
    time.time() stamps; ``window(t0, t1)`` summarises the samples of a stage."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.samples: list[tuple[float, float, float]] = []
        self.smi = shutil.which("nvidia-smi")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "GpuSampler":
        if self.smi:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        cmd = [self.smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.is_set():
            t = time.time()
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()
                util, mem = (float(x) for x in out[0].split(","))
                self.samples.append((t, util, mem))
            except Exception:  # a failed read is a missing sample, not a failed check
                pass
            self._stop.wait(max(0.0, self.period - (time.time() - t)))

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        got = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not got:
            return {"gpu_util_mean": None, "gpu_util_samples": 0}
        utils = [u for u, _ in got]
        return {"gpu_util_mean": round(sum(utils) / len(utils), 1), "gpu_util_max": max(utils),
                "gpu_util_samples": len(utils), "gpu_mem_used_peak_mib": max(m for _, m in got)}


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t_start = time.monotonic()
        self.result: dict[str, Any] = {"check": "issue 28 gpu_check", "device_arg": args.device, "stages": {},
                                       "errors": []}
        self.sampler = GpuSampler()
        self.py = sys.executable
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), self.env.get("PYTHONPATH", "")] if p)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    # ------------------------------------------------------------------ helpers

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t_start)

    def error(self, stage: str, message: str) -> None:
        self.result["errors"].append(f"{stage}: {message}")
        log(f"ERROR {stage}: {message}")

    def run(self, stage: str, cmd: list[str], limit: float, cwd: Path | None = None) -> tuple[int, str, dict]:
        """Run ``cmd`` with at most ``limit`` seconds (and what the budget leaves, keeping 20 s for
        the summary); returns (rc, its stdout, the stage's timing and GPU figures). rc 124: timed
        out; -1: skipped (no budget left)."""
        limit = min(limit, self.left() - 20)
        info: dict[str, Any] = {"cmd": " ".join(cmd)}
        if limit < 5:
            info["skipped"] = "no budget left"
            self.error(stage, "skipped: no budget left")
            return -1, "", info
        log(f"{stage}: {' '.join(cmd)} (limit {limit:.0f} s)")
        t0 = time.time()
        try:
            p = subprocess.run(cmd, cwd=cwd or ROOT, env=self.env, capture_output=True, text=True, timeout=limit)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as exc:
            rc = 124
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        t1 = time.time()
        info.update({"rc": rc, "wall_s": round(t1 - t0, 2), "t0": round(t0, 3), "t1": round(t1, 3)})
        info.update(self.sampler.window(t0, t1))
        if err.strip():
            sys.stderr.write("".join(f"    {line}\n" for line in err.strip().splitlines()[-25:]))
        # a capture that fell back to eager, or any other warning, must show in the JSON
        notes = [line.strip()[:300] for line in err.splitlines()
                 if "GraphedEncoder:" in line or "CapturedStep:" in line or "Warning" in line]
        if notes:
            info["warnings"] = notes[:8]
        if rc != 0:
            tail = (err.strip().splitlines() or out.strip().splitlines() or [""])[-1]
            self.error(stage, f"exit {rc}{' (timed out)' if rc == 124 else ''}: {tail[:400]}")
        return rc, out, info

    # ------------------------------------------------------------------ stages

    def preflight(self) -> bool:
        missing = []
        for mod, wheel in NEEDED.items():
            try:
                __import__(mod)
            except ImportError:
                missing.append(wheel)
        import torch

        pre: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                               "cuda_available": torch.cuda.is_available(), "nvidia_smi": bool(self.sampler.smi)}
        try:
            import faiss  # noqa: F401

            pre["faiss"] = getattr(faiss, "__version__", "yes")
        except ImportError:
            pre["faiss"] = None
        if torch.cuda.is_available():
            pre["gpu"] = torch.cuda.get_device_name(0)
            pre["cuda"] = torch.version.cuda
        self.result["preflight"] = pre
        if missing:
            self.error("preflight", f"missing Python modules: {', '.join(missing)}; fetch their wheels into .whl/ with "
                                    f"bench/gpu/fetch_wheels.sh and carry .whl (gpu_check.sh installs them)")
            return False
        if self.args.device == "cuda" and not torch.cuda.is_available():
            self.error("preflight", f"--device cuda, but torch {torch.__version__} sees no CUDA device")
            return False
        return True

    def tests(self) -> None:
        cmd = [self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/test_graph_step.py",
               "tests/test_buckets.py", "tests/test_torch_kmeans.py"]
        rc, out, info = self.run("tests", cmd, 150)
        info["summary"] = (out.strip().splitlines() or [""])[-1][:300]
        self.result["stages"]["tests"] = info

    def find_beauty(self) -> Path | None:
        cands = [self.args.data] if self.args.data else []
        if os.environ.get("FENREC_BEAUTY"):
            cands.append(os.environ["FENREC_BEAUTY"])
        if not self.args.tiny:
            cands += BEAUTY_CANDIDATES
        for c in cands:
            p = Path(c) if Path(c).is_absolute() else ROOT / c
            if p.exists():
                return p
        return None

    def data(self, work: Path) -> Path | None:
        cli = [self.py, "-m", "fenrec_dist.cli"]
        src = self.find_beauty()
        info: dict[str, Any] = {}
        if src is not None and src.is_dir():
            info["source"] = f"prepared {src}"
            self.result["data"] = info
            return src
        out = work / "data"
        if src is not None:
            info["source"] = f"beauty {src}"
            rc, _, run = self.run("data", cli + ["prepare", str(src), "--out", str(out)], 120)
        else:
            users, items = (300, 60) if self.args.tiny else (22363, 12101)
            info["source"] = f"synthetic {users} users, {items} items (no Beauty.txt found)"
            rc, _, run = self.run("data", cli + ["synth", "--users", str(users), "--items", str(items), "--mean-length",
                                                 "8.9", "--out", str(work / "log.csv")], 120)
            if rc == 0:
                extra = ["--max-len", "10"] if self.args.tiny else []
                rc, _, run = self.run("data", cli + ["prepare", str(work / "log.csv"), "--out", str(out)] + extra, 120)
        info.update({k: run.get(k) for k in ("rc", "wall_s")})
        manifest = out / "manifest.json"
        if rc == 0 and manifest.exists():
            m = json.loads(manifest.read_text())
            info.update({k: m.get(k) for k in ("users", "items", "interactions", "train_samples")})
        self.result["data"] = info
        return out if rc == 0 else None

    def overrides(self, data: Path) -> list[str]:
        s = [f"data.path={data}", f"train.device={self.args.device}", "train.epochs=2", "negatives.warmup_epochs=1",
             "train.progress=false"]
        return s + (TINY_SET if self.args.tiny else [])

    def cli_run(self, name: str, data: Path, work: Path, extra: list[str]) -> None:
        run_dir = work / f"run_{name}"
        cmd = [self.py, "-m", "fenrec_dist.cli", "train", "--local", "--config", str(ROOT / "configs" / "beauty.yaml"),
               "--out", str(run_dir)]
        for s in self.overrides(data) + extra:
            cmd += ["--set", s]
        rc, out, info = self.run(name, cmd, 240 if not self.args.tiny else 180)
        epochs = []
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                if not line.strip():
                    continue
                r = json.loads(line)
                epochs.append({"epoch": r.get("epoch"), "phase": r.get("phase"),
                               "samples_per_s": round(float(r.get("samples_per_s", 0.0)), 1),
                               "time_s": {k: round(float(v), 3) for k, v in (r.get("time") or {}).items()},
                               "valid": {k: round(float(v), 4) for k, v in (r.get("valid") or {}).items()
                                         if k in ("NDCG@20", "HR@20")}})
        info["epochs"] = epochs
        final = run_dir / "final.json"
        if final.exists():
            info["test"] = {k: round(float(v), 4) for k, v in json.loads(final.read_text()).get("test", {}).items()}
        if rc == 0 and not epochs:
            self.error(name, f"no epochs in {metrics}")
        self.result["stages"][name] = info

    def steps(self, data: Path, work: Path) -> None:
        out_json = work / "step_bench.json"
        cmd = [self.py, str(ROOT / "bench" / "gpu" / "step_bench.py"), "--data", str(data), "--device", self.args.device,
               "--out", str(out_json), "--steps", str(self.args.steps)]
        for s in [x for x in self.overrides(data) if not x.startswith(("data.path", "train.device"))]:
            cmd += ["--set", s]
        rc, out, info = self.run("steps", cmd, 200 if not self.args.tiny else 120)
        if out_json.exists():
            bench = json.loads(out_json.read_text())
            for group in ("steps", "epoch"):
                for phase, v in bench.get(group, {}).items():
                    items = v.items() if group == "steps" else [(phase, v)]
                    for _, r in items:
                        if isinstance(r, dict) and "t0" in r:
                            r.update(self.sampler.window(r["t0"], r["t1"]))
            info["bench"] = bench
        self.result["stages"]["steps"] = info

    def summary(self) -> None:
        """The headline figures: phase times and samples/s per run, the graphed-vs-eager ratios,
        and a composed epoch (cluster + graphed training + the CLI's evaluation)."""
        st = self.result["stages"]
        head: dict[str, Any] = {}
        for name in ("cli_eager", "cli_graphs", "cli_graphs_full", "cli_static"):
            for e in st.get(name, {}).get("epochs", []):
                head[f"{name}_{e['phase']}"] = {"samples_per_s": e["samples_per_s"], **e["time_s"]}
            if name in st:
                head[f"{name}_gpu_util_mean"] = st[name].get("gpu_util_mean")
                head[f"{name}_gpu_mem_used_peak_mib"] = st[name].get("gpu_mem_used_peak_mib")
        bench = st.get("steps", {}).get("bench", {})
        for phase, vs in bench.get("steps", {}).items():
            for v, r in vs.items():
                head[f"step_{phase}_{v}_samples_per_s"] = r.get("samples_per_s")
            for v, r in vs.items():  # same batches in the same call: graphed_vs_eager_hard, ...
                if v != "eager" and r.get("speedup_vs_eager") is not None:
                    head[f"{v}_vs_eager_{phase}"] = r["speedup_vs_eager"]
        ep = bench.get("epoch", {})
        for v, r in ep.items():
            head[f"epoch_hard_train_{v}_s"] = r.get("seconds")
            head[f"epoch_hard_train_{v}_samples_per_s"] = r.get("samples_per_s")
            head[f"epoch_hard_train_{v}_peak_mem_mib"] = r.get("peak_mem_mib")
            head[f"epoch_hard_train_{v}_gpu_util_mean"] = r.get("gpu_util_mean")
        if "graphed" in ep and "eager" in ep and ep["graphed"].get("seconds"):
            head["epoch_train_graphed_vs_eager"] = round(ep["eager"]["seconds"] / ep["graphed"]["seconds"], 3)
        trains = {n: {e["phase"]: e["time_s"].get("train") for e in st.get(n, {}).get("epochs", [])}
                  for n in ("cli_eager", "cli_graphs", "cli_graphs_full", "cli_static")}
        for n in ("cli_graphs", "cli_graphs_full", "cli_static"):
            for phase in ("warmup", "hard"):
                a, b = trains["cli_eager"].get(phase), trains[n].get(phase)
                if a and b:
                    head[f"{n}_vs_eager_train_{phase}"] = round(a / b, 3)
        cluster = bench.get("cluster")
        evals = [e["time_s"].get("eval") for e in st.get("cli_eager", {}).get("epochs", []) if e["phase"] == "hard"]
        if cluster and "graphed" in ep and evals:
            head["cluster_s"] = round(cluster["embed_s"] + cluster["kmeans_s"], 3)
            head["composed_hard_epoch_graphed_s"] = round(head["cluster_s"] + ep["graphed"]["seconds"] + evals[0], 3)
        self.result["headline"] = head

    def main(self) -> int:
        args = self.args
        plan = ["preflight", "tests", "data", "cli_eager", "cli_graphs", "steps", "cli_graphs_full", "cli_static"]
        if args.dry_run:
            print(json.dumps({"plan": plan, "device": args.device, "budget_s": args.budget_s,
                              "beauty": str(self.find_beauty()), "tiny": args.tiny, "python": self.py}))
            return 0
        self.sampler.start()
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            if self.preflight():
                if not args.no_tests:
                    self.tests()
                data = self.data(work)
                if data is not None:
                    self.cli_run("cli_eager", data, work, [])
                    self.cli_run("cli_graphs", data, work, ["model.static_shapes=true", "model.cuda_graphs=true"])
                    self.steps(data, work)
                    self.cli_run("cli_graphs_full", data, work, ["model.static_shapes=true", "model.cuda_graphs=true",
                                                                 "model.token_multiple=0"])
                    self.cli_run("cli_static", data, work, ["model.static_shapes=true"])
            self.summary()
        except Exception as exc:  # the JSON line is still printed
            self.error("gpu_check", f"{type(exc).__name__}: {exc}")
        finally:
            self.sampler.stop()
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
        self.result["total_s"] = round(time.monotonic() - self.t_start, 1)
        line = json.dumps(self.result)
        print(line, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(self.result, indent=2) + "\n")
        return 1 if self.result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="One-call GPU check of issue 28 (one JSON line on stdout).")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--data", help="Beauty.txt (ICSRec format) or a prepared directory")
    ap.add_argument("--budget-s", type=float, default=400.0, help="the whole check's time budget")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per variant and phase (step_bench.py)")
    ap.add_argument("--work", help="keep the work directory here (default: a temporary one, removed)")
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--tiny", action="store_true", help="a 300-user synthetic log and a small model (CPU testing)")
    ap.add_argument("--no-tests", action="store_true", help="skip the pytest stage")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    return Check(ap.parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
