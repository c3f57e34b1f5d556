"""Sequence data pipeline: readers, leave-one-out samples, prepared datasets."""
