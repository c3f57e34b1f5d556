#!/usr/bin/env python
"""How a post-warm-up Beauty training step uses this machine's cores.

    .venv/bin/python bench/micro/bench_threads.py [--batches 24] [--rounds 4]

The same ``--batches`` random batches of epoch 0 (configs/beauty.yaml, hard + noise
negatives on, intents from a k-means of the initial model, anchors with their same-target
partners), each arm one pass over all of them, the arms interleaved round by round in
alternating order (``_timing.interleaved``):

- ``step_1thread`` / ``step_2threads``: the whole training step (``train_epoch`` on one
  batch: partners, encoder, loss, backward, Adam) with 1 and 2 intra-op threads;
- ``encoder_1thread`` / ``encoder_2threads``: the SASRec forward + backward of the 2B rows
  (anchors and partners in one packed call), 1 and 2 intra-op threads;
- ``encoder_2x1``: the anchors and the partners encoded (forward + backward) at the same
  time in two Python threads with one intra-op thread each: inter-op instead of intra-op
  parallelism (torch releases the GIL inside its ops; the backward of a CPU graph runs on
  the thread that calls it);
- ``step_split_2x1``: a whole step built on that (a prototype, not in the package): the 2B
  rows split into two halves of equal length mix, each encoded in its own 1-thread Python
  thread, the loss (2 threads) on the joined detached outputs, each half's encoder backward
  (``torch.autograd.grad``) again in its own thread, the gradients summed in a fixed order,
  then Adam.

Reports ms per batch (median of the rounds), the scaling from 1 to 2 threads, and what
the whole step at perfect 2-core scaling would give for a 514-batch epoch. Writes
bench/micro/results/threads.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402
from _timing import interleaved  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "threads.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import numpy as np
    import torch

    from _arms import epoch0_batches, fit_intents, prepared_arm
    from fenrec_dist.train.batches import epoch_rng, to_tensor

    torch.set_num_threads(2)
    arm = prepared_arm(args.data, args.config)
    fit_intents(arm)
    batches = epoch0_batches(arm)
    pick = np.random.default_rng(1).choice(len(batches), args.batches, replace=False)
    chosen = [batches[i] for i in pick]
    tab = arm.data.train
    rng = epoch_rng(0, 0, 1000)
    rows = [np.concatenate([tab.inputs[b], tab.inputs[arm.partners.draw(b, tab.target, rng)]]) for b in chosen]
    model = arm.model
    model.train()

    def encode(ids: np.ndarray) -> None:
        model(to_tensor(ids, arm.device)).sum().backward()

    def with_threads(n: int, fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            torch.set_num_threads(n)
            fn()
            torch.set_num_threads(2)
        return run

    def steps() -> None:
        for i, b in enumerate(chosen):
            arm.run(b, seed=i)

    def encoder_all() -> None:
        for ids in rows:
            encode(ids)

    def encoder_2x1() -> None:
        def worker(half: int) -> None:
            torch.set_num_threads(1)  # this thread's intra-op threads (OpenMP's per-thread setting)
            for ids in rows:
                n = len(ids) // 2
                encode(ids[:n] if half == 0 else ids[n:])
        ts = [threading.Thread(target=worker, args=(h,)) for h in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    from concurrent.futures import ThreadPoolExecutor

    from fenrec_dist.train.loop import step_generator

    pool = ThreadPoolExecutor(2, initializer=lambda: torch.set_num_threads(1))
    params = [p for p in model.parameters() if p.requires_grad]
    gen = step_generator(0, 0)

    def split_step(b: np.ndarray, ids: np.ndarray) -> None:
        order = np.argsort((ids != 0).sum(axis=1), kind="stable")
        halves = [order[0::2], order[1::2]]
        zs = list(pool.map(lambda h: model(to_tensor(ids[h], arm.device)), halves))
        leaves = [z.detach().requires_grad_() for z in zs]
        inv = torch.from_numpy(np.argsort(np.concatenate(halves), kind="stable"))
        z = torch.cat(leaves)[inv]
        n = len(b)
        arm.loss_fn(z[:n], z[n:], model.item_weights(), to_tensor(tab.target[b], arm.device),
                    to_tensor(tab.future[b], arm.device), to_tensor(tab.future_len[b], arm.device), 0,
                    arm.intents, gen).total.backward()
        grads = list(pool.map(lambda k: torch.autograd.grad(zs[k], params, leaves[k].grad, allow_unused=True), [0, 1]))
        for p, *gs in zip(params, *grads):
            for g in gs:
                if g is not None:
                    p.grad = g.clone() if p.grad is None else p.grad.add_(g)
        arm.opt.step()
        arm.opt.zero_grad(set_to_none=True)

    def split_steps() -> None:
        for b, ids in zip(chosen, rows):
            split_step(b, ids)

    arms = {
        "step_split_2x1": split_steps,
        "step_1thread": with_threads(1, steps), "step_2threads": with_threads(2, steps),
        "encoder_1thread": with_threads(1, encoder_all), "encoder_2threads": with_threads(2, encoder_all),
        "encoder_2x1": encoder_2x1,
    }
    for fn in arms.values():  # warm-up: allocator, oneDNN primitives
        fn()
    times = interleaved(arms, args.rounds)
    pool.shutdown()
    ms = {k: round(statistics.median(v) / len(chosen), 1) for k, v in times.items()}
    model.zero_grad(set_to_none=True)
    n_epoch = len(batches)
    res = {
        "command": " ".join(sys.argv), "batches": len(chosen), "rounds": args.rounds,
        "mean_tokens_per_batch": round(float(np.mean([(r != 0).sum() for r in rows])), 1),
        "ms_per_batch_median": ms,
        "scaling_1_to_2_threads": {
            "step": round(ms["step_1thread"] / ms["step_2threads"], 2),
            "encoder_intra_op": round(ms["encoder_1thread"] / ms["encoder_2threads"], 2),
            "encoder_2x1_inter_op": round(ms["encoder_1thread"] / ms["encoder_2x1"], 2),
        },
        "step_split_2x1_over_step_2threads": round(ms["step_split_2x1"] / ms["step_2threads"], 3),
        "epoch_train_s": {
            "at_2_threads": round(n_epoch * ms["step_2threads"] / 1000, 1),
            "at_perfect_2_core_scaling": round(n_epoch * ms["step_1thread"] / 2000, 1),
        },
        "batches_per_epoch": n_epoch,
    }
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
