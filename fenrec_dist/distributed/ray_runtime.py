"""The Ray Train runtime: the one trainer (``train.trainer.fit``) in every Ray Train worker.

The per-worker function is the whole of it: build the runtime, fit. The runtime reports each
epoch with its checkpoint through ``ray.train.report`` (every rank writes its own files into
one directory, which Ray merges), resumes from ``ray.train.get_checkpoint()``, and steps with
DeepSpeed (``deepspeed.enabled``) or torch DDP.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator


from fenrec_dist import comm as C
from fenrec_dist.config import Config, config_from_dict
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.train import layout
from fenrec_dist.distributed.storage import STOPPED
from fenrec_dist.train.report import PREVIOUS
from fenrec_dist.train.checkpoint import CheckpointError, StorageError
from fenrec_dist.train.runtime import Engine, TorchEngine, WriteCheckpoint
from fenrec_dist.train.trainer import fit


def storage_uri(fs: Any, fs_path: str) -> str:
    """``fs_path`` as the user wrote it: ``s3://...`` on S3, the path itself on a local disk."""
    kind = getattr(fs, "type_name", "local")
    return fs_path if kind == "local" else f"{kind}://{fs_path}"


class RayRuntime:
    """Rank ``ray.train.get_context().get_world_rank()`` of the Ray Train worker group."""

    progress = False

    def __init__(self, cfg: Config, resume: bool = False) -> None:
        import ray.train.torch

        self.cfg = cfg
        self.resume = resume  # the driver found a complete checkpoint in storage (driver.resume_point)
        self.rank, self.world_size = C.world()
        self.device = ray.train.torch.get_device()
        self.previous: dict[str, Any] | None = None  # the resumed checkpoint's record, sent with the next report

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(f"[fenrec] {message}", flush=True)

    def engine(self, model: SequenceEncoder, cfg: Config) -> Engine:
        if cfg.deepspeed.enabled:
            from fenrec_dist.distributed.engine import DeepSpeedEngine

            return DeepSpeedEngine(model, cfg, self.device)
        import ray.train.torch

        return TorchEngine(model, cfg, wrap=lambda m: ray.train.torch.prepare_model(m, move_to_device=False))

    @contextlib.contextmanager
    def resume_from(self) -> Iterator[Path | None]:
        import ray.train

        if ray.train.get_checkpoint() is None and not self.resume:  # none in storage: a fresh start
            yield None
            return
        storage = ray.train.get_context().get_storage()
        shown = storage_uri(storage.storage_filesystem, storage.experiment_fs_path)
        with layout.scan_storage(storage.storage_filesystem, storage.experiment_fs_path, shown) as (d, skipped):
            for why in skipped:
                self.log(f"resume: skipped {why}")
            if d is None:
                raise CheckpointError(f"{shown}: no complete checkpoint to resume from ({'; '.join(skipped)})")
            self.previous = layout.read_record(d) if self.rank == 0 else None
            yield d

    def commit(self, record: dict[str, Any], write: WriteCheckpoint) -> None:
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            layout.write_manifest(Path(tmp), self.rank)  # last: this rank's files, its ZeRO shard included
            sent = record if self.previous is None else {**record, PREVIOUS: self.previous}
            try:
                ray.train.report(sent, checkpoint=Checkpoint.from_directory(tmp))
                self.previous = None
            except OSError as exc:  # pyarrow's upload: storage down, unwritable, full
                storage = ray.train.get_context().get_storage()
                shown = storage_uri(storage.storage_filesystem, storage.experiment_fs_path)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StorageError(f"{shown}: cannot write epoch {record['epoch']}'s checkpoint ({first}); "
                                   f"{STOPPED}") from exc

    def negatives_store(self) -> Any:
        import ray.train

        from fenrec_dist.negatives.store import NegativesStore

        storage = ray.train.get_context().get_storage()
        return NegativesStore(storage.experiment_fs_path, storage.storage_filesystem)

    def finish(self, final: dict[str, Any]) -> None:
        import ray.train

        ray.train.report({"final": True, **final})


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": the run's Config as a dict, "resume": whether
    the driver found a checkpoint to resume from}."""
    cfg = config_from_dict(config["cfg"])
    fit(cfg, RayRuntime(cfg, resume=bool(config.get("resume"))))
