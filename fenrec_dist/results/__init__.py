"""Results kept in the repository: ``results/<dataset>/<run>/`` and the report made from them.

A collected run holds the small files a run directory leaves (``config.yaml``,
``metrics.jsonl``, ``final.json`` once it has finished) and ``run.json`` (how, where and when
it ran; see :mod:`fenrec_dist.results.layout`). While a run is in progress its newest
``checkpoints/`` may sit beside them, so that it resumes on another machine
(:mod:`fenrec_dist.results.collect`). :mod:`fenrec_dist.results.report` renders the README's
results table and the validation-curve PNG from these files alone, byte for byte.

Plain Python, PyYAML and matplotlib: nothing here imports Ray, DeepSpeed, torch or the trainer.
"""
