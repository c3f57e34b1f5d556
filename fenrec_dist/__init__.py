"""fenrec_dist: distributed training of FENRec sequential recommenders."""

__version__ = "0.1.0"
