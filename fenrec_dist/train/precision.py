"""Mixed precision of the CPU training step (``train.cpu_bf16``).

With it on, a step runs the encoder under ``torch.autocast("cpu", dtype=torch.bfloat16)``
and gives the soft-label loss's three catalogue products ([B, d] x [d, I + 1] and the two
backward products) bf16 operands with float32 accumulation. Everything else stays float32:
the weights and the optimizer, the representations handed to the losses (widened back),
every loss term, the clustering pass and the evaluation. On a CPU with native bf16
(AVX512-BF16 or AMX) these products run several times faster than in float32
(bench/bench_cpu_bf16.py); without it oneDNN emulates bf16 and the step gets slower.
On GPU the ``deepspeed.bf16`` setting applies instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fenrec_dist.config import Config


@dataclass(frozen=True)
class StepPrecision:
    """autocast: context factory wrapping the encoder's forward, or None (float32).
    catalogue_dtype: operand dtype of the soft-label loss's catalogue products."""

    autocast: Callable[[], object] | None = None
    catalogue_dtype: torch.dtype = torch.float32


def cpu_step_precision(cfg: Config, device: torch.device) -> StepPrecision:
    """The step precision ``train.cpu_bf16`` asks for on a CPU device (float32 elsewhere)."""
    if device.type != "cpu" or not cfg.train.cpu_bf16:
        return StepPrecision()
    return StepPrecision(lambda: torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16)


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU flags list AVX512-BF16 or AMX-BF16; None where the flags cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return None


def bf16_note(cfg: Config, device: torch.device) -> str | None:
    """A line to print when ``train.cpu_bf16`` is on but will not pay (no native bf16), else None."""
    if device.type == "cpu" and cfg.train.cpu_bf16 and cpu_has_native_bf16() is False:
        return ("note: train.cpu_bf16 is on but this CPU has no native bf16 (avx512_bf16/amx_bf16 "
                "flags): oneDNN emulates it and the step gets slower, not faster")
    return None
