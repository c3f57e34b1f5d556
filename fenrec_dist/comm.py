"""torch.distributed helpers for global negatives, intents and evaluation (no Ray, no DeepSpeed).

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


def _as_words(x: torch.Tensor) -> torch.Tensor:
    """int32 [b, C]: the bytes of a float32, int32 or int64 tensor [b, ...] as 32-bit words."""
    x = x.detach().contiguous()
    if x.dtype not in (torch.float32, torch.int32, torch.int64):
        raise TypeError(f"gather: unsupported dtype {x.dtype} (float32, int32 or int64)")
    return x.view(torch.int32).reshape(x.shape[0], -1) if x.dim() > 0 else x.view(torch.int32)


def _from_words(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_as_words`` for rows shaped like ``like``."""
    return w.contiguous().view(like.dtype).reshape((w.shape[0],) + tuple(like.shape[1:]))


def _gather_packed(xs: tuple[torch.Tensor, ...], max_rows: int) -> tuple[list[torch.Tensor], list[int]]:
    """All-gather tensors with the same row count b_r in ONE collective: their words side by
    side, padded to ``max_rows`` rows, plus a last row carrying b_r. Returns each tensor
    gathered over ranks (rank order) and the row counts."""
    b = xs[0].shape[0]
    words = [_as_words(x) for x in xs]
    widths = [w.shape[1] for w in words]
    payload = torch.zeros(max_rows + 1, sum(widths), dtype=torch.int32, device=xs[0].device)
    payload[:b] = torch.cat(words, dim=1)
    payload[max_rows, 0] = b
    bufs = [torch.empty_like(payload) for _ in range(dist.get_world_size())]
    dist.all_gather(bufs, payload)
    sizes = [int(buf[max_rows, 0]) for buf in bufs]
    rows = torch.cat([buf[:n] for buf, n in zip(bufs, sizes)])
    outs, col = [], 0
    for x, width in zip(xs, widths):
        outs.append(_from_words(rows[:, col : col + width], x))
        col += width
    return outs, sizes


class _GatherSumGrad(torch.autograd.Function):
    """All-gather of several row-aligned tensors (one collective) whose backward sums each
    float input's gradient over ranks (one all_reduce) and returns this rank's rows."""

    @staticmethod
    def forward(ctx, max_rows, rank, info, *xs):  # type: ignore[no-untyped-def]
        outs, sizes = _gather_packed(xs, max_rows)
        ctx.sizes, ctx.rank = sizes, rank
        info["sizes"] = sizes
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):  # type: ignore[no-untyped-def]
        start = sum(ctx.sizes[: ctx.rank])
        stop = start + ctx.sizes[ctx.rank]
        float_grads = [g for g in grads if g is not None and g.is_floating_point()]
        if not float_grads:
            return (None, None, None) + (None,) * len(grads)
        flat = torch.cat([g.reshape(g.shape[0], -1) for g in float_grads], dim=1).contiguous()
        dist.all_reduce(flat)  # every rank's loss reaches every row: sum, then keep ours
        out, col = [], 0
        for g in grads:
            if g is None or not g.is_floating_point():
                out.append(None)
                continue
            width = g[0].numel()
            out.append(flat[start:stop, col : col + width].reshape((stop - start,) + tuple(g.shape[1:])))
            col += width
        return (None, None, None) + tuple(out)


