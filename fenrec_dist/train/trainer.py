"""The one trainer: every runtime's epoch loop, resume, per-epoch refresh, evaluation, early
stopping and final scoring.

``fit(cfg, runtime)`` runs in one process (``train.local``) and in every Ray Train worker
(``distributed.ray_runtime``). Each rank reads only its own training shards and users
(``data.shards``); the contrastive terms see the global batch through ``comm``, k-means
trains on a bounded sample gathered from all ranks, and metric sums are all-reduced. With
one rank every collective is the identity.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from fenrec_dist import comm as C
from fenrec_dist.config import Config, ConfigError
from fenrec_dist.data.shards import RankData, load_rank_data
from fenrec_dist.negatives.intents import IntentClusters
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.metrics import finalize
from fenrec_dist.model import build_encoder
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.train import layout
from fenrec_dist.train.batches import PartnerIndex, epoch_batches, epoch_rng
from fenrec_dist.train.checkpoint import atomic_write_text, load_state, rng_state, set_rng_state
from fenrec_dist.train.early_stopping import EarlyStopping
from fenrec_dist.train.loop import StepFn, embed, evaluate_sums, train_epoch
from fenrec_dist.train import memory
from fenrec_dist.train.memory import release_free_memory
from fenrec_dist.train.runtime import Engine, Runtime, precision_context
from fenrec_dist.train.schedule import lr_factor

if TYPE_CHECKING:
    from fenrec_dist.negatives.item_index import ItemIndex

BATCH_ORDER_STREAM = 1 << 20  # epoch_rng stream of the batch order, shared by the ranks (see epoch_batches)
SAMPLE_STREAM = 1 << 21       # epoch_rng stream of the k-means sample
ANN_RECALL_KEY = "ann_recall@20"  # eval.ann: the index's recall of the exact top-20, beside the metrics
STAT_KEYS = ("cos_in_batch", "cos_index", "index_used")  # the loss's negative diagnostics (index runs)
FAULT_ENV = "FENREC_FAULT_AT"  # "EPOCH:BATCH:RANK:MARKER_FILE": SIGKILL this rank there, once (failure tests)
FAULT_HOLD_ENV = "FENREC_FAULT_HOLD_S"  # seconds the rank waits there first, marker written (a test removes its node)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: cuda, but torch {torch.__version__} sees no CUDA device here; "
                          f"use auto (CUDA when present) or cpu")
    return torch.device(name)


def build_model(cfg: Config, num_items: int, max_len: int, device: torch.device) -> SequenceEncoder:
    torch.manual_seed(cfg.train.seed)
    return build_encoder(cfg.model, num_items, max_len).to(device)


def uses_index(cfg: Config) -> bool:
    """Whether the run refreshes a FAISS negative index each epoch."""
    return "index" in cfg.negatives.sources


def time_is_up(cfg: Config, t_start: float) -> bool:
    """``train.time_limit_min`` has passed since training started (0 = never)."""
    return cfg.train.time_limit_min > 0 and time.perf_counter() - t_start >= 60.0 * cfg.train.time_limit_min


def kmeans_sample(sample_id: np.ndarray, total: int, max_points: int, seed: int, epoch: int) -> np.ndarray:
    """bool [n_r]: which of this rank's samples (ids int64 [n_r]) train the epoch's k-means.

    Each sample is kept with probability ``max_points / total`` by a draw that depends on its
    id, the seed and the epoch only, so the sample is the same whatever the number of ranks.
    All samples when ``max_points`` is 0 or at least ``total``."""
    if max_points <= 0 or max_points >= total:
        return np.ones(len(sample_id), dtype=bool)
    u = epoch_rng(seed, epoch, SAMPLE_STREAM).random(total)
    return u[sample_id] < max_points / total


def epoch_intents(encoder: SequenceEncoder, data: RankData, cfg: Config, epoch: int, device: torch.device,
                  need_reprs: bool = False) -> tuple[IntentClusters | None, np.ndarray | None]:
    """The epoch-start pass: a seeded sample of at most about ``intents.max_points`` samples is
    embedded (eval mode, float32 [n, d]; every sample when the index needs them all) and
    clustered (``cluster_across_ranks``); each rank assigns its own samples when the loss asks.
    Returns (intents or None, this rank's representations or None when neither the fine term
    nor the index needs them)."""
    if cfg.loss.beta_fine <= 0 and not need_reprs:
        return None, None
    if cfg.loss.beta_fine <= 0:
        return None, embed(encoder, data.train.inputs, cfg.intents.batch_size, device)
    keep = kmeans_sample(data.train.sample_id, data.total_train, cfg.intents.max_points, cfg.train.seed, epoch)
    every = bool(keep.all())  # no copy of the representations when the sample is all of them
    args = (cfg.intents.k, cfg.intents.niter, cfg.train.seed + epoch, device, cfg.intents.nredo, cfg.intents.backend)
    if need_reprs or every:  # the index needs every sample's representation
        reprs = embed(encoder, data.train.inputs, cfg.intents.batch_size, device)
        ids = data.train.sample_id
        intents = cluster_across_ranks(ids if every else ids[keep], reprs if every else reprs[keep], *args)
        return intents, (reprs if need_reprs else None)
    # only the k-means sample is embedded (rows picked batch by batch: no copy of its inputs),
    # and the points go straight into the clustering, which frees them as soon as it can
    rows = np.flatnonzero(keep)
    return cluster_across_ranks(data.train.sample_id[rows],
                                embed(encoder, data.train.inputs, cfg.intents.batch_size, device, rows=rows),
                                *args), None


def cluster_across_ranks(sample_ids: np.ndarray, reprs: np.ndarray, k: int, niter: int, seed: int,
                         device: torch.device, nredo: int = 1, backend: str = "auto") -> IntentClusters:
    """k-means once over every rank's points, as one process would run it on all of them in
    sample-id order.

    In one process: ``IntentClusters.fit`` (``intents.backend``). With several ranks the points
    stay where they are: FAISS's k-means sharded across the ranks
    (``torch_kmeans.kmeans_sharded``: FAISS's initial points, local assignment, per-cluster sums
    and counts all-reduced), so no rank ever holds more than its own share of the sample; the
    centroids (the same on every rank) equal one process's FAISS k-means up to float rounding.

    Args:
        sample_ids: int64 [n_r] this rank's sample ids; reprs: float32 [n_r, d] their points.
    """
    if not C.is_dist():
        _, points = C.gather_rows_to_root(sample_ids, reprs, device)  # id order (no copy when already)
        return IntentClusters.fit(points, min(k, len(sample_ids)), niter, seed=seed, nredo=nredo,  # type: ignore[arg-type]
                                  backend=backend, device=device)  # type: ignore[arg-type]
    from fenrec_dist.negatives.torch_kmeans import kmeans_sharded

    positions, total = C.global_positions(sample_ids, device)
    x = torch.from_numpy(np.ascontiguousarray(reprs, dtype=np.float32)).to(device)
    res = kmeans_sharded(x, torch.from_numpy(positions), total, min(k, total), C.all_reduce_tensor,
                         niter=niter, seed=seed, nredo=nredo)
    return IntentClusters(res.centroids.detach().float().cpu().numpy(), backend=backend,  # type: ignore[arg-type]
                          device=device)


def user_sample(user: np.ndarray, total_users: int, max_users: int, seed: int) -> np.ndarray:
    """bool [U]: the users (ids int64 [U]) of ``eval.max_users``' fixed sample, each kept with
    probability ``max_users / total_users`` by a hash of its id and the seed (so the same
    users on any number of ranks); all when ``max_users`` is 0 or at least ``total_users``."""
    if max_users <= 0 or max_users >= total_users:
        return np.ones(len(user), dtype=bool)
    with np.errstate(over="ignore"):  # the multiplications wrap modulo 2^64 on purpose
        x = (np.asarray(user, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < max_users / total_users


def item_index_builder(cfg: Config, device: torch.device) -> Callable[[SequenceEncoder, int], "ItemIndex"]:
    """(encoder, seed) -> the item index (``negatives.item_index_*``) of the encoder's current
    item table, every rank alike; one FAISS resources object (GPU placement) for the process."""
    from fenrec_dist.negatives.index import FaissResources
    from fenrec_dist.negatives.item_index import ItemIndex

    neg = cfg.negatives
    resources = FaissResources(neg.index_device, neg.index_gpu_temp_mb, (device.index or 0) if device.type == "cuda" else 0)

    def build(encoder: SequenceEncoder, seed: int) -> ItemIndex:
        table = encoder.item_weights().detach().float().cpu().numpy()
        return ItemIndex.build(table, neg, seed=seed, resources=resources)

    return build


def item_miner(build: Callable[[SequenceEncoder, int], "ItemIndex"], encoder: SequenceEncoder, cfg: Config,
               epoch: int, device: torch.device, first: "ItemIndex | None" = None
               ) -> Callable[[torch.Tensor, np.ndarray], torch.Tensor]:
    """The epoch's item index over the item table (seed train.seed + epoch; ``first`` when the
    caller already built it for this table, e.g. the previous epoch's ``eval.ann`` index) and
    the per-step miner of sampled L_rec: (anchors float [B, d], windows int [B, H+1]) -> the
    ``loss.sampled_mined`` highest-scoring items of each anchor outside its own window, long [B, K]."""
    seed = cfg.train.seed + epoch
    state = {"index": first if first is not None else build(encoder, seed), "steps": 0}
    k, every = cfg.loss.sampled_mined, cfg.negatives.item_index_refresh_steps

    def mine(z: torch.Tensor, window: np.ndarray) -> torch.Tensor:
        if every and state["steps"] and state["steps"] % every == 0:  # negatives.item_index_refresh_steps
            state["index"] = build(encoder, seed)
        state["steps"] += 1
        return torch.from_numpy(state["index"].mine(z.detach().float().cpu().numpy(), k, window)).to(device)

    return mine


def evaluate(encoder: SequenceEncoder, data: RankData, cfg: Config, split: str, device: torch.device,
             index: "ItemIndex | None" = None) -> dict[str, float]:
    """Full-ranking metrics of ``split`` over every rank's users (sums all-reduced).

    With ``eval.ann`` the users are ranked with ``index`` (the item index of the encoder's
    current table; the caller builds it) and the result also holds ``ann_recall@20``: the
    index's recall of the exact top-20 on ``eval.ann_recall_users``' fixed sample of users."""
    if cfg.eval.ann and index is None:
        raise ValueError("evaluate: eval.ann needs the item index of the encoder's current table")
    rows = None
    if cfg.eval.ann:
        rows = user_sample(data.eval.user, data.total_users, cfg.eval.ann_recall_users, cfg.train.seed)
    sums = evaluate_sums(encoder, data.eval, split, data.max_len, cfg.eval.batch_size, cfg.eval.item_chunk,
                         list(cfg.eval.ks), device, index if cfg.eval.ann else None, rows)
    sums = C.all_reduce_sums(sums, device)
    recall, n = sums.pop("ann_recall_sum", None), sums.pop("ann_recall_count", None)
    out = finalize(sums)
    if recall is not None:
        out[ANN_RECALL_KEY] = recall / n if n else float("nan")
    return out


def negatives_record(summary: dict[str, Any] | None, train_stats: dict[str, float]) -> dict[str, float]:
    """The metrics.jsonl ``negatives`` entry of an index run: filter and hardness figures."""
    out = {f"train_{k}": v for k, v in train_stats.items()}
    if summary:
        for k in ("raw_fn_rate", "mined_cos", "random_cos", "kept_per_anchor", "overlap_prev"):
            if summary.get(k) is not None:
                out[k] = float(summary[k])
    return out


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (over every phase: ``memory``)."""
    return memory.peak_rss_mib()


