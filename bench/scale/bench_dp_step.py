#!/usr/bin/env python
"""Data-parallel FENRec steps without Ray: W gloo processes against one process, same global batch.

    .venv/bin/python bench/scale/bench_dp_step.py [--workers 2] [--steps 40]

Beauty, configs/beauty.yaml after the warm-up (hard + noise negatives). One process (the
single-process loss, 1 thread) and W processes (1 thread each, torch DDP over gloo, the loss
split by rows with ``ProcessGroupComm``) train on the same global batches of 256, each rank
taking every W-th sample of a batch. Per rank and step it times the encoder (forward), the
loss (forward; the time spent inside its collectives is counted apart) and backward plus the
optimizer step (DDP's gradient all-reduce included). Medians over the steps after 3 warm-up
steps, rank 0. It shows where a data-parallel step's time goes on this machine. Writes
bench/scale/results/dp_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, data_dir: str, config: str, steps: int, out: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import fenrec_dist.train.loop as loop
    from fenrec_dist.config import load_config
    from fenrec_dist.data.dataset import load_prepared
    from fenrec_dist.comm import ProcessGroupComm
    from fenrec_dist.negatives.intents import IntentClusters
    from fenrec_dist.losses.fenrec import FENRecLoss
    from fenrec_dist.train.batches import PartnerIndex, epoch_batches, epoch_rng
    from fenrec_dist.train.trainer import build_model

    cfg = load_config(config, [f"data.path={data_dir}", "negatives.warmup_epochs=0"])
    data = load_prepared(data_dir, max_len=cfg.data.max_len)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg, data.num_items, data.max_len, device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = loop.make_adam(model.parameters(), cfg.train.lr)
    reprs = loop.embed(model, data.train.inputs[:20000], 1024, device)
    intents = IntentClusters(IntentClusters.fit(reprs, cfg.intents.k, 10, seed=0).centroids)
    times: dict[str, list[float]] = {"encode": [], "loss": [], "loss_collectives": [], "backward_step": [], "step": []}
    comm_s = [0.0]
    comm = None
    if world > 1:
        comm = ProcessGroupComm(max_rows=cfg.train.batch_size)
        gather, total = comm.gather, comm.sum

        def timed_gather(*xs):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return gather(*xs)
            finally:
                comm_s[0] += time.perf_counter() - t0

        def timed_sum(t):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return total(t)
            finally:
                comm_s[0] += time.perf_counter() - t0

        comm.gather, comm.sum = timed_gather, timed_sum  # type: ignore[method-assign]
    loss_fn = FENRecLoss(cfg.loss, cfg.negatives, comm=comm)

    def timer(name, fn):  # type: ignore[no-untyped-def]
        def wrapped(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            r = fn(*a, **k)
            times[name].append(time.perf_counter() - t0)
            return r
        return wrapped

    class TimedLoss:
        after_warmup = loss_fn.after_warmup

        def __call__(self, *a, **k):  # type: ignore[no-untyped-def]
            comm_s[0] = 0.0
            r = timer("loss", loss_fn)(*a, **k)
            times["loss_collectives"].append(comm_s[0])
            return r

    def step(loss: torch.Tensor) -> None:
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    loop.encode_by_length = timer("encode", loop.encode_by_length)
    partners = PartnerIndex.build(data.train.target, data.num_items)
    batches = epoch_batches(data.train.input_len, cfg.train.batch_size, epoch_rng(0, 0),
                            cfg.train.length_grouping, cfg.train.length_bucket_batches)
    for i in range(steps + 3):
        b = batches[i][rank::world]
        dist.barrier()
        t0 = time.perf_counter()
        loop.train_epoch(net, model, timer("backward_step", step), data.train, partners, data.train, [b],
                         TimedLoss(), 0, intents, 0, device, rank=rank)  # type: ignore[arg-type]
        times["step"].append(time.perf_counter() - t0)
    if rank == 0:
        res = {k: round(1000 * statistics.median(v[3:]), 1) for k, v in times.items()}
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "dp_step.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import torch.multiprocessing as mp

    from fenrec_dist.data.prepare import prepare

    res: dict = {"command": " ".join(sys.argv), "global_batch": 256, "threads_per_process": 1,
                 "ms_median_rank0": {}}
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args.data, Path(tmp) / "data")
        for w in (1, args.workers):
            out = Path(tmp) / f"w{w}.json"
            mp.spawn(_rank, args=(w, _free_port(), str(Path(tmp) / "data"), args.config, args.steps, str(out)),
                     nprocs=w, join=True)
            res["ms_median_rank0"][f"{w}_process" + ("es" if w > 1 else "")] = json.loads(out.read_text())
    one, many = res["ms_median_rank0"].values()
    res["step_ratio_many_over_one"] = round(many["step"] / one["step"], 3)
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
