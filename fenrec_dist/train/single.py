"""Single-process training driver: `fenrec train` without Ray (``distributed.num_workers`` = 1
and ``--local``), and the reference path that the distributed run must match."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fenrec_dist.config import Config, ConfigError, dump_yaml, load_config
from fenrec_dist.data.errors import first_line
from fenrec_dist.data.dataset import PreparedData, load_prepared
from fenrec_dist.intents import IntentClusters
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.metrics import finalize
from fenrec_dist.model import build_encoder
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.train.batches import PartnerIndex, epoch_batches, epoch_rng
from fenrec_dist.train.checkpoint import CheckpointError, atomic_write_json, atomic_write_text, load_state, rng_state, save_state, set_rng_state
from fenrec_dist.train.early_stopping import EarlyStopping
from fenrec_dist.train.interrupts import deferred_interrupts
from fenrec_dist.train.loop import embed, evaluate_sums, make_adam, torch_step, train_epoch
from fenrec_dist.train.memory import release_free_memory
from fenrec_dist.train.report import MetricsLog, drop_final, plot_curves, progress_line, read_metrics
from fenrec_dist.train.runlock import run_lock


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: cuda, but torch {torch.__version__} sees no CUDA device here; "
                          f"use auto (CUDA when present) or cpu")
    return torch.device(name)


def epoch_representations(encoder: SequenceEncoder, data: PreparedData, cfg: Config, epoch: int,
                          device: torch.device, need_reprs: bool = False) -> tuple[IntentClusters | None, np.ndarray | None]:
    """The epoch-start pass: eval-mode representations float32 [N, d] of every training
    sample (by sample id), k-means intents on them when the fine term is on. Returns
    (intents or None, representations or None when neither needs them)."""
    if cfg.loss.beta_fine <= 0 and not need_reprs:
        return None, None
    reprs = embed(encoder, data.train.inputs, cfg.intents.batch_size, device)
    intents = IntentClusters.fit(reprs, cfg.intents.k, cfg.intents.niter, seed=cfg.train.seed + epoch,
                                 nredo=cfg.intents.nredo) \
        if cfg.loss.beta_fine > 0 else None
    return intents, reprs


def uses_index(cfg: Config) -> bool:
    """Whether the run refreshes a FAISS negative index each epoch."""
    return "index" in cfg.negatives.sources


def evaluate_split(encoder: SequenceEncoder, data: PreparedData, cfg: Config, split: str, device: torch.device) -> dict[str, float]:
    sums = evaluate_sums(encoder, data.eval, split, data.max_len, cfg.eval.batch_size, cfg.eval.item_chunk,
                         list(cfg.eval.ks), device)
    return finalize(sums)


def build_model(cfg: Config, data: PreparedData, device: torch.device) -> SequenceEncoder:
    torch.manual_seed(cfg.train.seed)
    return build_encoder(cfg.model, data.num_items, data.max_len).to(device)


def train_single(cfg: Config, run_dir: Path, resume: bool = False, log=print) -> dict[str, Any]:
    """Train until early stopping or ``train.epochs``; returns final.json's content.

    The run directory holds config.yaml, metrics.jsonl, checkpoints/{last,best}.pt,
    tensorboard/, curves.png and final.json.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    done = len(read_metrics(run_dir)) if resume else 0
    if resume and not last_path.exists() and done:  # starting over would drop the logged epochs
        raise CheckpointError(f"{last_path}: checkpoint missing, but {run_dir / 'metrics.jsonl'} logs {done} "
                              f"finished epoch(s); cannot resume without it (restore it, or start a new run "
                              f"with another --out)")
    run_dir.mkdir(parents=True, exist_ok=True)  # after the data checks: a bad start leaves no directory
    with run_lock(run_dir):  # one training process per run directory
        return _train_locked(cfg, run_dir, resume, data, device, log)


