"""The driver: builds and fits the Ray Train TorchTrainer (``fenrec train``, ``ray_job.py``).

With no cluster address an embedded local Ray is started, sized with room beside the
workers (a Ray cluster whose every CPU a worker holds can deadlock its own tasks). With ``RAY_ADDRESS`` or ``--address`` it joins that cluster.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fenrec_dist.config import Config, ConfigError, dump_yaml, to_dict
from fenrec_dist.train.checkpoint import atomic_write_json, atomic_write_text
from fenrec_dist.train.report import MetricsLog, drop_final, plot_curves, progress_line


def worker_env() -> dict[str, str]:
    """Environment the workers need (DeepSpeed on CPU, its op cache, quiet Ray)."""
    env = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    for k in ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "OMP_NUM_THREADS", "FENREC_FAULT_AT"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env


def local_num_cpus(cfg: Config) -> int:
    """Logical CPUs for an embedded Ray: the workers' share plus room for Ray's own tasks."""
    return int(math.ceil(cfg.distributed.num_workers * cfg.distributed.cpus_per_worker)) + 2


def init_ray(cfg: Config, address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS), else start an embedded local Ray.

    ``num_cpus`` sizes the embedded Ray (default ``local_num_cpus(cfg)``; a Tune sweep
    passes room for its concurrent trials). The dashboard stays on: Tune needs it to
    clean up trials that a scheduler stops.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env(),
                   "worker_process_setup_hook": "fenrec_dist.distributed.worker_setup.quiet_worker_logs"}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        if not cfg.distributed.use_gpu:
            runtime_env["env_vars"].setdefault("DS_ACCELERATOR", "cpu")
        runtime_env["worker_process_setup_hook"] = "fenrec_dist.distributed.worker_setup.quiet_local_worker_logs"
        ray.init(address="local", num_cpus=num_cpus or local_num_cpus(cfg), object_store_memory=256 * 1024 * 1024,
                 runtime_env=runtime_env, log_to_driver=True)


def check_embedded_gpus(cfg: Config, address: str | None = None) -> None:
    """An embedded Ray has this machine's GPUs only: a run whose workers ask for more would wait
    for them forever, so it is a ConfigError before anything starts. Nothing is checked when a
    cluster is joined (its autoscaler may add GPU nodes) or Ray is already up. One run (or one
    sweep trial) needs ``distributed.num_workers`` GPUs at once.
    """
    import ray

    if not cfg.distributed.use_gpu or address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return
    import torch

    need = cfg.distributed.num_workers
    have = torch.cuda.device_count()
    if have < need:
        raise ConfigError(f"distributed.use_gpu: true asks for {need} GPU(s) (one per worker, distributed.num_workers="
                          f"{cfg.distributed.num_workers}), but this machine has {have}, and the embedded Ray would "
                          f"wait for them forever; set distributed.use_gpu=false, lower distributed.num_workers, or "
                          f"join a cluster with GPUs (--address)")


def train_files(data_path: str) -> list[str]:
    from fenrec_dist.data.dataset import read_manifest

    m = read_manifest(data_path)
    return [str(Path(data_path) / s["file"]) for s in m["shards"]]


def resolve_run(cfg: Config, run_dir: str | Path | None) -> tuple[Path, str, str]:
    """(local run directory, Ray run name, Ray storage path).

    ``run_dir`` (``--out``) wins; else ``distributed.storage_path``/``distributed.name``
    (name derived from the data path and time when empty).
    """
    if run_dir is not None:
        run_dir = Path(run_dir).resolve()
        return run_dir, run_dir.name, str(run_dir.parent)
    name = cfg.distributed.name or f"{Path(cfg.data.path).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = cfg.distributed.storage_path or str(Path("runs").resolve())
    local = Path(storage) / name if "://" not in storage else Path("runs").resolve() / name
    return local, name, storage


def make_callback(run_dir: Path, cfg: Config):  # type: ignore[no-untyped-def]
    from ray.train import UserCallback

    class ProgressCallback(UserCallback):
        """Driver-side progress line, metrics.jsonl and TensorBoard events per reported epoch;
        final.json from the workers' final report."""

        def __init__(self) -> None:
            self.log: MetricsLog | None = None

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            rec = metrics[0] if metrics else {}
            if not rec:
                return
            if rec.get("final"):  # the workers' scoring of the best weights
                final = {k: v for k, v in rec.items() if k != "final"}
                final["checkpoint"] = str(checkpoint.path) if checkpoint is not None else None
                atomic_write_json(run_dir / "final.json", final)
                return
            if self.log is None:
                self.log = MetricsLog(run_dir)
                self.log.truncate(int(rec["epoch"]))
                drop_final(run_dir, log=lambda line: print(line, flush=True))  # a resumed finished run trains on
            self.log.write(rec)
            print(progress_line(rec, cfg.train.epochs, cfg.eval.metric, cfg.train.patience), flush=True)

    return ProgressCallback()


