"""GRU4Rec (Hidasi et al.) behind the SequenceEncoder interface (the reference's alternative)."""

from __future__ import annotations

import torch
from torch import nn

from fenrec_dist.config import ModelConfig
from fenrec_dist.model.base import SequenceEncoder, trim_left_padding


class GRU4Rec(SequenceEncoder):
    """Embedding -> dropout -> GRU (``layers``) -> linear; output at the last position.

    Left padding is harmless for the last output only if the GRU never sees it, so the
    padded prefix is cut per batch and rows are packed by length.
    """

    def __init__(self, cfg: ModelConfig, num_items: int, max_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_items = num_items
        self.max_len = max_len
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=0)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, cfg.init_std)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids long [B, L] left-padded -> float [B, d]."""
        ids, _ = trim_left_padding(input_ids)
        lengths = (ids != 0).sum(dim=1).clamp(min=1)
        # Right-align -> left-align so packing can skip the padding.
        l = ids.shape[1]
        idx = (torch.arange(l, device=ids.device)[None, :] + (l - lengths)[:, None]) % l
        left = torch.gather(ids, 1, idx)
        x = self.emb_dropout(self.item_emb(left))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.dense(h[-1])
