"""The local runtime: the one trainer in this process, over a run directory.

``RUN_DIR`` holds config.yaml, metrics.jsonl, tensorboard/, curves.png, final.json and
``checkpoints/checkpoint_NNNNNN/`` (``train.layout``; the newest ``distributed.keep_checkpoints``
are kept). One process trains a run directory at a time (``runlock``); SIGINT and SIGTERM
stop the run between epochs, never inside an epoch's commit (``interrupts``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import torch

from fenrec_dist.config import Config, ConfigError, dump_yaml, load_config
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.train import layout
from fenrec_dist.train.checkpoint import CheckpointError, StorageError, atomic_write_json, atomic_write_text
from fenrec_dist.train.interrupts import deferred_interrupts
from fenrec_dist.train.report import MetricsLog, drop_final, plot_curves, progress_line, read_metrics
from fenrec_dist.train.runlock import run_lock
from fenrec_dist.train.runtime import TorchEngine, WriteCheckpoint
from fenrec_dist.train.trainer import fit, resolve_device, score_run


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's preemption) stops a run as Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class LocalRuntime:
    """Rank 0 of 1 over ``run_dir`` (see the module docstring)."""

    rank, world_size = 0, 1

    def __init__(self, cfg: Config, run_dir: Path, resume: bool, log=print) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resume = resume
        self.device = resolve_device(cfg.train.device)
        self.progress = cfg.train.progress
        self._log = log
        self.metrics = MetricsLog(self.run_dir)
        self.final: dict[str, Any] = {}

    def log(self, message: str) -> None:
        self._log(message)

    def engine(self, model: SequenceEncoder, cfg: Config) -> TorchEngine:
        return TorchEngine(model, cfg)

    @contextlib.contextmanager
    def resume_from(self) -> Iterator[Path | None]:
        d = None
        if self.resume:
            layout.upgrade_legacy(self.run_dir)
            d, skipped = layout.scan(layout.candidates(self.run_dir))
            logged = len(read_metrics(self.run_dir))
            if d is None and logged:  # starting over would drop the logged epochs
                raise CheckpointError(f"{self.run_dir}: no complete checkpoint to resume from, but metrics.jsonl "
                                      f"logs {logged} finished epoch(s)" + (f" ({'; '.join(skipped)})" if skipped
                                                                             else ""))
            for why in skipped:
                self.log(f"resume: skipped {why}")
            if d is None:
                self.log(f"resume: {self.run_dir} finished no epoch before it stopped; starting at epoch 0")
        done = layout.checkpoint_epoch(d) if d is not None else 0
        self._repair_log(d, done)
        if done < self.cfg.train.epochs:  # this start may train more epochs: the old final.json goes
            drop_final(self.run_dir, self.log)
        yield d

    def _repair_log(self, d: Path | None, done: int) -> None:
        """metrics.jsonl keeps exactly the checkpoint's epochs: later lines (an epoch that never
        committed) go, and a line lost after its checkpoint was written comes back from it."""
        self.metrics.truncate(done)
        if d is not None and len(read_metrics(self.run_dir)) < done:
            rec = layout.read_record(d)
            if rec is not None and rec.get("epoch") == done - 1:
                self.metrics.write(rec)

    def commit(self, record: dict[str, Any], write: WriteCheckpoint) -> None:
        with deferred_interrupts():  # the checkpoint and its metrics line: both or neither
            final = self.ckpt_dir / layout.checkpoint_name(record["epoch"] + 1)
            tmp = self.ckpt_dir / f".tmp-{final.name}"
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                write(tmp)
                layout.write_manifest(tmp, self.rank)  # last: what this rank wrote
                if final.exists():  # a redone epoch (resumed before its line was written)
                    shutil.rmtree(final)
                os.replace(tmp, final)
                self.metrics.write(record)
            except OSError as exc:
                raise self._unwritable(exc, record["epoch"]) from exc
            keep = max(1, self.cfg.distributed.keep_checkpoints)
            for old in sorted(self.ckpt_dir.glob(layout.PREFIX + "*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.log(progress_line(record, self.cfg.train.epochs, self.cfg.eval.metric, self.cfg.train.patience))

    def _unwritable(self, exc: OSError, epoch: int) -> StorageError:
        """The one line of a run whose directory stopped taking writes at epoch ``epoch``'s commit."""
        shutil.rmtree(self.ckpt_dir / f".tmp-{layout.checkpoint_name(epoch + 1)}", ignore_errors=True)
        kept = layout.newest(layout.candidates(self.run_dir))
        where = exc.filename or self.ckpt_dir
        return StorageError(f"{where}: cannot write epoch {epoch}'s checkpoint ({exc.strerror or type(exc).__name__}); "
                            f"the run stopped, its last checkpoint {kept or '(none)'} is intact: resume with "
                            f"`fenrec train --resume {self.run_dir} --local` once {self.run_dir} takes writes again")

    def negatives_store(self) -> Any:
        from fenrec_dist.negatives.store import NegativesStore

        return NegativesStore(str(self.run_dir.resolve()))

    def finish(self, final: dict[str, Any]) -> None:
        self.metrics.close()
        plot_curves(self.run_dir, self.cfg.eval.metric)
        d = layout.newest(layout.candidates(self.run_dir))
        final = {**final, "checkpoint": str(d) if d is not None else None}
        atomic_write_json(self.run_dir / "final.json", final)
        self.final = final
        self.log("test  " + " ".join(f"{k}={v:.4f}" for k, v in final["test"].items())
                 + f"  (best epoch {final['best_epoch']})")


