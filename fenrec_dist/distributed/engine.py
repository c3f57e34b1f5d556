"""DeepSpeed engine from the ``deepspeed`` section of the config."""

from __future__ import annotations

import os
from typing import Any

import torch

from fenrec_dist.config import Config
from fenrec_dist.train.loop import make_adam


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 on GPU and fp32 on CPU unless the config says otherwise."""
    if cfg.deepspeed.bf16 == "auto":
        return device.type == "cuda"
    return cfg.deepspeed.bf16 == "true"


def deepspeed_config(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed JSON config for one worker's micro-batch."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": use_bf16(cfg, device)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.train.grad_clip > 0:
        ds["gradient_clipping"] = cfg.train.grad_clip
    if cfg.deepspeed.optimizer != "torch_adam":
        ds["optimizer"] = {"type": cfg.deepspeed.optimizer,
                           "params": {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay}}
    return ds


def build_engine(model: torch.nn.Module, cfg: Config, device: torch.device):  # type: ignore[no-untyped-def]
    """Initialise DeepSpeed around ``model`` (reusing the process group Ray Train set up).

    A torch Adam is passed in unless ``deepspeed.optimizer`` names a DeepSpeed optimizer
    (those compile ops at run time).
    """
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from fenrec_dist.distributed.buildlock import clear_stale_build_lock

        clear_stale_build_lock()  # an interrupted earlier build would make init_distributed wait forever
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    optimizer = None
    if cfg.deepspeed.optimizer == "torch_adam":
        optimizer = make_adam(model.parameters(), cfg.train.lr, cfg.train.weight_decay)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=None if optimizer else model.parameters(),
        config=deepspeed_config(cfg, device),
    )
    return engine
