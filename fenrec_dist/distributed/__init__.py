"""Distributed training: Ray Train driver, DeepSpeed workers, collectives."""