@dataclass(frozen=True)
class RunPaths:
    """Where a run lives: its local directory, Ray Train run name and storage path."""

    local_dir: Path
    name: str
    storage: str


def prepare_run(cfg: Config, run_dir: str | Path | None = None) -> RunPaths:
    """Resolve the run's paths, make ``data.path`` absolute and write the resolved config.yaml
    (never under a process that trains the directory now: ``RunInUseError``)."""
    from fenrec_dist.data.dataset import read_manifest
    from fenrec_dist.train.runlock import ensure_idle

    local_dir, name, storage = resolve_run(cfg, run_dir)
    ensure_idle(local_dir)
    read_manifest(cfg.data.path)  # a DataError naming the file before the run directory exists
    cfg.data.path = str(Path(cfg.data.path).resolve())
    local_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(local_dir / "config.yaml", dump_yaml(cfg))
    return RunPaths(local_dir, name, storage)


def build_trainer(cfg: Config, run_dir: RunPaths | str | Path | None = None, *,
                  extra_callbacks: Sequence[Any] = ()) -> tuple[Any, RunPaths]:
    """The TorchTrainer of one run (Ray must be up): ``fenrec train`` and every Tune trial.

    ``run_dir`` is a ``prepare_run`` result, or a directory to prepare (None: derived
    from ``distributed.*``). ``extra_callbacks`` are Ray Train ``UserCallback``s added
    after the progress callback (a Tune trial adds its report-to-Tune callback).
    Returns (trainer, paths).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fenrec_dist.distributed.ray_runtime import train_fn_per_worker

    run = run_dir if isinstance(run_dir, RunPaths) else prepare_run(cfg, run_dir)
    scaling = ScalingConfig(num_workers=cfg.distributed.num_workers, use_gpu=cfg.distributed.use_gpu,
                            resources_per_worker={"CPU": cfg.distributed.cpus_per_worker})
    run_config = RunConfig(
        name=run.name, storage_path=run.storage,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.distributed.keep_checkpoints),
        failure_config=FailureConfig(max_failures=cfg.distributed.max_failures),
        callbacks=[make_callback(run.local_dir, cfg), *extra_callbacks],
        logging_config=LoggingConfig(log_level=os.environ.get("FENREC_RAY_TRAIN_LOG_LEVEL", "WARNING")),
    )
    # No Ray Data: each worker reads its own target-partitioned Parquet shards with pyarrow
    # (data.shards), a pure function of the manifest and the world size (docs/architecture.md).
    trainer = TorchTrainer(train_fn_per_worker, train_loop_config={"cfg": to_dict(cfg)},
                           scaling_config=scaling, run_config=run_config)
    return trainer, run


def finish_run(result: Any, run: RunPaths, cfg: Config) -> dict[str, Any]:
    """curves.png, and final.json's content (written by the progress callback from the workers'
    final report)."""
    final_path = run.local_dir / "final.json"
    if result.error is not None or not final_path.is_file():
        raise RuntimeError(f"training ended without final metrics (error: {result.error})")
    plot_curves(run.local_dir, cfg.eval.metric)
    return json.loads(final_path.read_text())


def run_distributed(cfg: Config, run_dir: str | Path | None = None, address: str | None = None,
                    log=print) -> dict[str, Any]:
    """Fit the TorchTrainer; returns final.json's content (best epoch, valid, test)."""
    from fenrec_dist.train.runlock import run_lock

    check_embedded_gpus(cfg, address)
    run = prepare_run(cfg, run_dir)
    with run_lock(run.local_dir):  # one training process per run directory
        t0 = time.perf_counter()
        init_ray(cfg, address)
        t_ray = time.perf_counter() - t0
        trainer, run = build_trainer(cfg, run)
        log(f"ray up in {t_ray:.1f}s; training {cfg.distributed.num_workers} worker(s) -> {run.storage}/{run.name}")
        result = trainer.fit()
        final = finish_run(result, run, cfg)
    log("test  " + " ".join(f"{k}={v:.4f}" for k, v in final["test"].items()) + f"  (best epoch {final['best_epoch']})")
    return final