def train_local(cfg: Config, run_dir: Path, resume: bool = False, log=print) -> dict[str, Any]:
    """Train in this process until early stopping or ``train.epochs``; returns final.json's content."""
    from fenrec_dist.data.dataset import read_manifest

    run_dir = Path(run_dir)
    read_manifest(cfg.data.path)  # a DataError naming the file before the run directory exists
    resolve_device(cfg.train.device)  # so is a device this machine lacks
    done = len(read_metrics(run_dir)) if resume else 0
    if resume and done and not layout.candidates(run_dir) and not (run_dir / "checkpoints" / "last.pt").exists():
        raise CheckpointError(f"{run_dir / 'checkpoints'}: checkpoint missing, but {run_dir / 'metrics.jsonl'} "
                              f"logs {done} finished epoch(s); cannot resume without it (restore it, or start a "
                              f"new run with another --out)")
    run_dir.mkdir(parents=True, exist_ok=True)  # after the data checks: a bad start leaves no directory
    with run_lock(run_dir), sigterm_as_interrupt():  # one training process per run directory
        if not resume:
            atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        rt = LocalRuntime(cfg, run_dir, resume, log)
        fit(cfg, rt)
        return rt.final  # final.json's content


def load_run_config(run_dir: Path) -> Config:
    """The resolved config a run directory was started with (errors name the directory or file)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} holds no run (config.yaml missing)")
    return load_config(run_dir / "config.yaml")


def evaluate_run(run_dir: Path, log=print) -> dict[str, Any]:
    """`fenrec evaluate RUN_DIR`: re-score the best weights of the run's newest complete
    checkpoint (either runtime's) on validation and test; rewrites final.json."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    final = score_run(cfg, run_dir, resolve_device(cfg.train.device))
    atomic_write_json(run_dir / "final.json", final)
    log("test  " + " ".join(f"{k}={v:.4f}" for k, v in final["test"].items()) + f"  (best epoch {final['best_epoch']})")
    return final


def best_weights(run_dir: Path, device: torch.device | str = "cpu") -> tuple[dict[str, Any], int, dict[str, Any]]:
    """(model state, best epoch, extra) of a run's newest complete checkpoint (``layout.best_weights``)."""
    return layout.best_weights(Path(run_dir), map_location=device)
