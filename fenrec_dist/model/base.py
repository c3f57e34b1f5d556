"""The interface every sequence encoder implements."""

from __future__ import annotations

import torch
from torch import nn


def trim_left_padding(input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cut the columns that are padding (id 0) in every row of a left-padded batch.

    Args:
        input_ids: long [B, L], left-padded with 0, most recent item last.

    Returns:
        (ids long [B, L'], offset) where L' = L - offset is the longest row and
        ``offset`` is the absolute position of the first kept column, so position
        ids stay ``offset + arange(L')``.
    """
    nonzero = (input_ids != 0).any(dim=0)
    if not bool(nonzero.any()):
        return input_ids[:, -1:], input_ids.shape[1] - 1
    first = int(nonzero.to(torch.int8).argmax())
    return input_ids[:, first:], first


class SequenceEncoder(nn.Module):
    """Maps left-padded item-id sequences to one representation per sequence.

    Subclasses own ``item_emb`` (an ``nn.Embedding`` of num_items + 1 rows, row 0 the
    padding) whose weight is also the output layer: scores are ``h @ item_emb.weight.T``.
    """

    item_emb: nn.Embedding
    num_items: int
    max_len: int

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids long [B, max_len] left-padded -> float [B, d], the last position's output."""
        raise NotImplementedError

    def item_weights(self) -> torch.Tensor:
        """float [num_items + 1, d]: the item embedding table used for scoring."""
        return self.item_emb.weight

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """h float [B, d] -> logits float [B, num_items + 1] (column 0 is padding)."""
        return h @ self.item_emb.weight.t()