class ProcessGroupComm:
    """``losses.fenrec.BatchComm`` over the default torch.distributed process group.

    ``gather`` concatenates every rank's rows in rank order, in one collective for all the
    tensors it is given; the gradients that every rank's loss sends into the gathered rows are
    summed back to the rank that owns them (the backward of an all_gather is an all_reduce of
    the gradient, sliced). Every rank must call ``gather``/``sum`` in the same order, as the
    loss does.

    Args:
        max_rows: an upper bound on any rank's row count (the per-worker batch size), so the
            row counts travel inside the gathered payload instead of in a collective of their own.
    """

    def __init__(self, max_rows: int) -> None:
        self.rank, self.world_size = world()
        self.max_rows = max_rows

    def gather(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        b = xs[0].shape[0]
        if any(x.shape[0] != b for x in xs):
            raise ValueError(f"gather: row counts differ: {[x.shape[0] for x in xs]}")
        if b > self.max_rows:
            raise ValueError(f"gather: {b} rows exceed max_rows={self.max_rows} (the per-worker batch size)")
        if self.world_size == 1:
            return list(xs), 0
        info: dict[str, list[int]] = {}
        outs = _GatherSumGrad.apply(self.max_rows, self.rank, info, *xs)
        return list(outs), sum(info["sizes"][: self.rank])

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        out = t.detach().clone()
        dist.all_reduce(out)
        return out


def all_reduce_sums(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum a dict of floats over ranks (keys must match on every rank)."""
    if not is_dist():
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def all_reduce_array(a: np.ndarray, device: torch.device) -> np.ndarray:
    """An array (float64 or int64) summed over ranks; itself in one process."""
    if not is_dist():
        return a
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks, in place (returned); itself in one process."""
    if is_dist():
        dist.all_reduce(t)
    return t


def global_positions(ids: np.ndarray, device: torch.device) -> tuple[np.ndarray, int]:
    """(int64 [n_r]: each of this rank's ids' place among every rank's ids in ascending order,
    the number of ids over all ranks). Ids must be distinct across ranks; every rank holds
    the gathered ids (8 bytes each) for a moment, never their rows."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if not is_dist():
        return np.argsort(np.argsort(ids, kind="stable"), kind="stable"), len(ids)
    every = np.sort(gather_with_grad(torch.from_numpy(ids).to(device)).cpu().numpy())
    return np.searchsorted(every, ids), len(every)


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


def gather_rows_to_root(ids: np.ndarray, rows: np.ndarray, device: torch.device
                        ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Gather (ids int64 [n_r], rows float32 [n_r, d]) from every rank to rank 0, ordered by id;
    (None, None) on the other ranks, which keep no copy. In one process: the rows themselves
    when the ids already ascend (no copy)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if not is_dist():
        if len(ids) < 2 or (np.diff(ids) > 0).all():
            return ids, rows
        order = np.argsort(ids, kind="stable")
        return ids[order], rows[order]
    rank, size = world()
    sizes = _gather_sizes(len(ids), device)
    m = max(sizes)
    d = rows.shape[1]
    pad_ids = torch.full((m,), -1, dtype=torch.long, device=device)
    pad_ids[: len(ids)] = torch.from_numpy(ids).to(device)
    pad_rows = torch.zeros((m, d), dtype=torch.float32, device=device)
    pad_rows[: len(ids)] = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device)
    got_ids = [torch.empty_like(pad_ids) for _ in range(size)] if rank == 0 else None
    dist.gather(pad_ids, got_ids, dst=0)
    del pad_ids
    got_rows = [torch.empty_like(pad_rows) for _ in range(size)] if rank == 0 else None
    dist.gather(pad_rows, got_rows, dst=0)
    del pad_rows
    if rank != 0:
        return None, None
    all_ids = np.concatenate([g[:n].cpu().numpy() for g, n in zip(got_ids, sizes)])
    order = np.argsort(all_ids, kind="stable")
    out = np.empty((len(all_ids), d), dtype=np.float32)
    starts = np.cumsum([0] + sizes)
    where = np.empty(len(all_ids), dtype=np.int64)
    where[order] = np.arange(len(all_ids))  # each gathered row's place in id order
    for r, g in enumerate(got_rows):
        out[where[starts[r]: starts[r + 1]]] = g[: sizes[r]].cpu().numpy()
        got_rows[r] = None  # type: ignore[call-overload]  # free each rank's buffer as soon as it is placed
    return all_ids[order], out


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
