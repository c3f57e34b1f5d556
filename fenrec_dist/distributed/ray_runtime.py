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
from fenrec_dist.train.runtime import Engine, TorchEngine, WriteCheckpoint
from fenrec_dist.train.trainer import fit


class RayRuntime:
    """Rank ``ray.train.get_context().get_world_rank()`` of the Ray Train worker group."""

    progress = False

    def __init__(self, cfg: Config) -> None:
        import ray.train.torch

        self.cfg = cfg
        self.rank, self.world_size = C.world()
        self.device = ray.train.torch.get_device()

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

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def commit(self, record: dict[str, Any], write: WriteCheckpoint) -> None:
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            ray.train.report(record, checkpoint=Checkpoint.from_directory(tmp))

    def negatives_store(self) -> Any:
        import ray.train

        from fenrec_dist.negatives.store import NegativesStore

        storage = ray.train.get_context().get_storage()
        return NegativesStore(storage.experiment_fs_path, storage.storage_filesystem)

    def finish(self, final: dict[str, Any]) -> None:
        import ray.train

        ray.train.report({"final": True, **final})


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": the run's Config as a dict}."""
    cfg = config_from_dict(config["cfg"])
    fit(cfg, RayRuntime(cfg))
