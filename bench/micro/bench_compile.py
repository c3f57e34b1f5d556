#!/usr/bin/env python
"""Would ``torch.compile`` (inductor's fused C++ kernels) speed up the training step on CPU?

    .venv/bin/python bench/micro/bench_compile.py [--threads 2] [--reps 30] [--steps 30]

Three measurements, each arm interleaved with the other in the same process:

1. the noise negatives' gradient ascent (``nudge_noise_contrast``: 4 steps over a
   [512, 512] block, Beauty's shapes) eager against ``torch.compile``;
2. the shaped coarse contrastive loss with in-batch, hard (lam 0.4, weight 0.1) and noise
   negatives, forward + backward: the package's hand-written autograd nodes eager against
   the plain formula compiled (inductor also generates its backward);
3. with ../shared/data/Beauty.txt: whole post-warm-up training steps (``bench_step``'s
   set-up) with the eager ascent against the compiled one.

Values and gradients of each pair are compared too. Writes bench/micro/results/compile.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402
from _timing import interleaved  # noqa: E402


def plain_coarse(z1, z2, groups, noise, lam: float, weight: float, tau: float, margin: float):  # type: ignore[no-untyped-def]
    """The coarse loss written as plain tensor math (what ``torch.compile`` is given).

    The hard negatives are detached: the denominator of h_an . z_a and |z_n| are constants,
    so the gradient to z_a is h_an, as in ``losses.hard_negatives``."""
    import torch

    z = torch.cat([z1, z2])
    n = z.shape[0]
    g = torch.cat([groups, groups])
    idx = torch.arange(n, device=z.device)
    partner = (idx + n // 2) % n
    mask = (g[:, None] == g[None, :]) | (idx[:, None] == idx[None, :]) | (idx[None, :] == partner[:, None])
    sims = z @ z.t()
    pos = sims[idx, partner]
    pos_l = pos * torch.tanh(pos / tau)

    def neg(s):  # type: ignore[no-untyped-def]
        return s * (torch.tanh(s / tau) + margin)

    zd = z.detach()
    na = z.norm(dim=1).clamp_min(1e-12)
    nk = zd.norm(dim=1).clamp_min(1e-12)
    gram = z @ zd.t()
    cos = gram.detach() / (na.detach()[:, None] * nk[None, :])
    denom = (cos * (2 * lam * (1 - lam)) + ((1 - lam) ** 2 + lam**2)).clamp_min(1e-12).sqrt()
    hard = ((1 - lam) * gram + lam * na[:, None] * nk[None, :]) / denom
    parts = [pos_l[:, None], neg(sims).masked_fill(mask, -math.inf),
             (neg(hard) + math.log(weight)).masked_fill(mask, -math.inf), neg(z @ noise.t())]
    return (torch.logsumexp(torch.cat(parts, 1), 1) - pos_l).mean()


def summary(times: dict[str, list[float]], base: str, new: str) -> dict:  # type: ignore[type-arg]
    return {"ms_median": {k: round(statistics.median(v), 2) for k, v in times.items()},
            "ratio_median_of_pairs": round(statistics.median(n / b for n, b in zip(times[new], times[base])), 3)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "compile.json"))
    args = ap.parse_args()
    import torch

    from fenrec_dist.losses.hard_negatives import hard_negative_logits
    from fenrec_dist.losses.intent_contrast import NegativeBlock, contrast_loss, make_contrast_batch
    from fenrec_dist.losses.noise_negatives import nudge_noise_contrast
    from fenrec_dist.losses.shaping import Shaping

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    b, d, tau, margin, lam, weight = 256, 64, 8.0, 0.2, 0.4, 0.1
    shaping = Shaping(True, tau, margin)
    z1 = 0.5 * torch.randn(b, d, generator=gen)
    z2 = 0.5 * torch.randn(b, d, generator=gen)
    groups = torch.randint(1, 2000, (b,), generator=gen)
    groups[:16] = groups[16:32]  # some shared targets: false negatives to mask
    noise = torch.randn(2 * b, d, generator=gen)
    fixed = torch.randn(2 * b, generator=gen)
    res: dict = {"command": " ".join(sys.argv), "threads": args.threads, "torch": torch.__version__}  # type: ignore[type-arg]

    # 1. the noise ascent
    z = torch.cat([z1, z2])

    def ascent(fn):  # type: ignore[no-untyped-def]
        return lambda: fn(noise, z, fixed, shaping, 1.0, 4, 1e-3)

    compiled_ascent = torch.compile(nudge_noise_contrast, dynamic=False)
    t0 = time.perf_counter()
    out_c = ascent(compiled_ascent)()
    compile_s = time.perf_counter() - t0
    diff = float((out_c - ascent(nudge_noise_contrast)()).abs().max())
    t = interleaved({"eager": ascent(nudge_noise_contrast), "compiled": ascent(compiled_ascent)}, args.reps, 5)
    res["noise_ascent"] = {**summary(t, "eager", "compiled"), "compile_s": round(compile_s, 1), "max_abs_diff": diff}

    # 2. the coarse contrastive loss, forward + backward
    def handwritten(a, c):  # type: ignore[no-untyped-def]
        cb = make_contrast_batch(a, c, groups, 1.0)
        blocks = [NegativeBlock(cb.sims, 1.0, cb.mask),
                  NegativeBlock(hard_negative_logits(cb.anchors, cb.z, lam), weight, cb.mask),
                  NegativeBlock(cb.anchors @ noise.t(), 1.0, None)]
        return contrast_loss(cb, blocks, shaping)

    compiled_plain = torch.compile(plain_coarse, dynamic=False)

    def fwd_bwd(fn):  # type: ignore[no-untyped-def]
        def run():  # type: ignore[no-untyped-def]
            a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
            loss = fn(a, c)
            loss.backward()
            return loss.detach(), a.grad, c.grad
        return run

    hand = fwd_bwd(handwritten)
    comp = fwd_bwd(lambda a, c: compiled_plain(a, c, groups, noise, lam, weight, tau, margin))
    t0 = time.perf_counter()
    lc, ga_c, gc_c = comp()
    compile_s = time.perf_counter() - t0
    lh, ga_h, gc_h = hand()
    t = interleaved({"handwritten": hand, "compiled_plain": comp}, args.reps, 3)
    res["coarse_loss_fwd_bwd"] = {**summary(t, "handwritten", "compiled_plain"), "compile_s": round(compile_s, 1),
                                  "loss_abs_diff": float((lc - lh).abs()),
                                  "grad_max_abs_diff": float(max((ga_c - ga_h).abs().max(), (gc_c - gc_h).abs().max())),
                                  "grad_max_abs": float(max(ga_h.abs().max(), gc_h.abs().max()))}

    # 3. whole steps with the compiled ascent
    if Path(args.data).exists():
        import fenrec_dist.losses.samplers as samplers
        from _arms import epoch0_batches, fit_intents, prepared_arm

        eager_arm = prepared_arm(args.data, args.config, ["negatives.warmup_epochs=0"])
        fit_intents(eager_arm)
        comp_arm = prepared_arm(args.data, args.config, ["negatives.warmup_epochs=0"])
        comp_arm.model.load_state_dict(eager_arm.model.state_dict())
        comp_arm.intents = eager_arm.intents
        batches = epoch0_batches(eager_arm)
        calls = {"eager": 0, "compiled": 0}

        def counted(name, fn):  # type: ignore[no-untyped-def]
            def call(*a, **k):  # type: ignore[no-untyped-def]
                calls[name] += 1
                return fn(*a, **k)
            return call

        arms = {"eager": (eager_arm, counted("eager", nudge_noise_contrast)),
                "compiled": (comp_arm, counted("compiled", compiled_ascent))}
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        loss_diff = 0.0
        for i in range(3 + args.steps):
            batch = batches[i % len(batches)]
            out = {}
            for name in (["eager", "compiled"] if i % 2 == 0 else ["compiled", "eager"]):
                arm, fn = arms[name]
                samplers.nudge_noise_contrast = fn
                dt, _, losses = arm.run(batch, seed=i)
                out[name] = losses
                if i >= 3:
                    times[name].append(1000 * dt)
            loss_diff = max(loss_diff, max(abs(out["compiled"][k] - out["eager"][k]) for k in out["eager"]))
        samplers.nudge_noise_contrast = nudge_noise_contrast
        res["beauty_step"] = {**summary(times, "eager", "compiled"), "steps": args.steps,
                              "ascent_calls": calls, "max_loss_abs_diff": float(f"{loss_diff:.3g}")}
    else:
        res["beauty_step"] = f"skipped: {args.data} not found"
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
