#!/usr/bin/env python
"""Training steps on large synthetic catalogues: full against sampled L_rec.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale/bench_catalogue.py \
        [--sizes 12000 100000 1000000] [--modes full sampled] [--steps 50] [--mined 0 64 256] [--nprobe 8 4]

For every catalogue size and mode a fresh child process (1 thread) builds the Beauty SASRec
(configs/beauty.yaml: d = 64, 2 blocks, max_len 50) over the catalogue and runs ``--steps``
FENRec steps after the warm-up (soft-label L_rec, coarse and fine intent contrast with hard and
noise negatives; 256 random intents) on synthetic batches of 256 anchors + 256 partners:
input lengths 1..50 (geometric, mean about 9 as Beauty's samples), items, targets and their
2-item windows drawn from a Zipf(1.1) popularity. One step = encoder forward, loss, backward,
optimizer step (for ``sampled`` with a ``--mined`` K > 0 also the item-index search of the
anchors' K hard items, the index built once before the steps: its build time is reported as the
refresh). ``sampled`` runs once per value of ``--mined`` (and of ``--nprobe``, the IVF lists
each search visits, ``negatives.item_index_nprobe``; the config's 8 when not given). A run with
an IVF index also reports the mined items' recall of the exact top K (each anchor's K
highest-scoring items outside its window, over the whole catalogue) on the last step's anchors.

- full: ``loss.rec_softmax: full`` and today's fused dense Adam;
- sampled: ``loss.rec_softmax: sampled`` (in-batch + ``--random`` popularity draws with logQ,
  ``--mined`` hard items) and ``optim.make_optimizer``'s row-sparse Adam on the item table.

Per child: median and mean step time over the steps after 3 warm-up steps (wall clock, and
the process's CPU time, which a machine shared with other jobs disturbs less; the 1-minute load
average before and after is recorded), peak RSS
(``ru_maxrss``) and its breakdown: the process before the model (Python, torch, FAISS), the
item table, the optimizer state, the item table's gradient at its largest (dense for full,
the touched rows for sampled), the item index, the batch data, and the rest (activations and
temporaries of the step). Writes ``--out`` (bench/scale/results/catalogue.json) with provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result

MIB = 1024.0 * 1024.0


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from fenrec_dist.config import load_config
    from fenrec_dist.negatives.intents import IntentClusters
    from fenrec_dist.losses.fenrec import FENRecLoss
    from fenrec_dist.model import build_encoder
    from fenrec_dist.negatives.item_index import ItemIndex
    from fenrec_dist.optim import make_optimizer

    base = rss_mib()
    n_items, mode, b = args.size, args.mode, args.batch
    sets = [f"loss.rec_softmax={mode}", f"loss.sampled_random={args.random}", "loss.sampled_popularity=true",
            f"loss.sampled_mined={args.mined}"] + ([f"negatives.item_index_nprobe={args.nprobe}"] if args.nprobe else []) \
        + ([f"negatives.item_index_nlist={args.nlist}"] if args.nlist else [])
    cfg = load_config(ROOT / "configs" / "beauty.yaml", sets)
    rng = np.random.default_rng(0)
    pop = 1.0 / np.arange(1, n_items + 1) ** 1.1
    pop /= pop.sum()
    cdf = np.cumsum(pop)
    counts = torch.zeros(n_items + 1)
    counts[1:] = torch.from_numpy(np.round(pop * 50 * n_items)).float()

    def draw(shape):  # Zipf item ids 1..I
        return np.minimum(np.searchsorted(cdf, rng.random(shape)), n_items - 1) + 1

    def batch():
        L = cfg.data.max_len
        lengths = np.minimum(rng.geometric(1 / 9.0, size=2 * b), L)
        ids = draw((2 * b, L))
        ids[np.arange(L)[None, :] < (L - lengths)[:, None]] = 0  # left padding
        future = draw((b, 3))
        flen = rng.integers(1, 4, size=b)
        future[np.arange(3)[None, :] >= flen[:, None]] = 0
        return (torch.from_numpy(ids), torch.from_numpy(future), torch.from_numpy(flen))

    batches = [batch() for _ in range(args.steps)]
    data_mib = sum(sum(t.numel() * t.element_size() for t in bt) for bt in batches) / MIB
    torch.manual_seed(0)
    model = build_encoder(cfg.model, n_items, cfg.data.max_len)
    table_mib = model.item_emb.weight.numel() * 4 / MIB
    opt = make_optimizer(model, cfg)
    loss_fn = FENRecLoss(cfg.loss, cfg.negatives, item_counts=counts)
    intents = IntentClusters(rng.normal(size=(cfg.intents.k, cfg.model.hidden)).astype(np.float32), backend="faiss")
    index, index_mib, refresh_s = None, 0.0, None
    if mode == "sampled" and args.mined > 0:
        before = rss_mib()
        index = ItemIndex.build(model.item_emb.weight.detach().numpy(), cfg.negatives, seed=0)
        refresh_s = index.build_seconds
        index_mib = rss_mib() - before
    epoch = cfg.negatives.warmup_epochs  # after the warm-up: hard and noise negatives, shaping
    gen = torch.Generator().manual_seed(0)
    model.train()
    times, grad_mib, touched = [], 0.0, []
    cpu_times = []
    load_before = os.getloadavg()
    for ids, future, flen in batches:
        t0, c0 = time.perf_counter(), time.process_time()
        z = model(ids)
        mined = None
        if index is not None:
            mined = torch.from_numpy(index.mine(z[:b].detach().numpy(), args.mined, future.numpy()))
        parts = loss_fn(z[:b], z[b:], model.item_weights(), future[:, 0], future, flen, epoch, intents, gen,
                        mined_items=mined)
        parts.objective.backward()
        t1, c1 = time.perf_counter(), time.process_time()
        g = model.item_emb.weight.grad  # inspected outside the timed part of the step
        if g.is_sparse:
            g = g.coalesce()
            touched.append(int(g.indices().shape[1]))
            grad_mib = max(grad_mib, g.values().numel() * 4 / MIB)
        else:
            grad_mib = max(grad_mib, g.numel() * 4 / MIB)
        del g
        t2, c2 = time.perf_counter(), time.process_time()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t2 + (t1 - t0))
        cpu_times.append(time.process_time() - c2 + (c1 - c0))
    peak = peak_mib()  # before the exact search below (a second copy of the table)
    mined_recall = None
    if index is not None and index.kind != "flat":  # the mined items against an exact search of the same table
        import faiss

        flat = faiss.IndexFlatIP(cfg.model.hidden)
        flat.add(np.ascontiguousarray(model.item_emb.weight.detach().numpy()[1:]))
        exact = ItemIndex(flat, "flat", n_items, cfg.model.hidden)
        q = z[:b].detach().numpy()
        got, want = index.mine(q, args.mined, future.numpy()), exact.mine(q, args.mined, future.numpy())
        mined_recall = float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))
        del flat, exact
    state = opt.state_dict()
    states = [state] if "state" in state else [state["dense"], state["sparse"]]
    opt_mib = sum(v.numel() * v.element_size() for s in states for st in s["state"].values()
                  for v in st.values() if torch.is_tensor(v)) / MIB
    steady = times[3:] if len(times) > 3 else times
    steady_cpu = cpu_times[3:] if len(cpu_times) > 3 else cpu_times
    known = base + table_mib + opt_mib + grad_mib + index_mib + data_mib
    return {
        "items": n_items, "mode": mode, "steps": len(times), "batch": b,
        "random": args.random if mode == "sampled" else None, "mined": args.mined if mode == "sampled" else None,
        "step_ms_median": 1000 * float(np.median(steady)), "step_ms_mean": 1000 * float(np.mean(steady)),
        "step_cpu_ms_median": 1000 * float(np.median(steady_cpu)),
        "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "loss_last": float(parts.total.detach()), "touched_rows_mean": float(np.mean(touched)) if touched else None,
        "index_kind": index.kind if index is not None else None, "index_refresh_s": refresh_s,
        "nprobe": (min(index.index.nprobe, index.index.nlist) if index is not None and index.kind == "ivf" else None),
        "nlist": (index.index.nlist if index is not None and index.kind == "ivf" else None),
        "mined_recall_of_exact": mined_recall,
        "peak_rss_mib": peak,
        "breakdown_mib": {"process_before_model": base, "item_table": table_mib, "optimizer_state": opt_mib,
                          "item_grad_max": grad_mib, "item_index": index_mib, "batch_data": data_mib,
                          "activations_and_temporaries": max(0.0, peak - known)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[12_000, 100_000, 1_000_000])
    ap.add_argument("--modes", nargs="+", default=["full", "sampled"], choices=["full", "sampled"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--random", type=int, default=1024)
    ap.add_argument("--mined", type=int, nargs="+", default=[0, 64, 256])
    ap.add_argument("--nprobe", type=int, nargs="+", help="IVF lists per search (default: the config's)")
    ap.add_argument("--nlist", type=int, default=0,
                    help="IVF lists of the item index (negatives.item_index_nlist; default: the config's, about sqrt(I))")
    ap.add_argument("--full-sizes", type=int, nargs="+", help="sizes of the full runs (default: --sizes)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results" / "catalogue.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.mined = args.mined[0]
        args.nprobe = args.nprobe[0] if args.nprobe else None
        print(json.dumps(child(args)))
        return 0
    from _result import write_result

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs = []
    full_sizes = args.sizes if args.full_sizes is None else args.full_sizes
    jobs = [(size, mode, k, p) for size in args.sizes for mode in args.modes
            for k in (args.mined if mode == "sampled" else [0])
            for p in (args.nprobe or [None] if mode == "sampled" and k > 0 and size >= 100_000 else [None])
            if mode == "sampled" or size in full_sizes]  # below 100k items the index is flat: nprobe is moot
    for size, mode, k, p in jobs:
            cmd = [sys.executable, __file__, "--child", "--size", str(size), "--mode", mode, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--random", str(args.random), "--mined", str(k)]
            cmd += ["--nprobe", str(p)] if p else []
            cmd += ["--nlist", str(args.nlist)] if args.nlist else []
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                runs.append({"items": size, "mode": mode, "mined": k, "error": out.stderr.strip().splitlines()[-1:]})
            else:
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            runs[-1]["wall_s"] = time.perf_counter() - t0
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    small = min(args.sizes)
    ref = next((r for r in runs if "error" not in r and r["items"] == small and r["mode"] == "full"), None)
    summary = {}
    for r in runs:
        if "error" not in r and ref is not None:
            name = r["mode"] if r["mode"] == "full" else f"sampled_mined{r['mined']}"
            if args.nprobe and r.get("nprobe"):
                name += f"_nprobe{r['nprobe']}"
            summary[f"{name}@{r['items']}_over_full@{small}"] = {
                "wall": r["step_ms_median"] / ref["step_ms_median"],
                "cpu": r["step_cpu_ms_median"] / ref["step_cpu_ms_median"]}
    return write_result(args.out, {"benchmark": "catalogue", "threads": 1, "runs": runs, "ratios": summary,
                                   "goal": "sampled at 1M items <= 1.5x the 12k-item full step; peak RSS at 1M < 3 GiB"})


if __name__ == "__main__":
    raise SystemExit(main())
