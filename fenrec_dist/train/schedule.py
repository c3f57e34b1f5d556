"""The learning-rate schedule: a pure function of the position in training and the config.

The optimizer's learning rate at a step is ``train.lr * lr_factor(...)``. With the defaults
(``train.lr_warmup_epochs: 0``, ``train.lr_schedule: constant``) the factor is exactly 1.0 at
every step, so training is the constant-LR training of before. Positions are counted in
optimizer steps: ``step = epoch * steps_per_epoch + step_in_epoch``.

* Warm-up (``W = lr_warmup_epochs * steps_per_epoch`` steps): linear, ``(step + 1) / W``, so the
  first step uses ``1 / W`` of the learning rate and the last warm-up step the full rate.
* Then ``constant``: 1.0; or ``cosine``: from 1.0 down toward ``lr_min_ratio`` over the steps left
  to the end of ``train.epochs`` (``T = epochs * steps_per_epoch``):
  ``r + (1 - r) * (1 + cos(pi * (step - W) / (T - W))) / 2``; steps past ``T`` (an epoch beyond
  ``train.epochs``) keep ``r``.

Being a function of (epoch, step) only, the schedule resumes exactly from a checkpoint that
stores the epoch: nothing else needs saving.
"""

from __future__ import annotations

import math

from fenrec_dist.config import TrainConfig


def lr_factor(epoch: int, step_in_epoch: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step_in_epoch`` (0-based) of ``epoch`` (0-based).

    Args:
        epoch: the epoch, 0-based.
        step_in_epoch: the optimizer step within the epoch, in [0, steps_per_epoch).
        steps_per_epoch: optimizer steps per epoch (>= 1; the same for every epoch of a run).
        cfg: the run's train section (``lr_warmup_epochs``, ``lr_schedule``, ``lr_min_ratio``, ``epochs``).

    Returns:
        The factor: in (0, 1] during the warm-up, then 1.0 (constant) or in [lr_min_ratio, 1]
        (cosine); 1.0 at every step under the defaults.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if not 0 <= step_in_epoch < steps_per_epoch:
        raise ValueError(f"step_in_epoch must be in [0, {steps_per_epoch}), got {step_in_epoch}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    step = epoch * steps_per_epoch + step_in_epoch
    warm = cfg.lr_warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule != "cosine":
        raise ValueError(f"train.lr_schedule: unknown schedule {cfg.lr_schedule!r}")
    total = cfg.epochs * steps_per_epoch
    r = cfg.lr_min_ratio
    if step >= total or total <= warm:
        return r
    progress = (step - warm) / (total - warm)
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))
