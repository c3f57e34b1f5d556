#!/usr/bin/env python
"""The training step eager and replayed from CUDA graphs, on the same batches, in one process.

    python bench/gpu/step_bench.py --data DIR [--config configs/beauty.yaml] [--set KEY=VALUE ...]
        [--device cuda] [--steps 60] [--epoch graphed,eager] [--out FILE.json]

Three encoders over the same initial weights, each followed by the same eager FENRec loss,
backward and fused Adam step:

* ``eager``: the trainer's step today (``model.pack_tokens``: the model packs each batch);
* ``static``: ``model.static_shapes`` (``StaticPlan``: one grid, bucketed token counts), eager;
* ``graphed``: the static encoder's forward and backward replayed from CUDA graphs
  (``model/graphed.py``), one pair per shape key;
* ``graphed_full``: the same over the whole [2B, max_len] grid (``model.token_multiple=0``),
  planned on the device from the ids: no host read in the step;
* ``captured``: the whole step (encoder, loss, backward) in one CUDA graph per shape
  (``CapturedStep``), warm-up phase only: the hard phase's noise negatives are drawn on the
  host generator, which a graph cannot replay.

For the warm-up phase (epoch 0: in-batch negatives) and the hard phase (epoch
``negatives.warmup_epochs``: hard and noise negatives): ``--steps`` batches run once untimed
(graphs are captured then: ``first_pass_s``), then again timed. The epoch-start pass is timed
too (eval-mode representations of every training sample on the device, then k-means with
``intents.backend``, torch on CUDA without faiss-gpu), and ``--epoch`` variants run a whole
hard-phase epoch of batches (captures included). ``--profile-steps`` hard-phase steps of the eager
and graphed variants run under torch.profiler (kernel launches per step, top operators). Static-shape batches are planned on a
background thread into pinned host memory and copied asynchronously; losses are summed on the
device and read once per stage. Prints one JSON line (also written to ``--out``) with
wall-clock start/end (``t0``/``t1``, time.time()) of every stage for the GPU-utilisation
sampler of ``gpu_check.py``.

Needs only torch, numpy, pyarrow and pyyaml (no Ray, DeepSpeed or faiss); it imports nothing
from ``fenrec_dist.train`` (being rewritten), so batches and partners are drawn here: shuffled
batches of ``train.batch_size`` anchors, each with a random training sample of the same target.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fenrec_dist.config import Config, load_config  # noqa: E402
from fenrec_dist.data.dataset import load_prepared  # noqa: E402
from fenrec_dist.negatives.intents import IntentClusters  # noqa: E402
from fenrec_dist.losses.fenrec import FENRecLoss  # noqa: E402
from fenrec_dist.model import build_encoder  # noqa: E402
from fenrec_dist.model.graphed import CapturedStep, GraphedEncoder  # noqa: E402
from fenrec_dist.model.packing import StaticPlan  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def partner_draw(target: np.ndarray, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A function anchors int [B] -> partners int [B]: a random sample with the same target
    (possibly the anchor itself when its target has one sample)."""
    order = np.argsort(target, kind="stable")
    t_sorted = target[order]
    starts = np.searchsorted(t_sorted, target, side="left")
    counts = np.searchsorted(t_sorted, target, side="right") - starts

    def draw(b: np.ndarray) -> np.ndarray:
        return order[starts[b] + (rng.random(len(b)) * counts[b]).astype(np.int64)]

    return draw


class Batches:
    """Host-side batches of one shuffled epoch: ids int64 [2B, L] (anchors then partners) and the
    anchors' target [B], future [B, H + 1], future_len [B]."""

    def __init__(self, data: Any, batch_size: int, seed: int) -> None:
        self.train = data.train
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(self.train))
        self.batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
        self.draw = partner_draw(self.train.target, rng)
        self.partners = [self.draw(b) for b in self.batches]

    def host(self, i: int) -> dict[str, np.ndarray]:
        b, p = self.batches[i], self.partners[i]
        t = self.train
        return {"ids": np.concatenate([t.inputs[b], t.inputs[p]]).astype(np.int64),
                "target": t.target[b].astype(np.int64), "future": t.future[b].astype(np.int64),
                "future_len": t.future_len[b].astype(np.int64)}


