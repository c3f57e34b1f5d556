"""Optimizers: dense fused Adam for ``loss.rec_softmax: full``; row-sparse Adam on the item
table plus fused Adam on the rest for ``sampled`` (``optim/sparse_adam.py``)."""

from __future__ import annotations

from typing import Any

import torch

from fenrec_dist.optim.sparse_adam import MixedAdam, RowSparseAdam, clip_grad_norm


def make_optimizer(model: torch.nn.Module, cfg: Any) -> "torch.optim.Adam | MixedAdam":
    """The optimizer of a run (``cfg``: a ``config.Config``).

    ``loss.rec_softmax: full``: ``torch.optim.Adam(model.parameters(), lr, weight_decay,
    fused=True)``, exactly today's ``make_adam``. ``sampled``: the encoder's item lookup is made
    sparse (``model.item_emb.sparse = True``, so the input embedding's gradient is the touched
    rows only, like the sampled loss's) and a ``MixedAdam``: ``RowSparseAdam`` on
    ``model.item_emb.weight`` and fused Adam on the other parameters. With sparse gradients,
    clip with ``optim.clip_grad_norm`` (torch's ``clip_grad_norm_`` refuses sparse tensors).

    Args:
        model: the encoder (a ``SequenceEncoder`` with ``item_emb``), not a DDP/DeepSpeed wrapper.
    """
    lr, wd = cfg.train.lr, cfg.train.weight_decay
    if cfg.loss.rec_softmax != "sampled":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd, fused=True)
    emb = model.item_emb
    emb.sparse = True
    table = emb.weight
    dense = [p for p in model.parameters() if p is not table]
    return MixedAdam([table], dense, lr=lr, weight_decay=wd)


__all__ = ["MixedAdam", "RowSparseAdam", "clip_grad_norm", "make_optimizer"]
