"""SASRec (Kang & McAuley 2018) as used by ICSRec / FENRec.

Post-LayerNorm transformer blocks: LN(x + Dropout(Attn(x))), then
LN(h + Dropout(W2 GELU(W1 h))). Learned absolute position embeddings over the
left-padded window of ``max_len``; causal mask plus key-padding mask; N(0, 0.02)
initialisation; LayerNorm eps 1e-12 — all as the reference code.

Exact speed-ups (``ModelConfig``): ``pack_tokens`` (the default) runs every layer but
attention on the batch's real tokens only and attention per chunk of length-sorted rows
(``model/packing.py``; 7-9% of a Beauty training step, ``bench/bench_step.py``);
without it, ``trim_padding`` drops all-padding left columns while keeping absolute
position ids; ``last_position_only`` computes the last block's queries and feed-forward
only at the last position. All give the same output and gradients as the plain
computation (see tests/test_model.py).

``static_shapes`` (for CUDA graphs, off by default) packs training batches with
``StaticPlan`` instead: one attention grid per batch and token counts rounded up to
``token_multiple``, so shapes take a few values per epoch; same outputs and gradients as
``encode_packed`` to float rounding (tests/test_buckets.py). With ``cuda_graphs`` as well, a
CUDA training call replays its shape's captured forward and backward (``model/graphed.py``),
so any trainer gets the graphs through ``model(ids)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fenrec_dist.config import ModelConfig
from fenrec_dist.model.base import SequenceEncoder, trim_left_padding
from fenrec_dist.model.dropout import Dropout
from fenrec_dist.model.packing import PackPlan, StaticPlan

if TYPE_CHECKING:
    from fenrec_dist.model.graphed import GraphedEncoder

_MASKED = -10000.0  # the reference's additive mask value (exp underflows to exactly 0 in fp32)


def additive_mask(keys: torch.Tensor, last_only: bool = False) -> torch.Tensor:
    """Additive attention mask from keys bool [B, L] (True = a real item): float [B, 1, L, L],
    0 where a query may attend (causal, real keys) and -1e4 elsewhere; with ``last_only`` the
    last query's row [B, 1, 1, L] (every real key).
    """
    allowed = keys[:, None, None, :]  # [B, 1, 1, L]
    if not last_only:
        l = keys.shape[1]
        allowed = allowed & torch.ones(l, l, dtype=torch.bool, device=keys.device).tril()[None, None]
    return torch.zeros(allowed.shape, dtype=torch.float32, device=keys.device).masked_fill_(~allowed, _MASKED)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, attn_dropout: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.attn_dropout = Dropout(attn_dropout)
        self.out_dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x float [B, L, d]; mask float [B, 1, Lq, L] additive (0 or -1e4).

        Returns float [B, L, d], or [B, 1, d] when ``last_only`` (queries at the last
        position only; ``mask`` must then have Lq = 1).
        """
        q_in = x[:, -1:, :] if last_only else x
        q = self._split(self.query(q_in))
        k = self._split(self.key(x))
        v = self._split(self.value(x))
        ctx = self.attend(q, k, v, mask)
        ctx = ctx.transpose(1, 2).reshape(q_in.shape)
        return self.finish(ctx, q_in)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_h) + mask) v with dropout on the probabilities.

        q float [B, h, Lq, d_h]; k, v float [B, h, L, d_h]; mask float [B, 1, Lq, L] additive.
        Returns float [B, h, Lq, d_h].
        """
        if self.training and self.attn_dropout.p > 0:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask
            probs = self.attn_dropout(torch.softmax(scores, dim=-1))
            return probs @ v
        # no dropout: the fused kernel computes the same softmax(q k^T / sqrt(d_h) + mask) v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def finish(self, ctx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LN(residual + Dropout(dense(ctx))): ctx, residual float [..., d] -> float [..., d]."""
        return self.norm(self.out_dropout(self.dense(ctx)) + residual)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.dense_1 = nn.Linear(hidden, hidden * mult)
        self.dense_2 = nn.Linear(hidden * mult, hidden)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [..., d] -> float [..., d]."""
        return self.norm(self.dropout(self.dense_2(F.gelu(self.dense_1(x)))) + x)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg.hidden, cfg.heads, cfg.attn_dropout, cfg.dropout)
        self.ff = FeedForward(cfg.hidden, cfg.ff_mult, cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        return self.ff(self.attn(x, mask, last_only))


class SASRec(SequenceEncoder):
    """SASRec encoder over item ids 1..num_items (0 = padding), window ``max_len``."""

    def __init__(self, cfg: ModelConfig, num_items: int, max_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_items = num_items
        self.max_len = max_len
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden)
        self.emb_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.emb_dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.cfg.init_std)
        if isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    @staticmethod
    def attention_mask(ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Additive mask float [B, 1, L, L] (or [B, 1, 1, L]): causal and key padding."""
        return additive_mask(ids > 0, last_only)

    def sequence_output(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Plain computation: float [B, L, d] outputs at every position (no speed-ups)."""
        return self._encode(input_ids, 0, last_only=False)

    def _encode(self, ids: torch.Tensor, offset: int, last_only: bool) -> torch.Tensor:
        l = ids.shape[1]
        pos = torch.arange(offset, offset + l, device=ids.device)
        x = self.emb_dropout(self.emb_norm(self.item_emb(ids) + self.pos_emb(pos)[None]))
        full_mask = self.attention_mask(ids)
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            if last_only and i == n - 1:
                x = block(x, full_mask[:, :, -1:, :], last_only=True)
            else:
                x = block(x, full_mask)
        return x

    @property
    def packs_tokens(self) -> bool:
        """True when ``forward`` groups rows by length itself (callers pass the whole batch):
        in training, with ``pack_tokens``. Evaluation passes (the clustering pass, scoring)
        already come in length-sorted batches and have no backward: there packing measured
        no faster (6.7 vs 6.8 s for the Beauty clustering pass) and its buffers raised that
        pass's peak resident size by 100-500 MiB, so they keep the trimmed path."""
        return (self.cfg.pack_tokens or self.cfg.static_shapes) and self.training

    def static_plan(self, input_ids: torch.Tensor | np.ndarray, device: torch.device | str | None = None
                    ) -> StaticPlan:
        """``StaticPlan`` of input_ids long [B, W] with this model's buckets (``model.token_multiple``,
        ``model.width_multiple``); with token_multiple 0 the whole [B, W] grid, planned on the
        input's device (``StaticPlan.full_grid``: no host read)."""
        if self.cfg.token_multiple == 0:
            ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.from_numpy(np.asarray(input_ids))
            return StaticPlan.full_grid(ids.to(device) if device is not None else ids, self.max_len)
        return StaticPlan.build(input_ids, self.max_len, self.cfg.token_multiple, self.cfg.width_multiple, device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids long [B, W <= max_len] left-padded -> float [B, d] at the last position."""
        if self.packs_tokens and self.cfg.static_shapes:
            plan = self.static_plan(input_ids)
            if self.cfg.cuda_graphs and input_ids.is_cuda:
                return self.graphed_encoder()(plan)
            return self.encode_static(plan)
        if self.packs_tokens:
            return self.encode_packed(PackPlan.build(input_ids, self.max_len))
        ids, offset = trim_left_padding(input_ids) if self.cfg.trim_padding else (input_ids, 0)
        offset += self.max_len - input_ids.shape[1]  # inputs shorter than max_len are right-aligned
        out = self._encode(ids, offset, last_only=self.cfg.last_position_only)
        return out[:, -1, :]

    def encode_packed(self, plan: PackPlan) -> torch.Tensor:
        """The blocks over packed tokens (``model/packing.py``): float [B, d] per row.

        Embeddings, projections, feed-forward, LayerNorm and dropout act on the T real tokens
        x [T, d]; each attention chunk scatters its tokens' q, k, v into a zero [rows, length]
        grid (padding cells are masked keys, and their query outputs are never read) and
        gathers the outputs of its real cells back. The last block, with
        ``last_position_only``, takes queries and feed-forward at each row's last token.
        """
        x = self.emb_dropout(self.emb_norm(self.item_emb(plan.token_ids) + self.pos_emb(plan.token_pos)))
        d = x.shape[1]
        n = len(self.blocks)
        masks: dict[bool, list[torch.Tensor]] = {}  # per chunk, shared by the blocks: last_only -> masks
        for i, block in enumerate(self.blocks):
            att = block.attn
            last_only = self.cfg.last_position_only and i == n - 1
            if last_only not in masks:
                masks[last_only] = [additive_mask(~c.pad, last_only) for c in plan.chunks]
            projs = [att.key, att.value] if last_only else [att.query, att.key, att.value]
            packed = F.linear(x, torch.cat([p.weight for p in projs]), torch.cat([p.bias for p in projs]))
            width = packed.shape[1]
            q_in = x[plan.last] if last_only else x
            q_last = att.query(q_in) if last_only else None
            outs, row = [], 0
            for c, mask in zip(plan.chunks, masks[last_only]):
                grid = packed[c.start:c.end]  # a chunk without padding is its own grid
                if not c.dense:  # in place into a fresh buffer: one copy
                    grid = packed.new_zeros(c.rows * c.length, width).index_copy_(0, c.flat, grid)
                # [P, B, h, L, dh] in one copy; unbind's backward stacks the parts' gradients
                # into one buffer (selects would each zero-fill a grid-sized gradient)
                parts = grid.view(c.rows, c.length, width // d, att.heads, att.head_dim).permute(2, 0, 3, 1, 4)
                parts = parts.contiguous().unbind(0)
                if last_only:
                    k, v = parts
                    q = q_last[row:row + c.rows].view(c.rows, att.heads, 1, att.head_dim)
                else:
                    q, k, v = parts
                ctx = att.attend(q, k, v, mask).transpose(1, 2).reshape(-1, d)  # [B * Lq, d]
                outs.append(ctx if last_only or c.dense else ctx.index_select(0, c.flat))
                row += c.rows
            ctx = outs[0] if len(outs) == 1 else torch.cat(outs)
            x = block.ff(att.finish(ctx, q_in))
        return (x if self.cfg.last_position_only else x[plan.last])[plan.inverse]

    def __getstate__(self) -> dict:
        """Pickling and deepcopy leave the CUDA graphs behind (a copy captures its own)."""
        state = dict(super().__getstate__())
        state.pop("_graphed_encoder", None)
        return state

    def graphed_encoder(self) -> "GraphedEncoder":
        """The model's ``GraphedEncoder`` (``model.cuda_graphs``), made at the first CUDA training
        call; it follows the caller's autocast. Kept outside the module's state (not a submodule,
        not in ``state_dict``)."""
        enc = self.__dict__.get("_graphed_encoder")
        if enc is None:
            from fenrec_dist.model.graphed import GraphedEncoder

            enc = GraphedEncoder(self, autocast_dtype="context")
            self.__dict__["_graphed_encoder"] = enc
        return enc

    def encode_static(self, plan: StaticPlan) -> torch.Tensor:
        """The blocks over a batch packed in static shapes (``StaticPlan``): float [N, d] per row,
        in batch order. Shapes depend only on ``plan.key``, and no step reads a tensor's value
        on the host, so the computation can be captured in a CUDA graph per key.

        Position-wise layers act on the T_b tokens x [T_b, d] (fillers included); each block
        gathers q, k, v of the real tokens into the [N, L] grid (padding cells read an appended
        zero row, as ``encode_packed``'s zero-filled grids), attends with the causal and
        key-padding mask of ``plan.keys``, and gathers each token's output back from its cell.
        Filler tokens are never in the grid and their states are never read: no output or
        gradient depends on them.
        """
        x = self.emb_dropout(self.emb_norm(self.item_emb(plan.token_ids) + self.pos_emb(plan.token_pos)))
        d = x.shape[1]
        rows, length = plan.keys.shape
        n = len(self.blocks)
        masks: dict[bool, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            att = block.attn
            last_only = self.cfg.last_position_only and i == n - 1
            if last_only not in masks:
                masks[last_only] = additive_mask(plan.keys, last_only)  # [N, 1, Lq, L]
            projs = [att.key, att.value] if last_only else [att.query, att.key, att.value]
            packed = F.linear(x, torch.cat([p.weight for p in projs]), torch.cat([p.bias for p in projs]))
            width = packed.shape[1]
            grid = torch.cat([packed, packed.new_zeros(1, width)]).index_select(0, plan.cell_token)
            parts = grid.view(rows, length, width // d, att.heads, att.head_dim).permute(2, 0, 3, 1, 4)
            parts = parts.contiguous().unbind(0)
            if last_only:
                k, v = parts
                q_in = x.index_select(0, plan.last)  # [N, d]
                q = att.query(q_in).view(rows, att.heads, 1, att.head_dim)
            else:
                q, k, v = parts
                q_in = x
            ctx = att.attend(q, k, v, masks[last_only]).transpose(1, 2).reshape(-1, d)  # [N * Lq, d]
            if not last_only:
                ctx = ctx.index_select(0, plan.token_cell)  # [T_b, d]
            x = block.ff(att.finish(ctx, q_in))
        return x if self.cfg.last_position_only else x.index_select(0, plan.last)
