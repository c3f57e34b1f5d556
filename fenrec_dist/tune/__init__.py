"""Ray Tune sweeps over FENRec hyperparameters (``fenrec tune``).

``space``: the search-space YAML (parsed and checked against the config before any
trial starts); ``trainable``: the Tune function trainable that builds and fits one
trial's TorchTrainer; ``sweep``: the Tuner (search, ASHA, concurrency, resume);
``results``: the trials table, ``best.yaml`` and ``params.png``. Only this package
knows Ray Tune.
"""
