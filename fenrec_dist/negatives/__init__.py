"""The FAISS subsystem: the per-epoch negative index (build, filter, mine, refresh), its
saved files and their inspection. The negative samplers that consume it live beside the
losses (``fenrec_dist.losses.samplers``)."""
