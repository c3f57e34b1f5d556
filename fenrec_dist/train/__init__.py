"""Training: batch planning, the per-epoch loop, checkpoints and drivers."""
