"""The SASRec encoder's forward and backward replayed from CUDA graphs, one pair per static shape.

A training step of the packed encoder launches thousands of small kernels, each with its own
Python dispatch; on a GPU the step is launch-bound (issue 28: a Beauty epoch 21 s on an
H200). With ``model.static_shapes`` a batch's shapes depend only on ``StaticPlan.key`` (rows,
bucketed token count, grid width), so each key's forward and backward can be captured once
with ``torch.cuda.make_graphed_callables`` and replayed: one launch per graph instead of one
per operator. The loss stays eager around the graphed encoder (its noise negatives draw on
the host generator, and the fine term's dedup reads a count on the host), so every objective
and phase works unchanged; gradients reach the parameters through the graphed backward.

Where CUDA graphs cannot run (CPU, or ``enabled=False``) the same call runs
``SASRec.encode_static`` eagerly: the step's values are the graphed step's, which the CPU tests
compare with the eager packed step (tests/test_graph_step.py).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch
from torch import nn

from fenrec_dist.model.packing import StaticPlan
from fenrec_dist.model.sasrec import SASRec


class _StaticEncoder(nn.Module):
    """``model.encode_static`` over a plan's tensors, under the given autocast (captured with it,
    ``cache_enabled=False`` as graph capture requires); returns float32 [N, d]."""

    def __init__(self, model: SASRec, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        plan = StaticPlan.from_tensors(tensors)
        dev = tensors[0].device.type
        ctx = (torch.autocast(dev, dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else contextlib.nullcontext())
        with ctx:
            z = self.model.encode_static(plan)
        return z.float()


class GraphedEncoder:
    """``SASRec.encode_static`` with forward and backward captured per ``StaticPlan.key``.

    Args:
        model: a SASRec built with ``model.static_shapes`` (any config works: the plan decides).
        enabled: capture CUDA graphs (default: when the model's parameters are on CUDA).
        autocast_dtype: e.g. torch.bfloat16 for bf16 autocast inside the encoder (the
            trainer's policy on CUDA), None for float32.
        max_graphs: shape keys captured at most; further keys run eagerly (each graph pair
            keeps its own activation memory).
        warmup: eager iterations ``make_graphed_callables`` runs before each capture (they use
            ``autograd.grad``: no ``.grad`` and no parameter changes).

    ``__call__(plan)`` -> float32 [N, d], differentiable (the backward replays the key's
    backward graph). ``graphs`` counts the keys captured, ``eager_calls`` the calls that ran
    eagerly.
    """

    def __init__(self, model: SASRec, enabled: bool | None = None, autocast_dtype: torch.dtype | None = None,
                 max_graphs: int = 32, warmup: int = 3) -> None:
        self.model = model
        dev = next(model.parameters()).device
        self.enabled = (dev.type == "cuda") if enabled is None else bool(enabled)
        if self.enabled and dev.type != "cuda":
            raise ValueError("GraphedEncoder: CUDA graphs need the model on a CUDA device")
        self.autocast_dtype = autocast_dtype
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._eager = _StaticEncoder(model, autocast_dtype)
        self._graphed: dict[tuple[int, int, int], Callable[..., torch.Tensor]] = {}
        self.eager_calls = 0
        self._failed = False

    @property
    def graphs(self) -> int:
        return len(self._graphed)

    def _capture(self, plan: StaticPlan) -> Callable[..., torch.Tensor]:
        module = _StaticEncoder(self.model, self.autocast_dtype)
        sample = tuple(t.clone() for t in plan.tensors())
        return torch.cuda.make_graphed_callables(module, sample, num_warmup_iters=self.warmup,
                                                 allow_unused_input=True)

    def __call__(self, plan: StaticPlan) -> torch.Tensor:
        if not (self.enabled and self.model.training) or self._failed:
            self.eager_calls += 1
            return self._eager(*plan.tensors())
        key = plan.key
        fn = self._graphed.get(key)
        if fn is None:
            if len(self._graphed) >= self.max_graphs:
                self.eager_calls += 1
                return self._eager(*plan.tensors())
            try:
                fn = self._capture(plan)
            except Exception as exc:  # capture is an optimisation: fall back to the eager encoder
                warnings.warn(f"GraphedEncoder: capture of shape {key} failed ({type(exc).__name__}: {exc}); "
                              f"running the encoder eagerly from now on")
                self._failed = True
                self.eager_calls += 1
                return self._eager(*plan.tensors())
            self._graphed[key] = fn
        return fn(*plan.tensors())
