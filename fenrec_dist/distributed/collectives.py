"""torch.distributed helpers for global negatives, intents and evaluation.

Each is a no-op (or the identity) when no process group is initialised, so the
same epoch code runs in one process.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if is_dist() else (0, 1)


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x) for x in out]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` [b_r, ...] in rank order -> [sum b_r, ...].

    Rows may differ in count between ranks. The local rows keep their autograd
    graph; other ranks' rows are constants (their gradients are computed there).
    """
    if not is_dist():
        return x
    rank, size = world()
    sizes = _gather_sizes(x.shape[0], x.device)
    m = max(sizes)
    pad = torch.zeros((m - x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    padded = torch.cat([x.detach(), pad]) if m > x.shape[0] else x.detach().contiguous()
    bufs = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(bufs, padded)
    parts = [x if r == rank else bufs[r][: sizes[r]] for r in range(size)]
    return torch.cat(parts)


def all_reduce_sums(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum a dict of floats over ranks (keys must match on every rank)."""
    if not is_dist():
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def all_reduce_min(n: int, device: torch.device) -> int:
    if not is_dist():
        return n
    t = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def gather_rows_to_all(ids: np.ndarray, rows: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Gather (ids int64 [n_r], rows [n_r, ...]) from every rank, ordered by id.

    Rows keep their dtype (float32, int64, int8, ...)."""
    if not is_dist():
        order = np.argsort(ids, kind="stable")
        return ids[order], rows[order]
    t_ids = gather_with_grad(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(device))
    t_rows = gather_with_grad(torch.from_numpy(np.ascontiguousarray(rows)).to(device))
    all_ids, all_rows = t_ids.cpu().numpy(), t_rows.cpu().numpy()
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_rows[order]


def broadcast_array(a: np.ndarray | None, shape: tuple[int, ...], device: torch.device) -> np.ndarray:
    """Broadcast a float32 array of known ``shape`` from rank 0."""
    if not is_dist():
        assert a is not None
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device) if dist.get_rank() == 0 else \
        torch.empty(shape, dtype=torch.float32, device=device)
    dist.broadcast(t, 0)
    return t.cpu().numpy()


def barrier() -> None:
    if is_dist():
        dist.barrier()
