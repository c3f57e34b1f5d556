"""Pluggable negative samplers for the contrastive terms (``negatives.sources``)."""

from fenrec_dist.negatives.samplers import (
    HardNegatives,
    InBatchNegatives,
    NegativeSampler,
    NoiseNegatives,
    StepContext,
    build_samplers,
)

__all__ = [
    "NegativeSampler",
    "InBatchNegatives",
    "HardNegatives",
    "NoiseNegatives",
    "StepContext",
    "build_samplers",
]