def prefetch(make: Callable[[int], Any], indices: list[int], depth: int = 4) -> Iterator[Any]:
    """make(i) for each index on a background thread, at most ``depth`` ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = object()

    def work() -> None:
        try:
            for i in indices:
                q.put(make(i))
        except BaseException as exc:  # surfaced in the consumer
            q.put(exc)
        q.put(stop)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is stop:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class Runner:
    """One encoder variant with its own model copy, optimizer and loss."""

    def __init__(self, variant: str, cfg: Config, state: dict, data: Any, device: torch.device,
                 autocast_dtype: torch.dtype | None) -> None:
        self.variant = variant
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.full = variant.endswith("_full")  # the whole [N, W] grid, planned on the device
        mcfg = dataclasses.replace(cfg.model, static_shapes=variant != "eager",
                                   token_multiple=0 if self.full else cfg.model.token_multiple)
        self.model = build_encoder(mcfg, data.num_items, data.max_len).to(device)
        self.model.load_state_dict(state)
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, fused=True)
        self.loss_fn = FENRecLoss(cfg.loss, cfg.negatives)
        self.encoder = GraphedEncoder(self.model, enabled=variant.startswith("graphed") and device.type == "cuda",
                                      autocast_dtype=autocast_dtype) if variant.startswith(("static", "graphed")) else None
        self.captured: CapturedStep | None = None
        self.gen = torch.Generator().manual_seed(0)
        self.epoch = 0
        self.intents: IntentClusters | None = None
        if variant == "captured":
            # the whole step in one graph per shape: dedup_intents off (an exact speed-up that reads a
            # count on the host; the objective is the same without it)
            self.loss_fn = FENRecLoss(dataclasses.replace(cfg.loss, dedup_intents=False), cfg.negatives)
            self.captured = CapturedStep(list(self.model.parameters()), self._compute,
                                         enabled=device.type == "cuda")

    def _compute(self, *tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        """The whole step as a function of tensors: plan, target, future, future_len."""
        *plan, target, future, future_len = tensors
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else torch.autocast(self.device.type, enabled=False))
        with ctx:
            z = self.model.encode_static(StaticPlan.from_tensors(tuple(plan)))
        z = z.float()
        b = target.shape[0]
        parts = self.loss_fn(z[:b], z[b:], self.model.item_weights().float(), target, future, future_len,
                             self.epoch, self.intents, self.gen)
        return {"objective": parts.objective if parts.objective is not None else parts.total,
                "total": parts.total.detach()}

    def prepare(self, host: dict[str, np.ndarray]) -> dict[str, Any]:
        """Background-thread part of a step: the plan (static variants) as host tensors. No CUDA
        call here (a capture on the main thread must not see one); pinning is on the main thread."""
        out: dict[str, Any] = {k: torch.from_numpy(v) for k, v in host.items() if k != "ids"}
        if self.variant != "eager" and not self.full:
            out["plan"] = self.model.static_plan(host["ids"], device="cpu")
        else:
            out["ids"] = torch.from_numpy(host["ids"])
        return out

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def step(self, item: dict[str, Any], epoch: int, intents: IntentClusters | None, gen: torch.Generator,
             sums: torch.Tensor) -> None:
        dev = self.device
        t = {k: self._dev(v) for k, v in item.items() if k in ("target", "future", "future_len")}
        if self.captured is not None:
            self.epoch, self.intents = epoch, intents
            plan = tuple(self._dev(x) for x in item["plan"].tensors())
            outs = self.captured(*plan, t["target"], t["future"], t["future_len"])
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            sums += torch.stack([outs["total"].float(), torch.ones((), device=dev)])
            return
        if self.encoder is not None:
            if self.full:  # planned on the device from the ids: no host read
                plan = self.model.static_plan(self._dev(item["ids"]))
            else:
                plan = StaticPlan.from_tensors(tuple(self._dev(x) for x in item["plan"].tensors()),
                                               item["plan"].tokens)
            z = self.encoder(plan)
        else:  # the trainer's path: the model packs the batch itself (a host round trip for the plan)
            ctx = (torch.autocast(dev.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                   else torch.autocast(dev.type, enabled=False))
            with ctx:
                z = self.model(self._dev(item["ids"]))
            z = z.float()
        b = t["target"].shape[0]
        parts = self.loss_fn(z[:b], z[b:], self.model.item_weights().float(), t["target"], t["future"],
                             t["future_len"], epoch, intents, gen)
        (parts.objective if parts.objective is not None else parts.total).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sums += torch.stack([parts.total.detach().float(), torch.ones((), device=dev)])

    def run(self, batches: Batches, indices: list[int], epoch: int, intents: IntentClusters | None,
            seed: int) -> dict[str, Any]:
        """The steps of ``indices``; one host read at the end."""
        gen = torch.Generator().manual_seed(seed)
        sums = torch.zeros(2, device=self.device)
        sync(self.device)
        t0 = time.perf_counter()
        for item in prefetch(lambda i: self.prepare(batches.host(i)), indices):
            self.step(item, epoch, intents, gen, sums)
        sync(self.device)
        seconds = time.perf_counter() - t0
        total, steps = sums.tolist()
        samples = int(sum(len(batches.batches[i]) for i in indices))
        if not np.isfinite(total):
            raise FloatingPointError(f"{self.variant}: non-finite loss in epoch {epoch}")
        return {"steps": int(steps), "samples": samples, "seconds": round(seconds, 4),
                "samples_per_s": round(samples / max(seconds, 1e-9), 1),
                "step_ms": round(1000 * seconds / max(len(indices), 1), 3), "mean_loss": round(total / max(steps, 1), 5)}


def profile_steps(r: Runner, batches: Batches, indices: list[int], epoch: int, intents: IntentClusters | None,
                  device: torch.device) -> dict[str, Any]:
    """torch.profiler over the steps of ``indices`` (plans prepared beforehand): kernel launches
    (CUDA) or aten calls (CPU) per step, and the ten operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    items = [r.prepare(batches.host(i)) for i in indices]
    gen = torch.Generator().manual_seed(5)
    sums = torch.zeros(2, device=device)
    sync(device)
    with profile(activities=acts) as prof:
        for item in items:
            r.step(item, epoch, intents, gen, sums)
        sync(device)
    ka = prof.key_averages()
    n = max(len(items), 1)

    def self_us(e: Any) -> float:
        if device.type == "cuda":
            return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))
        return float(e.self_cpu_time_total)

    launch_keys = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
    out: dict[str, Any] = {
        "steps": len(items),
        "aten_calls_per_step": round(sum(e.count for e in ka if e.key.startswith("aten::")) / n, 1),
    }
    if device.type == "cuda":
        out["kernel_launches_per_step"] = round(sum(e.count for e in ka if e.key in launch_keys) / n, 1)
        out["graph_launches_per_step"] = round(sum(e.count for e in ka if e.key == "cudaGraphLaunch") / n, 1)
        out["memcpy_per_step"] = round(sum(e.count for e in ka if e.key.startswith("cudaMemcpy")) / n, 1)
        out["sync_per_step"] = round(sum(e.count for e in ka if "Synchronize" in e.key) / n, 1)
    top = sorted((e for e in ka if self_us(e) > 0 and not e.key.startswith("cuda")), key=self_us, reverse=True)[:10]
    out["top_self_ms_per_step"] = [[e.key[:60], round(e.count / n, 1), round(self_us(e) / 1000 / n, 4)] for e in top]
    return out