def per_rank(value: float, device: torch.device, scale: int = 1024) -> list[float]:
    """``value`` of every rank, in rank order (a one-element list in one process); exchanged as
    an integer count of 1/``scale`` units."""
    rank, _ = C.world()
    mine = np.array([[int(round(value * scale))]], dtype=np.int64)
    _, rows = C.gather_rows_to_all(np.array([rank], dtype=np.int64), mine, device)
    return [float(v) / scale for v in rows[:, 0]]


def fault_hook(epoch: int, rank: int) -> Callable[[], None] | None:
    """A per-step hook that SIGKILLs this process at ``FENREC_FAULT_AT``'s point, once (the
    marker file, naming the rank and its pid, makes the restarted run go through); with
    ``FENREC_FAULT_HOLD_S`` it waits that long first, in the middle of the epoch, while a test
    removes its node or kills its driver. None when no fault is asked for here."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    e, b, r, marker = spec.split(":", 3)
    if int(e) != epoch or int(r) != rank or Path(marker).exists():
        return None
    target, count, hold = int(b), [0], float(os.environ.get(FAULT_HOLD_ENV) or 0)

    def hook() -> None:
        count[0] += 1
        if count[0] == target:
            atomic_write_text(Path(marker), f"killed rank {rank} at epoch {epoch} batch {target} pid {os.getpid()}\n")
            time.sleep(hold)
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _with_hook(step: StepFn, hook: Callable[[], None] | None) -> StepFn:
    if hook is None:
        return step

    def wrapped(loss: torch.Tensor) -> None:
        hook()
        step(loss)

    return wrapped


def _scheduled(step: StepFn, engine: Engine, cfg: Config, epoch: int, steps: int) -> StepFn:
    """``step`` with the learning rate of ``train.schedule.lr_factor`` set before each optimizer
    step; ``step`` itself under the default constant schedule (the rate is never touched)."""
    if cfg.train.lr_warmup_epochs == 0 and cfg.train.lr_schedule == "constant":
        return step
    count = [0]

    def wrapped(loss: torch.Tensor) -> None:
        engine.set_lr(cfg.train.lr * lr_factor(epoch, count[0], steps, cfg.train))
        count[0] += 1
        step(loss)

    return wrapped


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class _Progress:
    """What a checkpoint holds and resume restores: next epoch, early stopping, best weights."""

    def __init__(self, cfg: Config, model: SequenceEncoder) -> None:
        self.epoch = 0
        self.stopper = EarlyStopping(cfg.train.patience)
        self.best = _clone(model.state_dict())

    def restore(self, d: Path, rank: int, world_size: int, engine: Engine, device: torch.device,
                log: Callable[[str], None]) -> None:
        if not (d / layout.STATE).is_file() and (d / "client_state.pt").is_file():
            from fenrec_dist.train.checkpoint import CheckpointError

            raise CheckpointError(f"{d}: a checkpoint of the earlier Ray Train layout (client_state.pt): "
                                  f"`fenrec evaluate` still scores it, but it cannot be resumed; start a new run")
        state = load_state(d / layout.STATE, map_location=device,
                           keys=("model", "early_stopping", "epoch", "world_size"))
        engine.load(d, state)
        self.epoch = int(state["epoch"])
        self.stopper = EarlyStopping.from_state(state["early_stopping"])
        self.best = load_state(d / layout.BEST, map_location=device, keys=("model",))["model"]
        if int(state["world_size"]) != world_size:
            log(f"resume: {d} was written by {state['world_size']} rank(s), this run has {world_size}: batches "
                f"differ from an uninterrupted run from here on")
        rng = d / layout.rng_name(rank)
        if rng.is_file():
            set_rng_state(load_state(rng))

    def writer(self, rank: int, world_size: int, engine: Engine, record: dict[str, Any]) -> Callable[[Path], None]:
        def write(d: Path) -> None:
            engine.save_extra(d)  # collective under DeepSpeed: every rank
            if rank == 0:
                state = {"model": engine.module.state_dict(), **engine.state(),
                         "early_stopping": self.stopper.state_dict(), "epoch": self.epoch,
                         "world_size": world_size, "deepspeed": engine.uses_deepspeed}
                best = {"model": self.best, "epoch": self.stopper.best_epoch}
                layout.write_rank_files(d, rank, rng_state(), state=state, best=best, record=record)
            else:
                layout.write_rank_files(d, rank, rng_state())

        return write


def fit(cfg: Config, rt: Runtime) -> dict[str, Any]:
    """Train until early stopping, ``train.epochs`` or ``train.time_limit_min``, then score the
    best weights on validation and test. Returns final.json's content (best_epoch, valid,
    test, epochs_run)."""
    t_start = time.perf_counter()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    rank, world, device = rt.rank, rt.world_size, rt.device
    if cfg.loss.rec_softmax == "sampled" and world > 1 and device.type == "cuda":
        raise ConfigError("loss.rec_softmax: sampled with several CUDA workers: its row-sparse item gradients need "
                          "DDP over gloo, and NCCL cannot all-reduce sparse tensors; use one worker per run or "
                          "loss.rec_softmax=full")
    memory.start_phase()
    data = load_rank_data(cfg.data.path, rank, world, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    if cfg.eval.max_users:
        data.eval = data.eval.subset(user_sample(data.eval.user, data.total_users, cfg.eval.max_users, cfg.train.seed))
    t_load = time.perf_counter()
    rss_load = peak_rss_mib()
    in_startup = {"load": memory.phase_peak_mib()}
    memory.start_phase()
    model = build_model(cfg, data.num_items, data.max_len, device)
    rng = torch.get_rng_state()
    engine = rt.engine(model, cfg)
    torch.set_rng_state(rng)  # an engine's set-up (DeepSpeed's) must not shift the dropout draws
    t_engine = time.perf_counter()
    prog = _Progress(cfg, engine.module)
    with rt.resume_from() as d:
        if d is not None:
            prog.restore(Path(d), rank, world, engine, device, rt.log)
            rt.log(f"resumed after epoch {prog.epoch - 1} (best {cfg.eval.metric}={prog.stopper.best:.4f}"
                   f"@{prog.stopper.best_epoch})")
    startup = {"load_data": t_load - t_start, "engine_init": t_engine - t_load}
    rss_startup = {"after_load": rss_load, "after_engine": peak_rss_mib()}
    in_startup["engine"] = memory.phase_peak_mib()
    item_counts = None
    if cfg.loss.rec_softmax == "sampled":  # how often each item is a target, over every rank's samples
        counts = np.bincount(data.train.target, minlength=data.num_items + 1).astype(np.float64)
        item_counts = torch.from_numpy(C.all_reduce_array(counts, device))
    loss_fn = FENRecLoss(cfg.loss, cfg.negatives,
                         comm=C.ProcessGroupComm(max_rows=cfg.train.batch_size) if world > 1 else None,
                         item_counts=item_counts)
    partners = PartnerIndex.build(data.train.target, data.num_items)  # every partner is in this rank's shards
    autocast = precision_context(cfg, device)
    refresher = None
    if uses_index(cfg):
        from fenrec_dist.negatives.index import TrainingFacts
        from fenrec_dist.negatives.refresh import IndexRefresher

        t = data.train  # this rank's samples: each rank indexes its own, queries go to all (mine_sharded)
        facts = TrainingFacts.from_table(t) if world == 1 else TrainingFacts(t.user, t.target, t.future, t.future_len)
        refresher = IndexRefresher(cfg, facts, rt.negatives_store(), rank, world, ids=t.sample_id,
                                   gpu_id=(device.index or 0) if device.type == "cuda" else 0)
    rt.log(f"data {cfg.data.path}: {data.total_train:,} training samples ({len(data.train):,} on rank {rank} of "
           f"{world}), {data.total_users:,} users, {data.num_items:,} items | device {device} | "
           f"{sum(p.numel() for p in engine.module.parameters()):,} parameters")

    build_index = None  # the item index of the current table: sampled L_rec's mined items and eval.ann
    if cfg.eval.ann or (cfg.loss.rec_softmax == "sampled" and cfg.loss.sampled_mined > 0):
        build_index = item_index_builder(cfg, device)
    ann_index: tuple[int, ItemIndex] | None = None  # eval.ann's index of the table after epoch e: (e, index)

    first_epoch = prog.epoch
    for epoch in range(first_epoch, cfg.train.epochs):
        if prog.stopper.should_stop:
            break
        time_up = epoch > first_epoch and time_is_up(cfg, t_start)  # at least one epoch per start
        if C.all_reduce_min(int(not time_up), device) == 0:
            rt.log(f"train.time_limit_min={cfg.train.time_limit_min} reached; stopping before epoch {epoch}")
            break
        t_epoch = t0 = time.perf_counter()
        memory.start_phase()
        intents, reprs = epoch_intents(engine.module, data, cfg, epoch, device, need_reprs=refresher is not None)
        in_phase = {"cluster": memory.phase_peak_mib()}  # each phase's own peak (``memory.start_phase``)
        memory.start_phase()
        release_free_memory()  # each phase starts from a trimmed heap, so phase peaks do not stack
        times = {"cluster": time.perf_counter() - t0}
        rss = {"cluster": peak_rss_mib()}
        index = None
        if refresher is not None:
            t0 = time.perf_counter()
            index = refresher.refresh(epoch, reprs, device, intents)
            times["index"] = time.perf_counter() - t0
        del reprs  # the index keeps what it needs
        miner = None
        if cfg.loss.rec_softmax == "sampled" and cfg.loss.sampled_mined > 0:
            t0 = time.perf_counter()
            first = ann_index[1] if ann_index is not None and ann_index[0] == epoch - 1 else None
            miner = item_miner(build_index, engine.module, cfg, epoch, device, first)  # type: ignore[arg-type]
            times["item_index"] = time.perf_counter() - t0  # ~0 when the last evaluation's index is reused
        ann_index = None
        batches = epoch_batches(data.train.input_len, cfg.train.batch_size, epoch_rng(cfg.train.seed, epoch, rank),
                                cfg.train.length_grouping, cfg.train.length_bucket_batches,
                                order_rng=epoch_rng(cfg.train.seed, epoch, BATCH_ORDER_STREAM) if world > 1 else None)
        batches = batches[: C.all_reduce_min(len(batches), device)]  # collectives need equal step counts
        if cfg.train.epoch_steps:
            batches = batches[: cfg.train.epoch_steps]
        step = _scheduled(_with_hook(engine.step, fault_hook(epoch, rank)), engine, cfg, epoch, len(batches))
        in_phase["refresh"] = memory.phase_peak_mib()  # the sample and item indexes, when on
        memory.start_phase()
        res = train_epoch(engine.net, engine.module, step, data.train,
                          partners, data.train, batches, loss_fn, epoch, intents, cfg.train.seed, device, rank=rank,
                          progress=rt.progress, num_batches=len(batches), autocast=autocast, index=index,
                          trim_every=cfg.train.trim_every, trim_growth_mib=cfg.train.trim_growth_mib,
                          item_miner=miner)
        in_phase["train"] = memory.phase_peak_mib()
        memory.start_phase()
        release_free_memory()
        times["train"] = res.seconds
        rss["train"] = peak_rss_mib()
        t0 = time.perf_counter()
        if cfg.eval.ann:  # seeded as the next epoch's miner, which reuses it (same table)
            ann_index = (epoch, build_index(engine.module, cfg.train.seed + epoch + 1))  # type: ignore[misc]
            times["eval_index"] = time.perf_counter() - t0
        valid = evaluate(engine.module, data, cfg, "valid", device, ann_index[1] if ann_index else None)
        in_phase["eval"] = memory.phase_peak_mib()
        release_free_memory()
        times["eval"] = time.perf_counter() - t0
        if prog.stopper.update(valid[cfg.eval.metric], epoch):
            prog.best = _clone(engine.module.state_dict())
        prog.epoch = epoch + 1
        samples = C.all_reduce_sums({"n": float(res.samples)}, device)["n"]
        rec: dict[str, Any] = {
            "epoch": epoch, "loss": {k: v / world for k, v in C.all_reduce_sums(res.losses, device).items()},
            "valid": valid, "samples_per_s": samples / max(res.seconds, 1e-9),
            "time": {**times, "epoch": time.perf_counter() - t_epoch},
            "best": prog.stopper.best, "best_epoch": prog.stopper.best_epoch,
            "phase": "hard" if loss_fn.after_warmup(epoch) else "warmup",
        }
        rec["memory"] = {"peak_rss_mib": per_rank(peak_rss_mib(), device),
                         "peak_rss_mib_by_phase_end": {k: per_rank(v, device) for k, v in rss.items()},
                         "peak_rss_mib_in_phase": {k: per_rank(v, device) for k, v in in_phase.items()}}
        if world > 1:
            rec["world_size"] = world
        if refresher is not None:
            stats = res.stats
            if world > 1:  # the ranks' means, averaged (after the warm-up on every rank alike)
                stats = {}
                if loss_fn.after_warmup(epoch):
                    sums = C.all_reduce_sums({k: res.stats.get(k, 0.0) for k in STAT_KEYS}, device)
                    stats = {k: v / world for k, v in sums.items()}
            refresher.record_training(epoch, stats)
            rec["negatives"] = negatives_record(refresher.summary, stats)
        if epoch == first_epoch:
            rec["memory"]["peak_rss_mib_startup"] = {k: per_rank(v, device) for k, v in rss_startup.items()}
            rec["memory"]["peak_rss_mib_in_phase"].update({k: per_rank(v, device) for k, v in in_startup.items()})
            rec["startup"] = {**startup, "bytes_read": per_rank(float(data.bytes_read), device, 1),
                              "local_rows": per_rank(float(len(data.train)), device, 1),
                              "pid": per_rank(float(os.getpid()), device, 1)}  # where each rank runs (fault tests)
        rt.commit(rec, prog.writer(rank, world, engine, rec))

    # final: the best weights on validation and test, on every rank (collectives)
    engine.module.load_state_dict(prog.best)
    best_epoch = prog.stopper.best_epoch
    index = None
    if cfg.eval.ann:  # the best epoch's evaluation index when this process built it, else the same one rebuilt
        index = (ann_index[1] if ann_index is not None and ann_index[0] == best_epoch
                 else build_index(engine.module, cfg.train.seed + max(best_epoch, -1) + 1))  # type: ignore[misc]
    final = {"best_epoch": best_epoch, "valid": evaluate(engine.module, data, cfg, "valid", device, index),
             "test": evaluate(engine.module, data, cfg, "test", device, index), "epochs_run": prog.epoch}
    rt.finish(final)
    return final


def score_run(cfg: Config, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """``fenrec evaluate``: the best weights of a run's newest complete checkpoint (either
    runtime's) scored on validation and test in this process."""
    from fenrec_dist.data.errors import first_line
    from fenrec_dist.train.checkpoint import CheckpointError

    weights, best_epoch, extra = layout.best_weights(run_dir, map_location=device)
    data = load_rank_data(cfg.data.path, 0, 1, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    model = build_model(cfg, data.num_items, data.max_len, device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # another model's weights (the config was changed after training)
        raise CheckpointError(f"{run_dir}: the best checkpoint does not fit the model of config.yaml: "
                              f"{first_line(exc)}") from exc
    index = None
    if cfg.eval.ann:  # the index the run's own evaluation of its best epoch used
        index = item_index_builder(cfg, device)(model, cfg.train.seed + max(int(best_epoch), -1) + 1)
    return {"best_epoch": best_epoch, "valid": evaluate(model, data, cfg, "valid", device, index),
            "test": evaluate(model, data, cfg, "test", device, index), **extra}
