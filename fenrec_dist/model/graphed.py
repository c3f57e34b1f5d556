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

``CapturedStep`` captures a whole step (encoder, loss and backward) in one graph per shape, for
objectives that read nothing on the host and draw no host random numbers (the warm-up phase
today; the hard phase once its noise negatives are drawn on the device).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from fenrec_dist.model.packing import StaticPlan

if TYPE_CHECKING:
    from fenrec_dist.model.sasrec import SASRec


class _StaticEncoder(nn.Module):
    """``model.encode_static`` over a plan's tensors, under the given autocast (captured with it,
    ``cache_enabled=False`` as graph capture requires); returns float32 [N, d]."""

    def __init__(self, model: "SASRec", autocast_dtype: torch.dtype | None) -> None:
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
            trainer's policy on CUDA), None for float32, or "context": the caller's CUDA
            autocast state at each call (the graphs then run with the caller's autocast
            switched off and their own, cache-free, inside: graph capture refuses autocast's
            weight cache). ``SASRec.forward`` with ``model.cuda_graphs`` uses "context", so a
            trainer's ``torch.autocast`` block keeps working unchanged.
        max_graphs: shape keys captured at most; further keys run eagerly (each graph pair
            keeps its own activation memory).
        warmup: eager iterations ``make_graphed_callables`` runs before each capture (they use
            ``autograd.grad``: no ``.grad`` and no parameter changes).

    ``__call__(plan)`` -> float32 [N, d], differentiable (the backward replays the key's
    backward graph). ``graphs`` counts the keys captured, ``eager_calls`` the calls that ran
    eagerly. The graphs hold the parameters' addresses: in-place updates (optimizers,
    ``load_state_dict``) are seen, moving the model to another device is not.
    """

    def __init__(self, model: "SASRec", enabled: bool | None = None,
                 autocast_dtype: torch.dtype | None | str = None, max_graphs: int = 32, warmup: int = 3) -> None:
        self.model = model
        dev = next(model.parameters()).device
        self.enabled = (dev.type == "cuda") if enabled is None else bool(enabled)
        if self.enabled and dev.type != "cuda":
            raise ValueError("GraphedEncoder: CUDA graphs need the model on a CUDA device")
        if isinstance(autocast_dtype, str) and autocast_dtype != "context":
            raise ValueError(f"GraphedEncoder: autocast_dtype {autocast_dtype!r}: a torch dtype, None or 'context'")
        self.autocast_dtype = autocast_dtype
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._eager: dict[torch.dtype | None, _StaticEncoder] = {}
        self._graphed: dict[tuple, Callable[..., torch.Tensor]] = {}
        self.eager_calls = 0
        self.failure: str | None = None  # why capture was given up, when it was

    @property
    def graphs(self) -> int:
        return len(self._graphed)

    def _dtype(self, device_type: str) -> torch.dtype | None:
        if self.autocast_dtype != "context":
            return self.autocast_dtype  # type: ignore[return-value]
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None

    def _run_eager(self, plan: StaticPlan, dtype: torch.dtype | None) -> torch.Tensor:
        self.eager_calls += 1
        if dtype not in self._eager:
            self._eager[dtype] = _StaticEncoder(self.model, dtype)
        return self._eager[dtype](*plan.tensors())

    def _capture(self, plan: StaticPlan, dtype: torch.dtype | None) -> Callable[..., torch.Tensor]:
        module = _StaticEncoder(self.model, dtype)
        sample = tuple(t.clone() for t in plan.tensors())
        return torch.cuda.make_graphed_callables(module, sample, num_warmup_iters=self.warmup,
                                                 allow_unused_input=True)

    def __call__(self, plan: StaticPlan) -> torch.Tensor:
        dev = plan.token_ids.device.type
        dtype = self._dtype(dev)
        if not (self.enabled and self.model.training) or self.failure is not None:
            return self._run_eager(plan, dtype)
        key = (plan.key, dtype)
        # the caller's autocast (weight cache on) must not wrap a capture or a replay
        with torch.autocast(dev, enabled=False):
            fn = self._graphed.get(key)
            if fn is None:
                if len(self._graphed) >= self.max_graphs:
                    return self._run_eager(plan, dtype)
                try:
                    fn = self._capture(plan, dtype)
                except Exception as exc:  # capture is an optimisation: fall back to the eager encoder
                    self.failure = f"capture of shape {key} failed: {type(exc).__name__}: {exc}"
                    warnings.warn(f"GraphedEncoder: {self.failure}; running the encoder eagerly from now on")
                    torch.cuda.synchronize()
                    return self._run_eager(plan, dtype)
                self._graphed[key] = fn
            return fn(*plan.tensors())


StepOutputs = dict[str, torch.Tensor]


class CapturedStep:
    """A whole step's forward, loss and backward captured per input shape (one CUDA graph each);
    the optimizer step runs eagerly after the replay (fused Adam: a few launches).

    For objectives whose computation reads nothing on the host and draws no host random numbers
    (FENRec's warm-up phase with ``loss.dedup_intents`` off, an exact speed-up whose absence
    changes no value, and the intents' torch backend). The hard phase's noise negatives are drawn
    on the host generator (``losses/noise_negatives.py``), so that phase needs ``GraphedEncoder``
    until they are drawn on the device.

    Args:
        params: the parameters whose gradients the step computes (``.grad`` is set on return).
        compute: inputs (tensors) -> dict of scalar tensors with "objective" (back-propagated);
            the others are reported detached (e.g. loss terms, accumulated on the device).
        enabled: capture CUDA graphs (default: when the parameters are on CUDA); otherwise the
            same computation runs eagerly each call.
        warmup: eager iterations on a side stream before each capture (forward and backward;
            their gradients are dropped, no parameter changes).
        max_graphs: input shapes captured at most; further shapes run eagerly.

    ``__call__(*inputs)`` -> the dict, detached: with capture, tensors the next replay of the same
    shape overwrites (copy or accumulate them before the next call).
    """

    def __init__(self, params: list[torch.nn.Parameter], compute: Callable[..., StepOutputs],
                 enabled: bool | None = None, warmup: int = 3, max_graphs: int = 16) -> None:
        self.params = list(params)
        self.compute = compute
        dev = self.params[0].device
        self.enabled = (dev.type == "cuda") if enabled is None else bool(enabled)
        if self.enabled and dev.type != "cuda":
            raise ValueError("CapturedStep: CUDA graphs need the parameters on a CUDA device")
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], StepOutputs,
                                        list[torch.Tensor | None]]] = {}
        self.eager_calls = 0
        self.failure: str | None = None  # why capture was given up, when it was

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    def _zero(self) -> None:
        for p in self.params:
            p.grad = None

    def _eager(self, inputs: tuple[torch.Tensor, ...]) -> StepOutputs:
        self.eager_calls += 1
        self._zero()
        outs = self.compute(*inputs)
        outs["objective"].backward()
        return {k: v.detach() for k, v in outs.items()}

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> None:
        static = [t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._zero()
                self.compute(*static)["objective"].backward()
        torch.cuda.current_stream().wait_stream(side)
        self._zero()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may plan batches
            outs = self.compute(*static)
            outs["objective"].backward()
        outs = {k: v.detach() for k, v in outs.items()}
        self._graphs[self._key(inputs)] = (graph, static, outs, [p.grad for p in self.params])

    @staticmethod
    def _key(inputs: tuple[torch.Tensor, ...]) -> tuple:
        return tuple((tuple(t.shape), t.dtype) for t in inputs)

    def __call__(self, *inputs: torch.Tensor) -> StepOutputs:
        if not self.enabled or self.failure is not None:
            return self._eager(inputs)
        key = self._key(inputs)
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                return self._eager(inputs)
            try:
                self._capture(inputs)
            except Exception as exc:  # e.g. an op that reads a value on the host: run eagerly
                self.failure = f"capture of shapes {key} failed: {type(exc).__name__}: {exc}"
                warnings.warn(f"CapturedStep: {self.failure}; running the step eagerly from now on")
                torch.cuda.synchronize()
                return self._eager(inputs)
        graph, static, outs, grads = self._graphs[key]
        for s, t in zip(static, inputs):
            s.copy_(t, non_blocking=True)
        graph.replay()
        for p, g in zip(self.params, grads):
            p.grad = g
        return outs
