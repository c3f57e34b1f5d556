"""The Beauty training-step fixture the step benchmarks share: one package's model, optimizer
and loss (``Arm``) stepping through given batches, built from a raw dataset file.

Used by ``micro/bench_step.py`` (its A/B against a baseline revision's package, see
``_baseline.revision_package``), ``micro/bench_parts.py``, ``micro/bench_dropout.py``,
``micro/profile_step.py``, ``micro/bench_step_cost.py``, ``micro/bench_threads.py``,
``micro/bench_trim.py``, ``micro/bench_compile.py``, ``micro/bench_grouping.py`` and
``epoch/bench_jobs.py``.
"""

from __future__ import annotations

import importlib
import tempfile
import time
from pathlib import Path


class Arm:
    """One package's model, optimizer and loss, stepping through given batches."""

    def __init__(self, pkg: str, cfg_path: str, overrides: list[str], data_dir: str, state: dict | None,
                 centroids) -> None:  # type: ignore[no-untyped-def]
        import torch

        mod = lambda name: importlib.import_module(f"{pkg}.{name}")  # noqa: E731
        self.torch = torch
        cfg = mod("config").load_config(cfg_path, [f"data.path={data_dir}", "negatives.warmup_epochs=0",
                                                   "train.progress=false"] + overrides)
        self.cfg = cfg
        self.data = mod("data.dataset").load_prepared(data_dir, max_len=cfg.data.max_len)
        self.device = torch.device("cpu")
        try:  # one trainer for every runtime (train/trainer.py)
            self.model = mod("train.trainer").build_model(cfg, self.data.num_items, self.data.max_len, self.device)
        except ModuleNotFoundError:  # a baseline revision from before it
            self.model = mod("train.single").build_model(cfg, self.data, self.device)
        if state is not None:
            self.model.load_state_dict(state)
        self.loop = mod("train.loop")
        make_adam = getattr(self.loop, "make_adam", None)  # the package's own optimizer, where it has one
        self.opt = (make_adam(self.model.parameters(), cfg.train.lr) if make_adam is not None
                    else torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, foreach=True))
        self.step = self.loop.torch_step(self.model, self.opt)
        self.loss_fn = mod("losses.fenrec").FENRecLoss(cfg.loss, cfg.negatives)
        self.partners = mod("train.batches").PartnerIndex.build(self.data.train.target, self.data.num_items)
        self.intents = None
        if centroids is not None:
            try:  # negatives/intents.py since ec29aac
                intents = mod("negatives.intents")
            except ModuleNotFoundError:  # a baseline revision from before it
                intents = mod("intents")
            self.intents = intents.IntentClusters(centroids)

    def run(self, batch, seed: int) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
        self.torch.manual_seed(seed)  # dropout draws
        t0, c0 = time.perf_counter(), time.process_time()
        res = self.loop.train_epoch(self.model, self.model, self.step, self.data.train, self.partners, self.data.train,
                                    [batch], self.loss_fn, seed, self.intents, self.cfg.train.seed, self.device)
        return time.perf_counter() - t0, time.process_time() - c0, res.losses


def prepared_arm(data: str, config: str, overrides: list[str] | None = None) -> Arm:
    """An Arm of this checkout's package on ``data`` (a raw dataset file) prepared into a temporary
    directory; the prepared tables are loaded into memory, so the directory is gone on return."""
    from fenrec_dist.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepare(data, Path(tmp) / "data")
        return Arm("fenrec_dist", config, list(overrides or []), str(Path(tmp) / "data"), None, None)


def twin_arms(data: str, config: str, overrides: list[str] | None = None) -> tuple[Arm, Arm]:
    """Two Arms of this checkout's package on ``data`` (prepared once) with the same initial
    model and the same intents of that model (``fit_intents``): the two sides of an A/B."""
    from fenrec_dist.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepare(data, Path(tmp) / "data")
        data_dir = str(Path(tmp) / "data")
        first = Arm("fenrec_dist", config, list(overrides or []), data_dir, None, None)
        centroids = fit_intents(first)
        second = Arm("fenrec_dist", config, list(overrides or []), data_dir, first.model.state_dict(), centroids)
    return first, second


def fit_intents(arm: Arm):  # type: ignore[no-untyped-def]
    """k-means intents of ``arm``'s initial model over the training set; sets ``arm.intents``
    and returns the centroids (to hand to another arm)."""
    from fenrec_dist.negatives.intents import IntentClusters
    from fenrec_dist.train.loop import embed

    reprs = embed(arm.model, arm.data.train.inputs, arm.cfg.intents.batch_size, arm.device)
    centroids = IntentClusters.fit(reprs, arm.cfg.intents.k, arm.cfg.intents.niter, seed=0).centroids
    arm.intents = IntentClusters(centroids)
    return centroids


def epoch0_batches(arm: Arm) -> list:
    """Epoch 0's batches of ``arm``'s training set (seed 0; length-grouped when the config's
    ``train.length_grouping`` is on)."""
    from fenrec_dist.train.batches import epoch_batches, epoch_rng

    return epoch_batches(arm.data.train.input_len, arm.cfg.train.batch_size, epoch_rng(0, 0),
                         arm.cfg.train.length_grouping,
                         arm.cfg.train.length_bucket_batches)
