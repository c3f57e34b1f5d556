"""Token packing for the SASRec encoder: which rows share an attention chunk, and where
each real token sits in the packed [T, d] layout and in its chunk's padded grid.

Position-wise layers (embeddings, projections, feed-forward, LayerNorm, dropout) act on the
T real tokens of a batch only; attention, the one op that mixes positions, runs per chunk of
length-sorted rows on a [rows, longest length] grid with the padding masked. Packed tokens
are ordered chunk by chunk, row by row, oldest first, so each chunk's tokens are one
contiguous range and each row's last token ends its own run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def length_chunks(lengths: np.ndarray, chunk_overhead: int = 512) -> list[np.ndarray]:
    """Split rows into length-sorted chunks that minimise the encoder's work.

    A chunk of rows is padded to its longest row, so it costs (rows x longest length)
    tokens, plus a fixed ``chunk_overhead`` (in tokens) for the per-call work of one more
    forward/backward. The best cut points of the sorted lengths are found exactly by
    dynamic programming over the distinct lengths (at most max_len + 1 of them).

    Args:
        lengths: int [N] non-padding length of each row.
        chunk_overhead: the cost of one more chunk in tokens; 512 measured best on Beauty
            (2 CPU threads) within a flat optimum (384..1536 within 3%; 256..4096 within
            the noise for the packed encoder, whose padding costs attention only).

    Returns:
        list of int arrays of row indices, each sorted by length, covering range(N) once.
    """
    order = np.argsort(lengths, kind="stable")
    s = np.asarray(lengths)[order]
    n = len(s)
    if n == 0:
        return []
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(s)) + 1, [n]])  # cut only between distinct lengths
    best = np.zeros(len(cuts))
    prev = np.zeros(len(cuts), dtype=np.int64)
    for j in range(1, len(cuts)):
        cost = best[:j] + (cuts[j] - cuts[:j]) * max(int(s[cuts[j] - 1]), 1) + chunk_overhead
        prev[j] = int(np.argmin(cost))
        best[j] = cost[prev[j]]
    bounds = []
    j = len(cuts) - 1
    while j > 0:
        bounds.append((cuts[prev[j]], cuts[j]))
        j = int(prev[j])
    return [order[a:b] for a, b in reversed(bounds)]


@dataclass
class Chunk:
    """One attention chunk: packed tokens ``start:end`` laid out on a [rows, length] grid.

    flat: long [end - start], the grid cell (row-major, rows x length) of each token.
    pad: bool [rows, length], True where the grid cell is padding.
    """

    start: int
    end: int
    rows: int
    length: int
    flat: torch.Tensor
    pad: torch.Tensor

    @property
    def dense(self) -> bool:
        """True when no cell is padding (all rows of one length): the tokens are the grid."""
        return self.end - self.start == self.rows * self.length


@dataclass
class PackPlan:
    """How a left-padded batch long [N, W] is packed.

    token_ids, token_pos: long [T] item id and absolute position id (as in the padded
        window of ``max_len``: column c of W has position c + max_len - W) of every real token.
    chunks: the attention chunks, covering the T tokens in order.
    last: long [N] packed index of each row's last token, rows in chunk order.
    inverse: long [N] maps chunk order back to the batch's row order (out = h[inverse]).
    """

    token_ids: torch.Tensor
    token_pos: torch.Tensor
    chunks: list[Chunk]
    last: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def build(cls, input_ids: torch.Tensor, max_len: int, chunk_overhead: int = 512) -> "PackPlan":
        """Plan for ``input_ids`` long [N, W] (left-padded with 0, W <= max_len). A row with no
        item keeps its last column (the padding id), as ``trim_left_padding`` does."""
        ids = input_ids.detach().cpu().numpy()
        width = ids.shape[1]
        n = np.maximum((ids != 0).sum(axis=1), 1)
        groups = length_chunks(n, chunk_overhead)
        tok_rows, tok_cols, last = [], [], []
        chunks: list[Chunk] = []
        start = 0
        for rows in groups:
            length = int(n[rows].max())
            real = np.arange(length)[None, :] >= (length - n[rows])[:, None]  # [rows, length]
            rr, cc = np.nonzero(real)  # row-major: each row's tokens, oldest first
            tok_rows.append(rows[rr])
            tok_cols.append(width - length + cc)
            count = len(rr)
            chunks.append(Chunk(start, start + count, len(rows), length,
                                torch.from_numpy(rr * length + cc), torch.from_numpy(~real)))
            last.append(start + np.cumsum(n[rows]) - 1)
            start += count
        rows_all = np.concatenate(tok_rows) if tok_rows else np.zeros(0, dtype=np.int64)
        cols_all = np.concatenate(tok_cols) if tok_cols else np.zeros(0, dtype=np.int64)
        order = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
        dev = input_ids.device
        plan = cls(
            token_ids=torch.from_numpy(ids[rows_all, cols_all]).to(dev),
            token_pos=torch.from_numpy(cols_all + (max_len - width)).to(dev),
            chunks=chunks,
            last=torch.from_numpy(np.concatenate(last) if last else np.zeros(0, dtype=np.int64)).to(dev),
            inverse=torch.from_numpy(np.argsort(order, kind="stable")).to(dev),
        )
        if dev.type != "cpu":
            for c in plan.chunks:
                c.flat, c.pad = c.flat.to(dev), c.pad.to(dev)
        return plan


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` (>= 1) that is >= n."""
    return -(-int(n) // multiple) * multiple


@dataclass
class StaticPlan:
    """A left-padded batch long [N, W] packed in static, bucketed shapes (``model.static_shapes``).

    A CUDA graph replays fixed shapes, so unlike ``PackPlan`` (chunks of data-dependent sizes) the
    plan has one attention grid over all N rows in batch order, [N, L] with L the longest row
    rounded up to ``width_multiple`` (at most W), and the token count T rounded up to
    ``token_multiple``: T_b = round_up(T). The T_b - T filler tokens (item 0 at position 0) pass
    through the position-wise layers but are never placed in the grid nor read, so no output and
    no gradient depends on them. Shapes then take a few values per epoch (key: N, T_b, L): Beauty's
    2 x 256-row batches hold 3,842-4,779 tokens (5th-95th percentile), 4-5 buckets of 512.

    token_ids, token_pos: long [T_b] item id and absolute position id of each token: the real
        tokens row by row (batch order, oldest first), then the fillers.
    cell_token: long [N * L] the token of each grid cell (row-major), T_b for padding cells (a
        zero row appended to the packed activations).
    token_cell: long [T_b] the grid cell of each token (fillers: cell 0, never read).
    keys: bool [N, L] True at the grid cells that hold a real token (rows right-aligned).
    last: long [N] the token index of each row's last token.
    tokens: T, the number of real tokens (-1 from ``full_grid``, which does not count them).

    ``full_grid`` is the variant without bucketing (token_multiple 0): every cell of the input is
    a token, the plan is built on the device, and no step reads a value on the host.
    """

    token_ids: torch.Tensor
    token_pos: torch.Tensor
    cell_token: torch.Tensor
    token_cell: torch.Tensor
    keys: torch.Tensor
    last: torch.Tensor
    tokens: int

    @property
    def key(self) -> tuple[int, int, int]:
        """(N, T_b, L): the shapes a captured graph is specific to."""
        n, width = self.keys.shape
        return n, int(self.token_ids.shape[0]), width

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The plan's tensors in a fixed order (``from_tensors`` rebuilds the plan)."""
        return self.token_ids, self.token_pos, self.cell_token, self.token_cell, self.keys, self.last

    @classmethod
    def from_tensors(cls, tensors: tuple[torch.Tensor, ...], tokens: int = -1) -> "StaticPlan":
        return cls(*tensors, tokens=tokens)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "StaticPlan":
        moved = [t.to(device, non_blocking=non_blocking) for t in self.tensors()]
        return StaticPlan.from_tensors(tuple(moved), self.tokens)

    @classmethod
    def full_grid(cls, input_ids: torch.Tensor, max_len: int) -> "StaticPlan":
        """Plan over every cell of input_ids long [N, W] (left-padded, W <= max_len), built with
        tensor operations on the input's device: no value is read on the host, so a CUDA step
        needs no synchronisation to plan its batch. The grid is the input itself ([N, W]); the
        padding cells are the tokens the fillers would be (T_b = N * W, real rows right-aligned),
        so the computation is ``build``'s with no bucketing. Key (N, N * W, W): two shapes per
        epoch (full batches and the last one). ``tokens`` is -1 (not counted, to stay on device)."""
        rows, width = input_ids.shape
        dev = input_ids.device
        ids = input_ids.long()
        n = (ids != 0).sum(dim=1).clamp(min=1)  # [N]; an empty row keeps its last column
        cols = torch.arange(width, device=dev)
        keys = cols[None, :] >= (width - n)[:, None]  # [N, W]
        cells = torch.arange(rows * width, device=dev)
        total = rows * width
        return cls(
            token_ids=ids.reshape(-1),
            token_pos=(cols + (max_len - width)).repeat(rows),
            cell_token=torch.where(keys.reshape(-1), cells, torch.full_like(cells, total)),
            token_cell=cells,
            keys=keys,
            last=torch.arange(1, rows + 1, device=dev) * width - 1,
            tokens=-1,
        )

    @classmethod
    def build(cls, input_ids: torch.Tensor | np.ndarray, max_len: int, token_multiple: int = 512,
              width_multiple: int = 16, device: torch.device | str | None = None) -> "StaticPlan":
        """Plan for ``input_ids`` long [N, W] (left-padded with 0, W <= max_len). A row with no
        item keeps its last column (the padding id), as ``PackPlan`` does. Built on the host;
        the tensors go to ``device`` (default: the input's device)."""
        if isinstance(input_ids, torch.Tensor):
            dev = input_ids.device if device is None else torch.device(device)
            ids = input_ids.detach().cpu().numpy()
        else:
            dev = torch.device("cpu" if device is None else device)
            ids = np.asarray(input_ids)
        rows, width_in = ids.shape
        n = np.maximum((ids != 0).sum(axis=1), 1)  # [N] tokens per row
        width = min(width_in, round_up(int(n.max()) if rows else 1, width_multiple))
        total = int(n.sum())
        t_b = round_up(max(total, 1), token_multiple)
        real = np.arange(width_in)[None, :] >= (width_in - n)[:, None]  # [N, W] real columns
        rr, cc = np.nonzero(real)  # row-major: each row's tokens, oldest first
        cells = rr * width + (cc - (width_in - width))  # right-aligned in the [N, L] grid
        token_ids = np.zeros(t_b, dtype=np.int64)
        token_pos = np.zeros(t_b, dtype=np.int64)
        token_ids[:total] = ids[rr, cc]
        token_pos[:total] = cc + (max_len - width_in)
        cell_token = np.full(rows * width, t_b, dtype=np.int64)
        cell_token[cells] = np.arange(total)
        token_cell = np.zeros(t_b, dtype=np.int64)
        token_cell[:total] = cells
        keys = np.zeros(rows * width, dtype=bool)
        keys[cells] = True
        last = np.cumsum(n) - 1
        arrays = (token_ids, token_pos, cell_token, token_cell, keys.reshape(rows, width), last)
        return cls.from_tensors(tuple(torch.from_numpy(a).to(dev) for a in arrays), total)
