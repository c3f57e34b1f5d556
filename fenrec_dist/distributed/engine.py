"""The DeepSpeed engine of a Ray Train worker (``deepspeed.enabled``), behind the trainer's
``Engine`` seam (``train.runtime``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fenrec_dist.config import Config, ConfigError
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.train.loop import make_adam

STATE_TAG = "state"


def deepspeed_config(cfg: Config) -> dict[str, Any]:
    """The DeepSpeed JSON config for one worker's micro-batch. Precision is the trainer's one
    policy (``train.precision``: bf16 autocast of the forward on CUDA, float32 parameters and
    optimizer state), so DeepSpeed's own bf16 mode stays off."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # always explicit: DeepSpeed's own default clips at 1.0, which the torch step never does
        "gradient_clipping": cfg.train.grad_clip,
    }
    if cfg.deepspeed.optimizer != "torch_adam":
        ds["optimizer"] = {"type": cfg.deepspeed.optimizer,
                           "params": {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay}}
    return ds


class DeepSpeedEngine:
    """``deepspeed.initialize`` around the encoder (reusing the process group Ray Train set up).

    A torch Adam is passed in unless ``deepspeed.optimizer`` names a DeepSpeed optimizer
    (those compile ops at run time). Its state lives in the checkpoint's ``deepspeed/``
    directory, every rank's part (ZeRO shards included)."""

    uses_deepspeed = True

    def __init__(self, module: SequenceEncoder, cfg: Config, device: torch.device) -> None:
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            from fenrec_dist.distributed.buildlock import clear_stale_build_lock

            clear_stale_build_lock()  # an interrupted earlier build would make init_distributed wait forever
        if cfg.loss.rec_softmax == "sampled":
            raise ConfigError("loss.rec_softmax: sampled steps the item table with a row-sparse Adam, a torch "
                              "optimizer: run it with deepspeed.enabled=false (torch DDP)")
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        optimizer = None
        if cfg.deepspeed.optimizer == "torch_adam":
            optimizer = make_adam(module.parameters(), cfg.train.lr, cfg.train.weight_decay)
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, model_parameters=None if optimizer else module.parameters(),
            config=deepspeed_config(cfg),
        )
        self.net = self.engine
        self.module = self.engine.module

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def set_lr(self, lr: float) -> None:
        for g in self.engine.optimizer.param_groups:
            g["lr"] = lr

    def state(self) -> dict[str, Any]:
        return {}

    def save_extra(self, d: Path) -> None:
        self.engine.save_checkpoint(str(d / "deepspeed"), tag=STATE_TAG)

    def load(self, d: Path, state: dict[str, Any]) -> None:
        if not (d / "deepspeed").is_dir():
            raise ConfigError(f"{d}: a checkpoint of a run without DeepSpeed; resume it with deepspeed.enabled=false")
        self.engine.load_checkpoint(str(d / "deepspeed"), tag=STATE_TAG)