@torch.no_grad()
def epoch_start(model: torch.nn.Module, data: Any, cfg: Config, epoch: int, device: torch.device
                ) -> tuple[IntentClusters, dict[str, Any]]:
    """The epoch-start pass on the device: eval-mode representations of every training sample
    (length-sorted batches of intents.batch_size), then k-means (intents.backend)."""
    model.eval()
    inputs = data.train.inputs
    order = np.argsort(data.train.input_len, kind="stable")
    bs = cfg.intents.batch_size
    sync(device)
    t0 = time.perf_counter()
    reprs = torch.empty(len(inputs), cfg.model.hidden, device=device)
    for i in range(0, len(order), bs):
        idx = order[i:i + bs]
        x = torch.from_numpy(inputs[idx].astype(np.int64)).to(device, non_blocking=True)
        reprs[torch.from_numpy(idx).to(device)] = model(x).float()
    sync(device)
    t1 = time.perf_counter()
    intents = IntentClusters.fit(reprs, cfg.intents.k, cfg.intents.niter, seed=cfg.train.seed + epoch,
                                 nredo=cfg.intents.nredo, backend=cfg.intents.backend, device=device)
    sync(device)
    t2 = time.perf_counter()
    model.train()
    return intents, {"embed_s": round(t1 - t0, 3), "kmeans_s": round(t2 - t1, 3), "backend": intents.backend,
                     "k": intents.k, "samples": len(inputs)}


