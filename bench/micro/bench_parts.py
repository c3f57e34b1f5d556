#!/usr/bin/env python
"""Parts of the FENRec loss at this checkout against a git revision's, on Beauty's shapes.

    .venv/bin/python bench/micro/bench_parts.py [--baseline 8467dc9] [--reps 40] [--threads 2]

No data needed; random inputs at the scale of a fresh model (|z| about 8), the same for both
versions, each pair of arms interleaved (``bench/_timing.py``):

- ``noise_ascent``: ``nudge_noise_contrast``, N = 2B = 512 anchors, R = rho B = 512 noise
  vectors, d = 64, 4 steps of 1e-3, shaping tau 8, m 0.2;
- ``soft_label_ce``: ``soft_label_loss_from_reprs`` forward + backward, B = 256 against the
  12,102-row item table, a future window of 3, gamma 0.2;
- ``encoder``: SASRec (configs/beauty.yaml's model, token packing, dropout 0.5) forward +
  backward of sum(z^2) on 512 left-padded rows whose lengths follow Beauty's training samples
  (1 + a geometric draw with p = 0.13, capped at 50: mean about 8, as Beauty's 8.4), the same
  weights in both versions; the difference is measured with dropout off;
- ``fenrec_loss``: the whole ``FENRecLoss`` after the warm-up (configs/beauty.yaml's
  negatives: in-batch, hard with lam 0.4 and weight 0.1, noise rho 2; coarse 0.3, fine 0.1;
  k = 256 intents fitted on 20,000 random points), forward + backward, B = 256; includes the
  soft-label term and the intent assignment.

Reports ms per call (median), the ratio new / baseline and the largest difference of the
outputs. Writes bench/micro/results/parts.json.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402
from _timing import interleaved  # noqa: E402


def _parts(pkg: str, inputs: dict):  # type: ignore[no-untyped-def]
    """(name -> callable returning the part's output (a tensor), the encoder) for package ``pkg``."""
    import torch

    mod = lambda name: importlib.import_module(f"{pkg}.{name}")  # noqa: E731
    cfg_mod = mod("config")
    shaping = mod("losses.shaping").Shaping(True, 8.0, 0.2)
    nudge = mod("losses.noise_negatives").nudge_noise_contrast
    ce = mod("losses.soft_labels").soft_label_loss_from_reprs
    loss = mod("losses.fenrec").FENRecLoss(cfg_mod.LossConfig(lambda_coarse=0.3, beta_fine=0.1),
                                         cfg_mod.NegativesConfig(warmup_epochs=0))
    try:  # negatives/intents.py since ec29aac
        intents_mod = mod("negatives.intents")
    except ModuleNotFoundError:  # a baseline revision from before it
        intents_mod = mod("intents")
    intents = intents_mod.IntentClusters(inputs["centroids"])
    x = inputs
    torch.manual_seed(0)
    encoder = mod("model").build_encoder(cfg_mod.ModelConfig(), 12101, 50)
    encoder.load_state_dict(inputs["encoder_state"])

    def encoder_fwd_bwd() -> torch.Tensor:
        encoder.train()
        torch.manual_seed(2)  # the dropout draws
        z = encoder(x["ids"])
        (z * z).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in encoder.parameters()])
        encoder.zero_grad(set_to_none=True)
        return torch.cat([z.detach().flatten(), grads])

    def soft_label_ce() -> torch.Tensor:
        z = x["z1"].clone().requires_grad_(True)
        w = x["items"].clone().requires_grad_(True)
        ce(z, w, x["future"], x["flen"], 0.2).backward()
        return torch.cat([z.grad.flatten(), w.grad.flatten()])

    def fenrec_loss() -> torch.Tensor:
        z1, z2 = x["z1"].clone().requires_grad_(True), x["z2"].clone().requires_grad_(True)
        w = x["items"].clone().requires_grad_(True)
        parts = loss(z1, z2, w, x["target"], x["future"], x["flen"], 0, intents, torch.Generator().manual_seed(1))
        parts.total.backward()
        return torch.cat([parts.total.detach()[None], z1.grad.flatten(), z2.grad.flatten(), w.grad.flatten()])

    return {
        "noise_ascent": lambda: nudge(x["noise"], x["anchors"], x["fixed"], shaping, 1.0, 4, 1e-3),
        "soft_label_ce": soft_label_ce,
        "encoder": encoder_fwd_bwd,
        "fenrec_loss": fenrec_loss,
    }, encoder


class _dropout_off:
    """Every dropout rate of the given modules at 0 inside the block."""

    def __init__(self, *modules) -> None:  # type: ignore[no-untyped-def]
        import torch

        self.mods = [m for mod in modules for m in mod.modules() if isinstance(m, torch.nn.Dropout)]
        self.saved = [m.p for m in self.mods]

    def __enter__(self) -> None:
        for m in self.mods:
            m.p = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, p in zip(self.mods, self.saved):
            m.p = p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="8467dc9", help="git revision to compare with")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "parts.json"))
    args = ap.parse_args()
    import torch

    from _baseline import revision_package

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    b, d, items = 256, 64, 12102
    target = torch.randint(1, items, (b,), generator=g)
    inputs = {
        "anchors": unit(2 * b, d) * 8, "fixed": torch.randn(2 * b, generator=g) * 4 + 40,
        "noise": torch.randn(2 * b, d, generator=g),
        "z1": unit(b, d) * 8, "z2": unit(b, d) * 8, "items": torch.randn(items, d, generator=g) * 0.02,
        "target": target, "future": torch.stack([target, target % (items - 1) + 1, (target + 1) % (items - 1) + 1], 1),
        "flen": torch.randint(1, 4, (b,), generator=g),
    }
    import numpy as np

    from fenrec_dist.config import ModelConfig
    from fenrec_dist.negatives.intents import IntentClusters
    from fenrec_dist.model import build_encoder

    lengths = np.minimum(1 + np.random.default_rng(0).geometric(0.13, 2 * b), 50)
    ids = torch.zeros(2 * b, 50, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, 50 - n:] = torch.randint(1, items, (int(n),), generator=g)
    inputs["ids"] = ids
    inputs["encoder_state"] = build_encoder(ModelConfig(), 12101, 50).state_dict()
    inputs["centroids"] = IntentClusters.fit((unit(20000, d) * 8).numpy(), 256, seed=0).centroids
    res: dict = {"command": " ".join(sys.argv), "baseline": args.baseline, "threads": args.threads,
                 "reps": args.reps, "ms_median": {}, "ratio_new_over_baseline": {}, "max_abs_difference": {}}
    with tempfile.TemporaryDirectory() as tmp:
        revision_package(args.baseline, Path(tmp))
        sys.path.insert(0, tmp)
        (new, new_enc), (base, base_enc) = _parts("fenrec_dist", inputs), _parts("fenrec_dist_base", inputs)
        for name in new:
            arms = {"baseline": base[name], "new": new[name]}
            for f in arms.values():  # warm-up
                f()
            times = interleaved(arms, args.reps)
            med = {k: statistics.median(v) for k, v in times.items()}
            res["ms_median"][name] = {k: round(v, 2) for k, v in med.items()}
            res["ratio_new_over_baseline"][name] = round(med["new"] / med["baseline"], 3)
            with _dropout_off(new_enc, base_enc):
                out_new, out_base = arms["new"](), arms["baseline"]()
            if not (torch.isfinite(out_new).all() and torch.isfinite(out_base).all()):
                raise FloatingPointError(f"{name}: a non-finite output")
            res["max_abs_difference"][name] = float(f"{float((out_new - out_base).abs().max()):.3g}")
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
