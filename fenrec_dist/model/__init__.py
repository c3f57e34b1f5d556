"""Sequence encoders: SASRec (default) and GRU4Rec behind one interface."""

from __future__ import annotations

from fenrec_dist.config import ModelConfig
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.model.gru4rec import GRU4Rec
from fenrec_dist.model.sasrec import SASRec


def build_encoder(cfg: ModelConfig, num_items: int, max_len: int) -> SequenceEncoder:
    """Build the configured encoder over item ids 1..num_items (0 = padding)."""
    if cfg.encoder == "sasrec":
        return SASRec(cfg, num_items, max_len)
    if cfg.encoder == "gru4rec":
        return GRU4Rec(cfg, num_items, max_len)
    raise ValueError(f"model.encoder: unknown encoder {cfg.encoder!r}")


__all__ = ["SequenceEncoder", "SASRec", "GRU4Rec", "build_encoder"]
