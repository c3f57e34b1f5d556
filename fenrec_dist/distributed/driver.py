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
from fenrec_dist.data.errors import DataError
from fenrec_dist.train.checkpoint import atomic_write_json, atomic_write_text
from fenrec_dist.train.report import PREVIOUS, MetricsLog, drop_final, plot_curves, progress_line, read_metrics


START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train's wait for a placement group
JOB_FILE = ".fenrec.ray_job"  # RUN_DIR/: "JOB_ID NODE_ID" of the Ray job that trains (trained) the run
LOST_DRIVER_WAIT_S = 60.0  # how long a resubmitted run waits for a lost driver's actors to end
TRAIN_ACTORS = ("TrainController", "RayTrainWorker")


def say(line: str) -> None:
    """print, flushed: the driver's lines keep their place among Ray's (stderr) in a job's log."""
    print(line, flush=True)


def worker_env() -> dict[str, str]:
    """Environment the workers need (DeepSpeed on CPU, its op cache, quiet Ray)."""
    env = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    for k in ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "OMP_NUM_THREADS", "FENREC_FAULT_AT", "FENREC_FAULT_HOLD_S"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    from fenrec_dist.distributed.storage import storage_env

    return {**env, **storage_env()}  # s3:// endpoint and region; never the keys (Ray logs runtime envs)


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
        if "://" not in address:  # Ray Train's own actors ask the state API: this cluster, not another one here
            runtime_env["env_vars"]["RAY_ADDRESS"] = address
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


def make_callback(run_dir: Path, cfg: Config, remote: Any = None):  # type: ignore[no-untyped-def]
    """The progress callback; ``remote`` (a ``storage.RunFiles``, s3:// storage) also receives
    metrics.jsonl and final.json, and its metrics.jsonl is the one a resumed run continues."""
    from ray.train import UserCallback

    class ProgressCallback(UserCallback):
        """Driver-side progress line, metrics.jsonl and TensorBoard events per reported epoch;
        final.json from the workers' final report."""

        def __init__(self) -> None:
            self.log: MetricsLog | None = None
            self.newest: str | None = None  # the storage path of the newest epoch's checkpoint

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            rec = dict(metrics[0]) if metrics else {}
            if not rec:
                return
            previous = rec.pop(PREVIOUS, None)
            if checkpoint is not None and not rec.get("final"):
                from fenrec_dist.distributed.ray_runtime import storage_uri

                self.newest = storage_uri(checkpoint.filesystem, checkpoint.path)
            if rec.get("final"):  # the workers' scoring of the best weights
                final = {k: v for k, v in rec.items() if k != "final"}
                # the newest checkpoint (it holds the best weights): this report carries none
                final["checkpoint"] = str(checkpoint.path) if checkpoint is not None else self.newest
                atomic_write_json(run_dir / "final.json", final)
                if remote is not None:
                    remote.upload(run_dir / "final.json")
                return
            if self.log is None:
                if remote is not None:  # storage's log is the run's: this driver may be a new machine
                    remote.download("metrics.jsonl", run_dir / "metrics.jsonl")
                self.log = MetricsLog(run_dir)
                self.log.truncate(int(rec["epoch"]))
                drop_final(run_dir, log=lambda line: print(line, flush=True))  # a resumed finished run trains on
                if remote is not None:
                    remote.delete("final.json")
            if previous is not None and previous.get("epoch") == rec["epoch"] - 1 \
                    and len(read_metrics(run_dir)) < rec["epoch"]:
                self.log.write(previous)  # its line was lost after its checkpoint was stored
            self.log.write(rec)
            if remote is not None:
                remote.upload(self.log.path)
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

    from fenrec_dist.distributed.storage import check_storage_path

    check_storage_path(cfg.distributed.storage_path)
    local_dir, name, storage = resolve_run(cfg, run_dir)
    ensure_idle(local_dir)
    read_manifest(cfg.data.path)  # a DataError naming the file before the run directory exists
    cfg.data.path = str(Path(cfg.data.path).resolve())
    local_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(local_dir / "config.yaml", dump_yaml(cfg))
    return RunPaths(local_dir, name, storage)


