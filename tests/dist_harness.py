"""Global-negatives self-check: N gloo processes at batch B vs one process at batch N*B.

Used by the test-suite (and runnable by hand from tests/: ``python dist_harness.py``)
to show that the all-gathered contrastive losses and the averaged gradients of a
data-parallel step equal the one-process computation on the concatenated batch.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fenrec_dist.config import LossConfig, ModelConfig, NegativesConfig
from fenrec_dist.comm import ProcessGroupComm
from fenrec_dist.negatives.intents import IntentClusters
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.model import build_encoder

ITEMS, MAX_LEN, HIDDEN = 40, 10, 16


def _problem(global_batch: int, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(2 * global_batch, MAX_LEN, dtype=torch.long)
    lens = torch.randint(1, MAX_LEN + 1, (2 * global_batch,), generator=g)
    for i, n in enumerate(lens.tolist()):
        ids[i, MAX_LEN - n :] = torch.randint(1, ITEMS + 1, (n,), generator=g)
    target = torch.randint(1, 8, (global_batch,), generator=g)  # few targets: masking matters
    future = torch.stack([target, torch.randint(1, ITEMS + 1, (global_batch,), generator=g),
                          torch.randint(1, ITEMS + 1, (global_batch,), generator=g)], 1)
    flen = torch.randint(1, 4, (global_batch,), generator=g)
    cents = torch.randn(6, HIDDEN, generator=g).numpy() * 3
    return ids, target, future, flen, IntentClusters(cents)


INDEX_ROWS, INDEX_K = 50, 4


def _index_problem(global_batch: int, seed: int = 1):  # type: ignore[no-untyped-def]
    """(anchor ids [B], partner ids [B], EpochIndex) for the index-negatives check."""
    from fenrec_dist.negatives.refresh import EpochIndex

    g = torch.Generator().manual_seed(seed)
    nb = torch.randint(0, INDEX_ROWS, (INDEX_ROWS, INDEX_K), generator=g)
    nb[torch.rand(INDEX_ROWS, INDEX_K, generator=g) < 0.2] = -1  # some anchors have fewer negatives
    index = EpochIndex(epoch=0, vectors=torch.randn(INDEX_ROWS, HIDDEN, generator=g), neighbors=nb,
                       intent_of=torch.randint(0, 6, (INDEX_ROWS,), generator=g), index=None)  # type: ignore[arg-type]
    aid = torch.randint(0, INDEX_ROWS, (global_batch,), generator=g)
    pid = torch.randint(0, INDEX_ROWS, (global_batch,), generator=g)
    return aid, pid, index


def _model():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_encoder(ModelConfig(hidden=HIDDEN, heads=2, dropout=0.0, attn_dropout=0.0), ITEMS, MAX_LEN)


def _loss(world: int, comm=None, index: bool = False) -> FENRecLoss:  # type: ignore[no-untyped-def]
    sources = ["in_batch", "hard", "noise"] + (["index"] if index else [])
    neg = NegativesConfig(warmup_epochs=0, sources=sources, lam_min=0.3, lam_max=0.5, noise_ratio=1.0,
                          index_weight=0.5)
    return FENRecLoss(LossConfig(lambda_coarse=0.3, beta_fine=0.1), neg, comm=comm)


def _step(model, loss_fn, ids_a, ids_p, target, future, flen, intents, index=None):  # type: ignore[no-untyped-def]
    b = ids_a.shape[0]
    z = model(torch.cat([ids_a, ids_p]))
    kw = {"anchor_ids": index[0], "partner_ids": index[1], "index": index[2]} if index is not None else {}
    parts = loss_fn(z[:b], z[b:], model.item_weights(), target, future, flen, epoch=1, intents=intents,
                    generator=torch.Generator().manual_seed(123), **kw)
    parts.objective.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return parts, grads


def single_process(global_batch: int, index: bool = False) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    ids, target, future, flen, intents = _problem(global_batch)
    idx = _index_problem(global_batch) if index else None
    parts, grads = _step(_model(), _loss(1, index=index), ids[:global_batch], ids[global_batch:], target, future,
                         flen, intents, idx)
    return parts.as_floats(), grads


def _worker(rank: int, world: int, port: int, global_batch: int, out: str, index: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ids, target, future, flen, intents = _problem(global_batch)
        b = global_batch // world
        sl = slice(rank * b, (rank + 1) * b)
        idx = None
        if index:
            aid, pid, ei = _index_problem(global_batch)
            idx = (aid[sl], pid[sl], ei)
        model = _model()
        parts, _ = _step(model, _loss(world, ProcessGroupComm(max_rows=b), index), ids[:global_batch][sl], ids[global_batch:][sl],
                         target[sl], future[sl], flen[sl], intents, idx)
        grads = {}
        for n, p in model.named_parameters():  # what DDP / DeepSpeed do: average over ranks
            if p.grad is not None:
                dist.all_reduce(p.grad)
                grads[n] = p.grad / world
        if rank == 0:
            torch.save({"parts": parts.as_floats(), "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distributed(world: int, global_batch: int, index: bool = False) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.pt")
        mp.spawn(_worker, args=(world, _free_port(), global_batch, out, index), nprocs=world, join=True)
        res = torch.load(out, weights_only=True)
    return res["parts"], res["grads"]


def compare(world: int = 2, global_batch: int = 16, index: bool = False) -> dict[str, float]:
    """Max absolute differences of the contrastive losses and of every gradient
    (``index``: with index-mined negatives as well)."""
    s_parts, s_grads = single_process(global_batch, index)
    d_parts, d_grads = distributed(world, global_batch, index)
    diffs = {k: abs(s_parts[k] - d_parts[k]) for k in ("coarse", "fine")}
    diffs["grad"] = max(float((s_grads[n] - d_grads[n]).abs().max()) for n in s_grads)
    diffs["grad_keys_match"] = float(set(s_grads) == set(d_grads))
    return diffs


if __name__ == "__main__":
    d = compare()
    print(d)
    sys.exit(0 if d["grad"] < 1e-5 and d["coarse"] < 1e-5 and d["fine"] < 1e-5 else 1)


# --------------------------------------------------------------------------- evaluation


def _eval_model(data_path: str, rank: int = 0, world: int = 1):  # type: ignore[no-untyped-def]
    from fenrec_dist.config import Config
    from fenrec_dist.data.shards import load_rank_data

    cfg = Config()
    cfg.model.hidden = HIDDEN
    cfg.eval.batch_size = 37  # uneven batches on purpose
    data = load_rank_data(data_path, rank, world)
    torch.manual_seed(0)
    return cfg, data, build_encoder(cfg.model, data.num_items, data.max_len).eval()


def _eval_worker(rank: int, world: int, port: int, data_path: str, out: str) -> None:
    from fenrec_dist.train.trainer import evaluate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg, data, model = _eval_model(data_path, rank, world)
        res = {s: evaluate(model, data, cfg, s, torch.device("cpu")) for s in ("valid", "test")}
        if rank == 0:
            torch.save(res, out)
    finally:
        dist.destroy_process_group()


def compare_eval(data_path: str, world: int = 2) -> tuple[dict, dict]:
    """(single-process metrics, distributed metrics) for 'valid' and 'test' on ``data_path``."""
    from fenrec_dist.metrics import finalize
    from fenrec_dist.train.loop import evaluate_sums

    cfg, data, model = _eval_model(data_path)
    single = {s: finalize(evaluate_sums(model, data.eval, s, data.max_len, cfg.eval.batch_size,
                                        cfg.eval.item_chunk, list(cfg.eval.ks), torch.device("cpu")))
              for s in ("valid", "test")}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "eval.pt")
        mp.spawn(_eval_worker, args=(world, _free_port(), data_path, out), nprocs=world, join=True)
        distributed_res = torch.load(out, weights_only=True)
    return single, distributed_res


# --------------------------------------------------------------------------- intents


def _intent_problem():  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(0)
    reprs = (rng.standard_normal((600, HIDDEN)) * 3).astype("float32")
    return np.arange(600, dtype=np.int64), reprs


def _intent_worker(rank: int, world: int, port: int, out: str) -> None:
    from fenrec_dist.train.trainer import cluster_across_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ids, reprs = _intent_problem()
        mine = ids % world == rank  # interleaved shards, as streaming splits hand them out
        clusters = cluster_across_ranks(ids[mine][::-1].copy(), reprs[mine][::-1].copy(), 12, 10, 7,
                                        torch.device("cpu"))
        torch.save({"centroids": torch.from_numpy(clusters.centroids),
                    "assign": torch.from_numpy(clusters.assign_numpy(reprs))}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def compare_intents(world: int = 2) -> tuple[dict, list[dict]]:
    """Single-process k-means vs ``cluster_across_ranks`` on every rank."""
    ids, reprs = _intent_problem()
    single = IntentClusters.fit(reprs, 12, 10, seed=7)
    ref = {"centroids": torch.from_numpy(single.centroids), "assign": torch.from_numpy(single.assign_numpy(reprs))}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "intents")
        mp.spawn(_intent_worker, args=(world, _free_port(), out), nprocs=world, join=True)
        ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
    return ref, ranks


# --------------------------------------------------------------------------- negative index


def _refresh_problem():  # type: ignore[no-untyped-def]
    import numpy as np

    from fenrec_dist.negatives.index import TrainingFacts

    rng = np.random.default_rng(3)
    n = 400
    target = rng.integers(1, 30, n).astype(np.int32)
    future = np.stack([target, rng.integers(1, 30, n), rng.integers(1, 30, n)], 1).astype(np.int32)
    facts = TrainingFacts(user=(np.arange(n) // 5).astype(np.int64), target=target, future=future,
                          future_len=rng.integers(1, 4, n).astype(np.int32))
    vectors = rng.standard_normal((n, HIDDEN)).astype(np.float32)
    return facts, vectors


def _refresh_cfg():  # type: ignore[no-untyped-def]
    from fenrec_dist.config import Config

    cfg = Config()
    cfg.negatives.sources = ["in_batch", "index"]
    cfg.negatives.index_k, cfg.negatives.index_candidates = 5, 20
    return cfg


def _refresh_worker(rank: int, world: int, port: int, out: str) -> None:
    import numpy as np

    from fenrec_dist.negatives.index import TrainingFacts
    from fenrec_dist.negatives.refresh import IndexRefresher

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        facts, vectors = _refresh_problem()
        ids = np.flatnonzero(np.arange(len(vectors)) % world == rank)  # this rank's shard
        mine = TrainingFacts(facts.user[ids], facts.target[ids], facts.future[ids], facts.future_len[ids])
        ref = IndexRefresher(_refresh_cfg(), mine, None, rank, world, ids=ids)
        ei = ref.refresh(0, vectors[ids], torch.device("cpu"))
        # the loss's view: each local row's neighbours' vectors, read through the rank's cache
        nb = ei.neighbors
        vecs = torch.where((nb >= 0)[:, :, None], ei.vectors[nb.clamp_min(0)], torch.zeros(()))
        torch.save({"ids": torch.from_numpy(ids), "neighbors": torch.from_numpy(ref.prev), "vectors": vecs},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def compare_index_refresh(world: int = 2) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """One exact index over every sample in one process vs ``world`` ranks that each index their
    own shard: (single neighbours [N, k], all vectors [N, d], every rank's result)."""
    from fenrec_dist.negatives.refresh import IndexRefresher

    facts, vectors = _refresh_problem()
    single = IndexRefresher(_refresh_cfg(), facts).refresh(0, vectors, torch.device("cpu")).neighbors
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "refresh")
        mp.spawn(_refresh_worker, args=(world, _free_port(), out), nprocs=world, join=True)
        ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
    return single, torch.from_numpy(vectors), ranks


# --------------------------------------------------------------------------- packed gather


def _gather_rows(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's rows: float [r + 2, 3] and int64 [r + 2] (uneven counts, ids past 2^31, negatives)."""
    n = rank + 2
    floats = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3) + 100 * rank
    ids = torch.tensor([(1 << 40) + 7 * rank + i for i in range(n - 1)] + [-5 - rank], dtype=torch.int64)
    return floats, ids


def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        floats, ids = _gather_rows(rank)
        x = floats.clone().requires_grad_(True)
        (gf, gi), offset = ProcessGroupComm(max_rows=world + 1).gather(x, ids)
        # rank r's loss weighs every gathered row by (r + 1): the rows' gradient is summed over ranks
        (gf.sum(dim=1) * (rank + 1)).sum().backward()
        torch.save({"floats": gf.detach(), "ids": gi, "offset": offset, "grad": x.grad}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def check_gather(world: int = 2) -> list[dict]:
    """Every rank's result of ``ProcessGroupComm.gather`` (gathered rows, offset, gradient)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "gather")
        mp.spawn(_gather_worker, args=(world, _free_port(), out), nprocs=world, join=True)
        return [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
