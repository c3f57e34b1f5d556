"""Row-sparse Adam for the item table, fused dense Adam for the rest.

With ``loss.rec_softmax: sampled`` a step touches a few thousand item rows (inputs, targets and
their windows, in-batch, random and mined candidates) of a catalogue that may hold millions.
The item table's gradient then arrives as a sparse [I + 1, d] tensor (``F.embedding(...,
sparse=True)`` in the loss and in the encoder's input lookup) and ``RowSparseAdam`` updates
those rows only.

Lazy moments (documented semantics, as ``torch.optim.SparseAdam`` and TF's LazyAdam):

- the step count t is the parameter's, global: it advances once per ``step()`` that finds a
  gradient on the table, whichever rows it touches;
- for a touched row r with gradient g_r (plus ``weight_decay`` * p_r, L2 as torch's Adam):
      m_r <- b1 m_r + (1 - b1) g_r,   v_r <- b2 v_r + (1 - b2) g_r^2,
      p_r <- p_r - lr / (1 - b1^t) * m_r / (sqrt(v_r) / sqrt(1 - b2^t) + eps)
  (torch.optim.Adam's update, row by row);
- an untouched row keeps its parameters and its moments as they are (dense Adam would decay
  its moments and keep moving it by its old momentum).

When every step touches the same rows this is dense Adam exactly (an untouched row of dense
Adam has zero moments and moves by 0 / (0 + eps) = 0); tests/test_sparse_adam.py checks both.
The moment buffers are [I + 1, d] (allocated once); per step the work and the temporaries are
[touched rows, d].
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch


class RowSparseAdam(torch.optim.Optimizer):
    """Lazy row-wise Adam for 2-D parameters whose gradients are sparse (or row-sparse dense).

    Args:
        params: 2-D parameters [rows, d] (the item table).
        lr, betas, eps, weight_decay: as ``torch.optim.Adam`` (no amsgrad).

    A dense gradient is accepted too: its rows with any non-zero entry count as touched (a
    scan of the whole table; the sparse path never scans).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if lr <= 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"RowSparseAdam: invalid lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowSparseAdam: parameters must be 2-D [rows, d], got {tuple(p.shape)}")

    @staticmethod
    def touched(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows long [n], summed gradient rows float [n, d]) of a sparse or dense gradient [R, d]."""
        if grad.is_sparse:
            g = grad.coalesce()
            idx = g.indices()
            if g.sparse_dim() == 1:  # hybrid [rows sparse, d dense]: what embedding lookups give
                return idx[0], g.values()
            rows, inv = torch.unique(idx[0], return_inverse=True)  # fully sparse: scatter into rows
            vals = g.values().new_zeros(rows.numel(), grad.shape[1])
            return rows, vals.index_put_((inv, idx[1]), g.values(), accumulate=True)
        rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
        return rows, grad.index_select(0, rows)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                rows, g = self.touched(p.grad)
                if rows.numel() == 0:
                    continue
                if wd:
                    g = g + wd * p.index_select(0, rows)
                m = state["exp_avg"].index_select(0, rows).mul_(b1).add_(g, alpha=1 - b1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                denom = v.sqrt_().div_(math.sqrt(1 - b2 ** t)).add_(eps)
                p.index_add_(0, rows, m.div_(denom), alpha=-lr / (1 - b1 ** t))
        return loss


class MixedAdam:
    """Row-sparse Adam on the item table and fused dense Adam on every other parameter, behind
    one optimizer's interface: ``step``, ``zero_grad``, ``state_dict``/``load_state_dict``
    ({"dense": ..., "sparse": ...}) and ``param_groups`` (the dense groups, then the sparse).
    """

    def __init__(self, sparse_params: list[torch.nn.Parameter], dense_params: list[torch.nn.Parameter],
                 lr: float, weight_decay: float = 0.0) -> None:
        self.sparse = RowSparseAdam(sparse_params, lr=lr, weight_decay=weight_decay)
        fused = all(p.device.type in ("cpu", "cuda") for p in dense_params)
        self.dense = torch.optim.Adam(dense_params, lr=lr, weight_decay=weight_decay, fused=fused or None)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.dense.param_groups + self.sparse.param_groups

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"dense", "sparse"}:
            raise ValueError(f"MixedAdam.load_state_dict: expected keys dense and sparse, got {sorted(state)} "
                             f"(a checkpoint of the dense optimizer of loss.rec_softmax: full?)")
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients (torch's does not):
    the global L2 norm over every gradient (a sparse one's coalesced values), and every
    gradient scaled by min(1, max_norm / (norm + 1e-6)). Returns the norm before clipping."""
    ps = [p for p in params if p.grad is not None]
    if not ps:
        return torch.zeros(())
    sq = []
    for p in ps:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            sq.append(p.grad.values().float().pow(2).sum())
        else:
            sq.append(p.grad.float().pow(2).sum())
    total = torch.stack(sq).sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in ps:
        p.grad = p.grad * coef.to(p.grad.dtype) if p.grad.is_sparse else p.grad.mul_(coef.to(p.grad.dtype))
    return total