def _train_locked(cfg: Config, run_dir: Path, resume: bool, data: PreparedData, device: torch.device,
                  log=print) -> dict[str, Any]:
    """``train_single`` from the run directory on, with its lock held."""
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if not resume:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    model = build_model(cfg, data, device)
    optimizer = make_adam(model.parameters(), cfg.train.lr, cfg.train.weight_decay)
    stopper = EarlyStopping(cfg.train.patience)
    start_epoch = 0
    log_file = MetricsLog(run_dir)
    if resume and not last_path.exists():
        log(f"resume: {run_dir} finished no epoch before it stopped; starting at epoch 0")
    if resume and last_path.exists():
        st = load_state(last_path, map_location=device, keys=("model", "optimizer", "early_stopping", "epoch", "rng"))
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        stopper = EarlyStopping.from_state(st["early_stopping"])
        start_epoch = int(st["epoch"])
        set_rng_state(st["rng"])
        log(f"resumed {run_dir} after epoch {start_epoch - 1} (best {cfg.eval.metric}={stopper.best:.4f}@{stopper.best_epoch})")
    log_file.truncate(start_epoch)
    if start_epoch < cfg.train.epochs and not stopper.should_stop:  # this start trains more epochs
        drop_final(run_dir, log)

    loss_fn = FENRecLoss(cfg.loss, cfg.negatives)
    partners = PartnerIndex.build(data.train.target, data.num_items)
    step = torch_step(model, optimizer, cfg.train.grad_clip)
    lengths = data.train.input_len
    from fenrec_dist.distributed.engine import use_bf16

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" and use_bf16(cfg, device) else None
    refresher = None
    if uses_index(cfg):
        from fenrec_dist.negatives.index import TrainingFacts
        from fenrec_dist.negatives.refresh import IndexRefresher
        from fenrec_dist.negatives.store import NegativesStore

        refresher = IndexRefresher(cfg, TrainingFacts.from_table(data.train), NegativesStore(str(run_dir.resolve())))
    t_start = time.perf_counter()
    log(f"data {cfg.data.path}: {len(data.train):,} training samples, {len(data.eval.user):,} users, "
        f"{data.num_items:,} items | device {device} | {sum(p.numel() for p in model.parameters()):,} parameters")

    for epoch in range(start_epoch, cfg.train.epochs):
        if stopper.should_stop:
            break
        if epoch > start_epoch and time_is_up(cfg, t_start):  # at least one epoch per start
            log(f"train.time_limit_min={cfg.train.time_limit_min} reached; stopping before epoch {epoch}")
            break
        t_epoch = time.perf_counter()
        t0 = time.perf_counter()
        intents, reprs = epoch_representations(model, data, cfg, epoch, device, need_reprs=refresher is not None)
        release_free_memory()  # each phase starts from a trimmed heap, so phase peaks do not stack
        t_cluster = time.perf_counter() - t0
        index = None
        if refresher is not None:
            t0 = time.perf_counter()
            index = refresher.refresh(epoch, reprs, device, intents)
            t_index = time.perf_counter() - t0
        batches = epoch_batches(lengths, cfg.train.batch_size, epoch_rng(cfg.train.seed, epoch),
                                cfg.train.length_grouping, cfg.train.length_bucket_batches)
        res = train_epoch(model, model, step, data.train, partners, data.train, batches, loss_fn, epoch, intents,
                          cfg.train.seed, device, progress=cfg.train.progress, num_batches=len(batches),
                          autocast=autocast, index=index, trim_every=cfg.train.trim_every,
                          trim_growth_mib=cfg.train.trim_growth_mib)
        release_free_memory()
        if refresher is not None:
            refresher.record_training(epoch, res.stats)
        t0 = time.perf_counter()
        valid = evaluate_split(model, data, cfg, "valid", device)
        release_free_memory()
        t_eval = time.perf_counter() - t0
        with deferred_interrupts():  # best.pt, the metrics line and last.pt: all of them or none
            if stopper.update(valid[cfg.eval.metric], epoch):
                save_state(best_path, {"model": model.state_dict(), "epoch": epoch, "valid": valid})
            rec = {
                "epoch": epoch, "loss": res.losses, "valid": valid, "samples_per_s": res.samples_per_s,
                "time": {"cluster": t_cluster, **({"index": t_index} if refresher is not None else {}),
                         "train": res.seconds, "eval": t_eval, "epoch": time.perf_counter() - t_epoch},
                "best": stopper.best, "best_epoch": stopper.best_epoch, "phase": "hard" if loss_fn.after_warmup(epoch) else "warmup",
            }
            if refresher is not None:
                rec["negatives"] = negatives_record(refresher.summary, res.stats)
            log_file.write(rec)
            save_state(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "early_stopping": stopper.state_dict(), "epoch": epoch + 1, "rng": rng_state()})
        log(progress_line(rec, cfg.train.epochs, cfg.eval.metric, cfg.train.patience))
    log_file.close()
    plot_curves(run_dir, cfg.eval.metric)
    return finish(run_dir, cfg, data, device, log)


