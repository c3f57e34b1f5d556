"""The seam between the one trainer (``train.trainer.fit``) and where it runs.

A runtime gives the trainer its rank and world size, device, the optimizer engine, the
checkpoint to resume from, and the end of every epoch (checkpoint + report). Collectives
come from ``fenrec_dist.comm`` and are the identity in one process. Two runtimes exist:
``train.local.LocalRuntime`` (one process, a run directory) and
``distributed.ray_runtime.RayRuntime`` (a Ray Train worker, optionally DeepSpeed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

import torch

from fenrec_dist.config import Config, ConfigError
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.optim import clip_grad_norm, make_optimizer

# (directory) -> None: writes this rank's files of a checkpoint into the directory
WriteCheckpoint = Callable[[Path], None]


class Engine(Protocol):
    """The optimizer step and its state.

    net: what the training forward calls (the module, its DDP wrapper or DeepSpeed engine),
        long [B, L] -> float [B, d].
    module: the underlying encoder (item table, state_dict, evaluation).
    """

    net: Callable[[torch.Tensor], torch.Tensor]
    module: SequenceEncoder
    uses_deepspeed: bool

    def step(self, loss: torch.Tensor) -> None: ...

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps (``train.schedule``)."""

    def state(self) -> dict[str, Any]:
        """Entries of rank 0's state.pt beside the model (the optimizer's state)."""

    def save_extra(self, d: Path) -> None:
        """Collective: state the engine keeps itself (DeepSpeed's directory), or nothing."""

    def load(self, d: Path, state: dict[str, Any]) -> None:
        """Restore the model and optimizer from checkpoint ``d`` (its loaded ``state``)."""


class TorchEngine:
    """Plain torch: backward, clip, Adam step, zero_grad(set_to_none=True). ``net`` is the
    module itself in one process and its DistributedDataParallel wrapper in a process group.
    The optimizer is ``optim.make_optimizer``'s: fused Adam (``loss.rec_softmax: full``), or
    row-sparse Adam on the item table and fused Adam on the rest (``sampled``)."""

    uses_deepspeed = False

    def __init__(self, module: SequenceEncoder, cfg: Config,
                 wrap: Callable[[SequenceEncoder], Callable[[torch.Tensor], torch.Tensor]] | None = None) -> None:
        self.module = module
        # fused Adam; row-sparse on the items when L_rec is sampled (it makes the item lookup
        # sparse, so it comes before a DDP wrapper is built around the module)
        self.optimizer = make_optimizer(module, cfg)
        self.net = wrap(module) if wrap is not None else module
        self.grad_clip = cfg.train.grad_clip

    def step(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.grad_clip > 0:
            clip_grad_norm(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def save_extra(self, d: Path) -> None:
        return None

    def load(self, d: Path, state: dict[str, Any]) -> None:
        if "optimizer" not in state:
            raise ConfigError(f"{d}: a checkpoint of a DeepSpeed run; resume it with deepspeed.enabled=true")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class Runtime(Protocol):
    """Where the trainer runs (see the module docstring)."""

    rank: int
    world_size: int
    device: torch.device
    progress: bool  # draw a progress bar (a terminal, rank 0)

    def engine(self, model: SequenceEncoder, cfg: Config) -> Engine: ...

    def resume_from(self) -> ContextManager[Path | None]:
        """The checkpoint directory to resume from (None: start at epoch 0)."""

    def commit(self, record: dict[str, Any], write: WriteCheckpoint) -> None:
        """End of an epoch: write the checkpoint (every rank calls ``write`` on one directory)
        and report ``record`` (rank 0's is the metrics.jsonl line)."""

    def negatives_store(self) -> Any:
        """Where rank 0 saves the epoch's negative index (``negatives.store.NegativesStore``)."""

    def finish(self, final: dict[str, Any]) -> None:
        """After training: report or write final.json's content."""

    def log(self, message: str) -> None: ...


def precision_context(cfg: Config, device: torch.device) -> Callable[[], ContextManager[Any]] | None:
    """The one precision policy of every runtime: bf16 autocast of the encoder's forward on CUDA
    (``train.precision`` auto or bf16), float32 parameters, optimizer state and losses
    everywhere; float32 on CPU. Returns a context factory, or None for plain float32."""
    want = cfg.train.precision
    if want == "fp32" or (want == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ConfigError("train.precision: bf16 is for CUDA devices; on CPU use auto or fp32")
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