def build_trainer(cfg: Config, run_dir: RunPaths | str | Path | None = None, *,
                  extra_callbacks: Sequence[Any] = (), resume: bool = False) -> tuple[Any, RunPaths]:
    """The TorchTrainer of one run (Ray must be up): ``fenrec train`` and every Tune trial.

    ``run_dir`` is a ``prepare_run`` result, or a directory to prepare (None: derived
    from ``distributed.*``). ``extra_callbacks`` are Ray Train ``UserCallback``s added
    after the progress callback (a Tune trial adds its report-to-Tune callback).
    ``resume``: the storage holds a complete checkpoint (``resume_point``), which the workers
    resume from even when Ray's own record of the run lacks it (a driver lost between a
    checkpoint's upload and Ray's note of it). A start or restart that finds no room for the
    workers within ``distributed.resource_wait_s`` fails the run (``NoRoomError``).
    Returns (trainer, paths).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fenrec_dist.distributed.ray_runtime import train_fn_per_worker

    from fenrec_dist.distributed.storage import RunFiles, is_uri

    run = run_dir if isinstance(run_dir, RunPaths) else prepare_run(cfg, run_dir)
    remote = RunFiles(run.storage, run.name) if is_uri(run.storage) else None
    if remote is not None:
        remote.upload(run.local_dir / "config.yaml")
    scaling = ScalingConfig(num_workers=cfg.distributed.num_workers, use_gpu=cfg.distributed.use_gpu,
                            resources_per_worker={"CPU": cfg.distributed.cpus_per_worker})
    run_config = RunConfig(
        name=run.name, storage_path=run.storage,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.distributed.keep_checkpoints),
        failure_config=FailureConfig(max_failures=cfg.distributed.max_failures, controller_failure_limit=0),
        callbacks=[make_callback(run.local_dir, cfg, remote), *extra_callbacks],
        logging_config=LoggingConfig(log_level=os.environ.get("FENREC_RAY_TRAIN_LOG_LEVEL", "WARNING")),
    )
    # No Ray Data: each worker reads its own target-partitioned Parquet shards with pyarrow
    # (data.shards), a pure function of the manifest and the world size (docs/architecture.md).
    # Ray Train waits this long for the placement group of a (re)start, then fails the start, which
    # controller_failure_limit=0 makes final (its default retries forever: a hang on a fixed cluster)
    os.environ[START_TIMEOUT_ENV] = str(cfg.distributed.resource_wait_s)
    trainer = TorchTrainer(train_fn_per_worker, train_loop_config={"cfg": to_dict(cfg), "resume": resume},
                           scaling_config=scaling, run_config=run_config)
    return trainer, run


def resume_point(run: RunPaths) -> tuple[str | None, int, list[str]]:
    """The newest complete checkpoint in the run's storage, chosen as the workers choose it
    (``layout.scan_storage``): (its directory name or None, the epochs it finished, why each
    other one was skipped)."""
    import pyarrow.fs as pafs

    from fenrec_dist.distributed.storage import RunFiles, is_uri
    from fenrec_dist.train.layout import checkpoint_epoch, scan_storage

    if is_uri(run.storage):
        remote = RunFiles(run.storage, run.name)
        fs, path, shown = remote.fs, remote.base, remote.uri
    else:
        fs, path = pafs.LocalFileSystem(), str((Path(run.storage) / run.name).resolve())
        shown = path
    with scan_storage(fs, path, shown) as (d, skipped):
        return (d.name, checkpoint_epoch(d), skipped) if d is not None else (None, 0, skipped)


def wait_for_lost_driver(run_dir: Path, log=say, timeout_s: float = LOST_DRIVER_WAIT_S) -> None:
    """Wait until the Ray Train actors of the job that trained ``run_dir`` before are gone, then
    name this job in ``RUN_DIR/.fenrec.ray_job``.

    A driver killed with SIGKILL leaves its controller and workers running until Ray notices
    (within a second when its process dies, after the health checks when its node does); a
    resubmitted run must not train beside them, which would still write checkpoints and
    metrics. Actors of that job still alive after ``timeout_s`` mean another live driver
    (on another machine: this one's lock has passed): ``RunInUseError``. The file names the
    job and its driver's node, so a job of another cluster (whose job ids restart) is
    ignored. Without Ray's state API (no dashboard) nothing is checked, with a line saying so.
    """
    import ray
    from ray.util.state import list_actors

    from fenrec_dist.train.runlock import RunInUseError

    path = run_dir / JOB_FILE
    ctx = ray.get_runtime_context()
    me, node = ctx.get_job_id(), ctx.get_node_id()
    prev = path.read_text().split() if path.is_file() else []
    if len(prev) == 2 and prev[0] != me and prev[1] in {n["NodeID"] for n in ray.nodes()}:
        deadline, said = time.monotonic() + timeout_s, False
        while True:
            try:
                left = [a for a in list_actors(filters=[("job_id", "=", prev[0]), ("state", "!=", "DEAD")])
                        if a.class_name in TRAIN_ACTORS]
            except Exception as exc:  # noqa: BLE001 - no dashboard: the state API is not there
                log(f"note: cannot check that Ray job {prev[0]}, which trained {run_dir} before, has ended "
                    f"({type(exc).__name__}); make sure it has")
                break
            if not left:
                break
            if time.monotonic() > deadline:
                raise RunInUseError(f"{run_dir} is still trained by Ray job {prev[0]} ({len(left)} Ray Train actor(s) "
                                    f"alive after {timeout_s:.0f}s); stop that job or wait for it to end, then resubmit")
            if not said:
                log(f"waiting for {len(left)} Ray Train actor(s) of job {prev[0]}, a lost driver's, to end")
                said = True
            time.sleep(0.5)
    atomic_write_text(path, f"{me} {node}\n")


class NoRoomError(DataError):
    """The Ray cluster had no room for the run's workers within ``distributed.resource_wait_s``."""


def no_room(exc: BaseException, cfg: Config) -> NoRoomError | None:
    """A ``NoRoomError`` naming the resources the workers asked for and the live nodes' total
    when ``exc`` is Ray Train's start timeout; None for any other error."""
    import ray
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    if not isinstance(getattr(exc, "controller_failure", None), WorkerGroupStartupTimeoutError):
        return None
    d = cfg.distributed
    ask = {"CPU": d.cpus_per_worker, **({"GPU": 1.0} if d.use_gpu else {})}
    total, free = ray.cluster_resources(), ray.available_resources()
    have = ", ".join(f"{k} {total.get(k, 0):g} ({free.get(k, 0):g} free)" for k in ask)
    want = ", ".join(f"{k} {v:g}" for k, v in ask.items())
    return NoRoomError(f"the Ray cluster has no room for {d.num_workers} worker(s) of {want} each: waited "
                       f"{d.resource_wait_s:g}s (distributed.resource_wait_s); its live nodes have {have} in all; "
                       f"add nodes or lower distributed.num_workers")


def finish_run(result: Any, run: RunPaths, cfg: Config) -> dict[str, Any]:
    """curves.png, and final.json's content (written by the progress callback from the workers'
    final report)."""
    from fenrec_dist.distributed.storage import storage_down

    final_path = run.local_dir / "final.json"
    if (lost := storage_down(result.error, run.storage, run.name)) is not None:
        raise lost  # one line naming the storage path
    if result.error is not None or not final_path.is_file():
        raise RuntimeError(f"training ended without final metrics (error: {result.error})")
    plot_curves(run.local_dir, cfg.eval.metric)
    return json.loads(final_path.read_text())


def run_distributed(cfg: Config, run_dir: str | Path | None = None, address: str | None = None,
                    log=say) -> dict[str, Any]:
    """Fit the TorchTrainer; returns final.json's content (best epoch, valid, test)."""
    from fenrec_dist.train.runlock import run_lock

    check_embedded_gpus(cfg, address)
    run = prepare_run(cfg, run_dir)
    with run_lock(run.local_dir):  # one training process per run directory
        ckpt, done, skipped = resume_point(run)
        if ckpt is not None:  # the first line: a resubmitted job resumes with no flag
            log(f"resuming {run.name} from {ckpt} ({done} of {cfg.train.epochs} epochs done) in {run.storage}")
        for why in skipped:
            log(f"resume: skipped {why}")
        t0 = time.perf_counter()
        init_ray(cfg, address)
        t_ray = time.perf_counter() - t0
        wait_for_lost_driver(run.local_dir, log)
        trainer, run = build_trainer(cfg, run, resume=ckpt is not None)
        log(f"ray up in {t_ray:.1f}s; training {cfg.distributed.num_workers} worker(s) -> {run.storage}/{run.name}")
        try:
            result = trainer.fit()
        except Exception as exc:
            from fenrec_dist.distributed.storage import storage_down

            raise storage_down(exc, run.storage, run.name) or no_room(exc, cfg) or exc  # storage lost: its one line
        final = finish_run(result, run, cfg)
    log("test  " + " ".join(f"{k}={v:.4f}" for k, v in final["test"].items()) + f"  (best epoch {final['best_epoch']})")
    return final