def stage(name: str, fn: Callable[[], dict[str, Any]], device: torch.device, log: Callable[[str], None]
          ) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    out = fn()
    out["t0"], out["t1"] = round(t0, 3), round(time.time(), 3)
    if device.type == "cuda":
        out["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    log(f"{name}: " + json.dumps({k: v for k, v in out.items() if k not in ("t0", "t1")}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset directory")
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per variant and phase")
    ap.add_argument("--variants", default="eager,static,graphed,graphed_full,captured")
    ap.add_argument("--epoch", default="graphed,graphed_full,eager",
                    help="variants that also run a whole hard-phase epoch")
    ap.add_argument("--cluster-passes", type=int, default=2, choices=[1, 2], help="epoch-start passes timed")
    ap.add_argument("--profile-steps", type=int, default=5, help="profiled hard-phase steps, eager and graphed (0: none)")
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args(argv)

    def log(line: str) -> None:
        print(f"[step_bench] {line}", file=sys.stderr, flush=True)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": f"--device cuda, but torch {torch.__version__} sees no CUDA device"}))
        return 1
    cfg = load_config(args.config, [f"data.path={args.data}"] + args.overrides)
    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None  # the trainer's policy on CUDA
    torch.manual_seed(cfg.train.seed)
    base = build_encoder(cfg.model, data.num_items, data.max_len).to(device)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    batches = Batches(data, cfg.train.batch_size, cfg.train.seed)
    n = len(batches.batches)
    steps = min(args.steps, n - 1) if n > 1 else n
    indices = list(range(steps))  # full batches (the last, short one is not among them when n > steps)
    hard_epoch = cfg.negatives.warmup_epochs
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "batches_per_epoch": n, "batch_size": cfg.train.batch_size,
                              "train_samples": len(data.train), "autocast": str(autocast_dtype), "steps": {},
                              "epoch": {}}
    intents = None
    if cfg.loss.beta_fine > 0:
        held: dict[str, IntentClusters] = {}

        def cluster() -> dict[str, Any]:
            held["intents"], info = epoch_start(base, data, cfg, 0, device)
            return info

        # twice by default: the first pays one-time costs (CUDA context, cuBLAS handles, allocator growth)
        if args.cluster_passes > 1:
            result["cluster_first"] = stage("cluster (first)", cluster, device, log)
        result["cluster"] = stage("cluster", cluster, device, log)
        intents = held["intents"]
    del base
    variants = [v for v in args.variants.split(",") if v]
    for phase, epoch in (("warmup", 0), ("hard", hard_epoch)):
        result["steps"][phase] = {}
        for v in variants:
            if v == "captured" and phase == "hard" and cfg.negatives.noise_ratio > 0 and "noise" in cfg.negatives.sources:
                result["steps"][phase][v] = {"skipped": "noise negatives are drawn on the host generator "
                                                        "(losses/noise_negatives.py draw_noise): not capturable"}
                continue
            r = Runner(v, cfg, state, data, device, autocast_dtype)

            def go(r: Runner = r, epoch: int = epoch) -> dict[str, Any]:
                first = r.run(batches, indices, epoch, intents, seed=1)  # captures happen here
                out = r.run(batches, indices, epoch, intents, seed=2)
                out["first_pass_s"] = first["seconds"]
                if r.encoder is not None:
                    out["graphs"], out["eager_encoder_calls"] = r.encoder.graphs, r.encoder.eager_calls
                    out["capture_failure"] = r.encoder.failure
                if r.captured is not None:
                    out["graphs"], out["eager_steps"] = r.captured.graphs, r.captured.eager_calls
                    out["capture_failure"] = r.captured.failure
                return out

            result["steps"][phase][v] = stage(f"steps {phase} {v}", go, device, log)
            del r
        eager = result["steps"][phase].get("eager", {}).get("samples_per_s")
        for v in variants:
            if eager and v != "eager" and "samples_per_s" in result["steps"][phase][v]:
                result["steps"][phase][v]["speedup_vs_eager"] = round(result["steps"][phase][v]["samples_per_s"] / eager, 3)
    if args.profile_steps > 0:
        result["profile_hard"] = {}
        for v in [v for v in ("eager", "graphed", "graphed_full") if v in variants]:
            r = Runner(v, cfg, state, data, device, autocast_dtype)
            prof_idx = indices[: args.profile_steps]
            r.run(batches, prof_idx, hard_epoch, intents, seed=4)  # captures first
            result["profile_hard"][v] = stage(f"profile hard {v}", lambda r=r: profile_steps(
                r, batches, prof_idx, hard_epoch, intents, device), device, log)
            del r
    for v in [v for v in args.epoch.split(",") if v]:
        r = Runner(v, cfg, state, data, device, autocast_dtype)

        def whole(r: Runner = r) -> dict[str, Any]:
            out = r.run(batches, list(range(n)), hard_epoch, intents, seed=3)
            if r.encoder is not None:
                out["graphs"], out["eager_encoder_calls"] = r.encoder.graphs, r.encoder.eager_calls
                out["capture_failure"] = r.encoder.failure
            return out

        result["epoch"][v] = stage(f"epoch hard {v}", whole, device, log)
        del r
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
