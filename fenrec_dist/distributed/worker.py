"""The per-worker training function that Ray Train runs on every rank.

It is the single-process epoch (fenrec_dist.train.loop) with three changes passed in
as arguments: representations are all-gathered so negatives are global (each rank computes
the contrastive loss of its own rows against the whole global batch, so that work divides
by the world size), k-means runs once on every rank's representations, and metric sums are
all-reduced. State is
checkpointed through ``ray.train.report`` every epoch and restored at the top.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from fenrec_dist.config import Config, config_from_dict
from fenrec_dist.data.dataset import PreparedData, SampleTable, load_prepared, table_to_samples
from fenrec_dist.distributed import collectives as C
from fenrec_dist.intents import IntentClusters
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.metrics import finalize
from fenrec_dist.model import build_encoder
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.train.batches import PartnerIndex, epoch_batches, epoch_rng
from fenrec_dist.train.checkpoint import load_state, rng_state, save_state, set_rng_state
from fenrec_dist.train.early_stopping import EarlyStopping
from fenrec_dist.train.loop import embed, evaluate_sums, make_adam, torch_step, train_epoch
from fenrec_dist.train.memory import release_free_memory
from fenrec_dist.train.single import negatives_record, time_is_up

STATE_TAG = "state"
FAULT_ENV = "FENREC_FAULT_AT"  # "EPOCH:BATCH:RANK:MARKER_FILE" - kill this worker once (failure tests)


def fault_injector(epoch: int, rank: int):  # type: ignore[no-untyped-def]
    """A per-batch hook that SIGKILLs this worker at the configured point, once.

    Reads ``FENREC_FAULT_AT``; the marker file makes the restarted run go through.
    Returns None when no fault is requested here.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    e, b, r, marker = spec.split(":", 3)
    if int(e) != epoch or int(r) != rank or Path(marker).exists():
        return None
    target = int(b)
    count = [0]

    def hook() -> None:
        count[0] += 1
        if count[0] == target:
            Path(marker).write_text(f"killed rank {rank} at epoch {epoch} batch {target}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _before(hook, step):  # type: ignore[no-untyped-def]
    def wrapped(loss: torch.Tensor) -> None:
        hook()
        step(loss)

    return wrapped


def materialize_shard(shard: Any, max_len: int, horizon: int, rank: int = 0, world_size: int = 1) -> SampleTable:
    """This worker's rows from Ray Data, in sample-id order (so epoch plans are reproducible).

    Every worker streams the dataset and keeps the rows with ``sample_id % world_size ==
    rank``: the split is a pure function of the data, so a restarted worker (or a resumed
    run) trains on exactly the same rows. (A streaming split would read each row once but
    hands rows to whichever worker asks first, which broke exact resume.)
    """
    kept: list[pa.Table] = []
    for b in shard.iter_batches(batch_size=8192, batch_format="pyarrow", prefetch_batches=2):
        if world_size > 1:
            ids = b.column("sample_id").to_numpy()
            b = b.filter(pa.array(ids % world_size == rank))
        if b.num_rows:
            kept.append(b)
    if not kept:
        raise RuntimeError("this worker received no training rows; use fewer workers or more data")
    samples = table_to_samples(pa.concat_tables(kept), max_len, horizon)
    return samples.subset(np.argsort(samples.sample_id, kind="stable"))


def cluster_across_ranks(sample_ids: np.ndarray, reprs: np.ndarray, k: int, niter: int, seed: int,
                         device: torch.device, nredo: int = 1) -> IntentClusters:
    """k-means once over every rank's representations, in sample-id order (as in one
    process), on rank 0; the centroids are broadcast so all ranks assign identically.

    Args:
        sample_ids: int64 [n_r] this rank's sample ids; reprs: float32 [n_r, d].
    """
    _, all_reprs = C.gather_rows_to_all(sample_ids, reprs, device)
    return cluster_gathered(all_reprs, k, niter, seed, device, nredo)


def cluster_gathered(all_reprs: np.ndarray, k: int, niter: int, seed: int, device: torch.device,
                     nredo: int = 1) -> IntentClusters:
    """k-means on rank 0 over the gathered representations float32 [N, d]; centroids broadcast."""
    rank, _ = C.world()
    cents = IntentClusters.fit(all_reprs, k, niter, seed=seed, nredo=nredo).centroids if rank == 0 else None
    return IntentClusters(C.broadcast_array(cents, (min(k, all_reprs.shape[0]), all_reprs.shape[1]), device))


def epoch_representations_distributed(encoder: SequenceEncoder, local: SampleTable, cfg: Config, epoch: int,
                                      device: torch.device, need_reprs: bool = False
                                      ) -> tuple[IntentClusters | None, np.ndarray | None]:
    """Each rank embeds its rows (eval mode); the representations of all samples are
    gathered to every rank in sample-id order (float32 [N, d]) and clustered once (see
    ``cluster_gathered``). Returns (intents or None, all representations or None)."""
    if cfg.loss.beta_fine <= 0 and not need_reprs:
        return None, None
    reprs = embed(encoder, local.inputs, cfg.intents.batch_size, device)
    _, all_reprs = C.gather_rows_to_all(local.sample_id, reprs, device)
    intents = cluster_gathered(all_reprs, cfg.intents.k, cfg.intents.niter, cfg.train.seed + epoch, device,
                               cfg.intents.nredo) \
        if cfg.loss.beta_fine > 0 else None
    return intents, all_reprs


def make_refresher(cfg: Config, data: PreparedData, device: torch.device):  # type: ignore[no-untyped-def]
    """The index refresher of this worker (rank 0 saves under the run's storage), or None."""
    if "index" not in cfg.negatives.sources:
        return None
    import ray.train

    from fenrec_dist.negatives.index import TrainingFacts
    from fenrec_dist.negatives.refresh import IndexRefresher
    from fenrec_dist.negatives.store import NegativesStore

    rank, size = C.world()
    store = None
    if rank == 0:
        storage = ray.train.get_context().get_storage()
        store = NegativesStore(storage.experiment_fs_path, storage.storage_filesystem)
    return IndexRefresher(cfg, TrainingFacts.from_table(data.train), store, rank, size,
                          gather_rows=lambda ids, rows: C.gather_rows_to_all(ids, rows, device),
                          gpu_id=(device.index or 0) if device.type == "cuda" else 0)


def evaluate_distributed(encoder: SequenceEncoder, data: PreparedData, cfg: Config, split: str,
                         device: torch.device) -> dict[str, float]:
    """Users split across ranks (rank::world), metric sums all-reduced."""
    rank, size = C.world()
    part = data.eval.subset(np.arange(rank, len(data.eval.user), size))
    sums = evaluate_sums(encoder, part, split, data.max_len, cfg.eval.batch_size, cfg.eval.item_chunk,
                         list(cfg.eval.ks), device)
    return finalize(C.all_reduce_sums(sums, device))


class _TorchDDP:
    """Plain torch data parallel path (``deepspeed.enabled: false``)."""

    def __init__(self, model: torch.nn.Module, cfg: Config) -> None:
        import ray.train.torch

        self.module = model
        self.net = ray.train.torch.prepare_model(model, move_to_device=False)
        self.optimizer = make_adam(model.parameters(), cfg.train.lr, cfg.train.weight_decay)
        self.step = torch_step(model, self.optimizer, cfg.train.grad_clip)


BATCH_ORDER_STREAM = 1 << 20  # epoch_rng stream of the batch order, shared by the ranks (see epoch_batches)


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": Config as a dict}."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    t_start = time.perf_counter()
    cfg = config_from_dict(config["cfg"])
    rank, size = C.world()
    device = ray.train.torch.get_device()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    t_load = time.perf_counter()
    local = materialize_shard(ray.train.get_dataset_shard("train"), data.max_len, data.horizon, rank, size)
    t_ingest = time.perf_counter()

    torch.manual_seed(cfg.train.seed)
    model = build_encoder(cfg.model, data.num_items, data.max_len).to(device)
    if cfg.deepspeed.enabled:
        from fenrec_dist.distributed.engine import build_engine

        engine = build_engine(model, cfg, device)
        net, encoder = engine, engine.module

        def step(loss: torch.Tensor) -> None:
            engine.backward(loss)
            engine.step()
    else:
        ddp = _TorchDDP(model, cfg)
        net, encoder, step = ddp.net, model, ddp.step

    t_engine = time.perf_counter()
    startup = {"load_eval_and_partners": t_load - t_start, "ray_data_ingest": t_ingest - t_load,
               "engine_init": t_engine - t_ingest, "local_rows": float(len(local))}
    stopper = EarlyStopping(cfg.train.patience)
    start_epoch = 0
    best_state: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            d = Path(d)
            client = load_state(d / "client_state.pt")
            if cfg.deepspeed.enabled:
                engine.load_checkpoint(str(d), tag=STATE_TAG)
            else:
                encoder.load_state_dict(load_state(d / "model.pt"))
                ddp.optimizer.load_state_dict(load_state(d / "optimizer.pt"))
            stopper = EarlyStopping.from_state(client["early_stopping"])
            start_epoch = int(client["epoch"])
            best_state = load_state(d / "best_model.pt", map_location=device)
            rng_file = d / f"rng_rank{rank}.pt"
            if rng_file.exists():
                set_rng_state(load_state(rng_file))
        if rank == 0:
            print(f"[fenrec] resumed after epoch {start_epoch - 1} (best {cfg.eval.metric}={stopper.best:.4f}"
                  f"@{stopper.best_epoch})", flush=True)

    loss_fn = FENRecLoss(cfg.loss, cfg.negatives, comm=C.ProcessGroupComm(max_rows=cfg.train.batch_size))
    partners = PartnerIndex.build(data.train.target, data.num_items)

    def report(metrics: dict[str, Any], next_epoch: int) -> None:
        """Checkpoint everything (model, optimizer, early stopping, RNG, best weights) and report."""
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            client = {"epoch": next_epoch, "early_stopping": stopper.state_dict()}
            if cfg.deepspeed.enabled:
                engine.save_checkpoint(tmp, tag=STATE_TAG)
            elif rank == 0:
                save_state(t / "model.pt", encoder.state_dict())
                save_state(t / "optimizer.pt", ddp.optimizer.state_dict())
            save_state(t / f"rng_rank{rank}.pt", rng_state())
            if rank == 0:
                save_state(t / "client_state.pt", client)
                save_state(t / "best_model.pt", best_state)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))

    refresher = make_refresher(cfg, data, device)
    next_epoch = start_epoch
    for epoch in range(start_epoch, cfg.train.epochs):
        if stopper.should_stop:
            break
        time_up = epoch > start_epoch and time_is_up(cfg, t_start)
        if C.all_reduce_min(int(not time_up), device) == 0:
            if rank == 0:
                print(f"[fenrec] train.time_limit_min={cfg.train.time_limit_min} reached; stopping before epoch {epoch}",
                      flush=True)
            break
        t_epoch = time.perf_counter()
        t0 = time.perf_counter()
        intents, reprs = epoch_representations_distributed(encoder, local, cfg, epoch, device,
                                                           need_reprs=refresher is not None)
        release_free_memory()  # each phase starts from a trimmed heap, so phase peaks do not stack
        t_cluster = time.perf_counter() - t0
        index = None
        if refresher is not None:
            t0 = time.perf_counter()
            index = refresher.refresh(epoch, reprs, device, intents)
            t_index = time.perf_counter() - t0
        batches = epoch_batches(local.input_len, cfg.train.batch_size, epoch_rng(cfg.train.seed, epoch, rank),
                                cfg.train.length_grouping, cfg.train.length_bucket_batches,
                                order_rng=epoch_rng(cfg.train.seed, epoch, BATCH_ORDER_STREAM))  # alike on all ranks
        batches = batches[: C.all_reduce_min(len(batches), device)]  # collectives need equal step counts
        hook = fault_injector(epoch, rank)
        epoch_step = step if hook is None else _before(hook, step)
        res = train_epoch(net, encoder, epoch_step, local, partners, data.train, batches, loss_fn, epoch, intents,
                          cfg.train.seed, device, rank=rank, progress=False, num_batches=len(batches), index=index,
                          trim_every=cfg.train.trim_every,
                          trim_growth_mib=cfg.train.trim_growth_mib)
        release_free_memory()
        neg_rec = None
        if refresher is not None:
            stats = {}
            if loss_fn.after_warmup(epoch):  # same on every rank, so the collective matches
                stats = {k: v / size for k, v in C.all_reduce_sums(
                    {k: res.stats.get(k, 0.0) for k in ("cos_in_batch", "cos_index", "index_used")}, device).items()}
            refresher.record_training(epoch, stats)
            neg_rec = negatives_record(refresher.summary, stats) if rank == 0 else None
        t0 = time.perf_counter()
        valid = evaluate_distributed(encoder, data, cfg, "valid", device)
        release_free_memory()
        t_eval = time.perf_counter() - t0
        if stopper.update(valid[cfg.eval.metric], epoch):
            best_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        samples = C.all_reduce_sums({"n": float(res.samples)}, device)["n"]
        losses = {k: v / size for k, v in C.all_reduce_sums(res.losses, device).items()}
        next_epoch = epoch + 1
        report({
            "epoch": epoch, "loss": losses, "valid": valid, "samples_per_s": samples / max(res.seconds, 1e-9),
            "time": {"cluster": t_cluster, **({"index": t_index} if refresher is not None else {}),
                     "train": res.seconds, "eval": t_eval, "epoch": time.perf_counter() - t_epoch},
            **({"negatives": neg_rec} if neg_rec else {}),
            "best": stopper.best, "best_epoch": stopper.best_epoch, "world_size": size,
            "phase": "hard" if loss_fn.after_warmup(epoch) else "warmup",
            **({"startup": startup} if epoch == start_epoch else {}),
        }, next_epoch)

    # Final: score the best weights on validation and test, on every rank (collectives).
    current = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    encoder.load_state_dict(best_state)
    valid = evaluate_distributed(encoder, data, cfg, "valid", device)
    test = evaluate_distributed(encoder, data, cfg, "test", device)
    encoder.load_state_dict(current)
    report({"final": True, "best_epoch": stopper.best_epoch, "valid": valid, "test": test,
            "epochs_run": next_epoch}, next_epoch)