def time_is_up(cfg: Config, t_start: float) -> bool:
    """``train.time_limit_min`` has passed since training started (0 = never)."""
    return cfg.train.time_limit_min > 0 and time.perf_counter() - t_start >= 60.0 * cfg.train.time_limit_min


def negatives_record(summary: dict[str, Any] | None, train_stats: dict[str, float]) -> dict[str, float]:
    """The metrics.jsonl ``negatives`` entry of an index run: filter and hardness figures."""
    out = {f"train_{k}": v for k, v in train_stats.items()}
    if summary:
        for k in ("raw_fn_rate", "mined_cos", "random_cos", "kept_per_anchor", "overlap_prev"):
            if summary.get(k) is not None:
                out[k] = float(summary[k])
    return out


def newest_train_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(directory, its client_state.pt) of the Ray Train ``checkpoint_*`` directory of a
    distributed run that has run the most epochs (ties: the later name), or None when the run
    directory holds none."""
    found = []
    for d in sorted(Path(run_dir).glob("checkpoint_*")):
        if (d / "client_state.pt").is_file() and (d / "best_model.pt").is_file():
            client = load_state(d / "client_state.pt", keys=("epoch", "early_stopping"))
            found.append((int(client["epoch"]), d.name, d, client))
    if not found:
        return None
    newest = max(found, key=lambda f: f[:2])
    return newest[2], newest[3]


def best_weights(run_dir: Path, cfg: Config, device: torch.device) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """(model state, best epoch, extra final.json fields) of a run's best checkpoint.

    A one-process run keeps it in checkpoints/best.pt; a distributed run (Ray Train) in
    ``best_model.pt`` of its newest ``checkpoint_*`` directory, whose ``client_state.pt``
    holds the early-stopping state (best epoch) and the epochs run.
    """
    best = run_dir / "checkpoints" / "best.pt"
    if best.exists():
        st = load_state(best, map_location=device, keys=("model", "epoch"))
        return st["model"], int(st["epoch"]), {}
    newest = newest_train_checkpoint(run_dir)
    if newest is not None:
        ckpt, client = newest
        return (load_state(ckpt / "best_model.pt", map_location=device), int(client["early_stopping"]["best_epoch"]),
                {"epochs_run": int(client["epoch"]), "checkpoint": str(ckpt)})
    hint = ""
    if cfg.distributed.storage_path and "://" in cfg.distributed.storage_path:
        hint = (f"; a distributed run keeps its checkpoint_* directories in distributed.storage_path="
                f"{cfg.distributed.storage_path}: copy the newest one into {run_dir}")
    raise CheckpointError(f"{best}: no best checkpoint yet (the run finished no epoch){hint}")


def finish(run_dir: Path, cfg: Config, data: PreparedData, device: torch.device, log=print) -> dict[str, Any]:
    """Score the best checkpoint (``best_weights``) on validation and test; write final.json."""
    model = build_model(cfg, data, device)
    weights, best_epoch, extra = best_weights(run_dir, cfg, device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # another model's weights (the config was changed after training)
        raise CheckpointError(f"{run_dir}: the best checkpoint does not fit the model of config.yaml: "
                              f"{first_line(exc)}") from exc
    valid = evaluate_split(model, data, cfg, "valid", device)
    test = evaluate_split(model, data, cfg, "test", device)
    final = {"best_epoch": best_epoch, "valid": valid, "test": test, **extra}
    atomic_write_json(run_dir / "final.json", final)
    log("test  " + " ".join(f"{k}={v:.4f}" for k, v in test.items()) + f"  (best epoch {final['best_epoch']})")
    return final


def load_run_config(run_dir: Path) -> Config:
    """The resolved config a run directory was started with (errors name the directory or file)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} holds no run (config.yaml missing)")
    return load_config(run_dir / "config.yaml")


def evaluate_run(run_dir: Path, log=print) -> dict[str, Any]:
    """`fenrec evaluate RUN_DIR`: re-score the best checkpoint."""
    cfg = load_run_config(run_dir)
    device = resolve_device(cfg.train.device)
    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    return finish(Path(run_dir), cfg, data, device, log)
