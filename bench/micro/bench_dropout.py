#!/usr/bin/env python
"""The encoder's dropout on CPU: byte-lane masks (``model/dropout.py``) against ``rand_like`` masks.

    .venv/bin/python bench/micro/bench_dropout.py [--batches 40] [--threads 2]

On Beauty's epoch-0 batches (anchors and their same-target partners, as one training step
encodes them, configs/beauty.yaml): (1) the dropout calls alone, replayed on the shapes one
step produces, forward and backward; (2) the encoder's forward + backward with either
dropout, the two interleaved on the same batches with alternating order. Writes
bench/micro/results/dropout.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the shared helpers: _result, _timing, _baseline, _arms

from _result import write_result  # noqa: E402


def rand_like_dropout(x, p: float, training: bool):  # type: ignore[no-untyped-def]
    """The previous implementation: a float mask from one ``rand_like`` draw per element."""
    if not training or p == 0.0:
        return x
    import torch

    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "Beauty.txt"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "micro" / "results" / "dropout.json"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found")
        return 0
    import numpy as np
    import torch

    import fenrec_dist.model.dropout as D
    from _arms import epoch0_batches, prepared_arm
    from fenrec_dist.train.batches import epoch_rng
    from fenrec_dist.train.loop import encode_by_length

    torch.set_num_threads(args.threads)
    variants = {"rand_like": rand_like_dropout, "byte_lanes": D.dropout}
    arm = prepared_arm(args.data, args.config)
    d, model = arm.data.train, arm.model
    model.train()
    rng = epoch_rng(0, 0, 1000)
    steps = []
    for b in epoch0_batches(arm)[: args.batches]:
        p = arm.partners.draw(b, d.target, rng)
        steps.append(np.concatenate([d.inputs[b], d.inputs[p]]))
    cpu = torch.device("cpu")

    def encode(ids: np.ndarray) -> None:
        encode_by_length(model, ids, cpu, packs=model.packs_tokens).sum().backward()

    # (1) the dropout calls of one step, replayed
    shapes: list[tuple[int, ...]] = []
    D.dropout = lambda x, p, t: (shapes.append(tuple(x.shape)), variants["byte_lanes"](x, p, t))[1]
    encode(steps[0])
    xs = [torch.randn(s, requires_grad=True) for s in shapes]
    gs = [torch.randn(s) for s in shapes]
    replay: dict[str, float] = {}
    for name, fn in list(variants.items()) * 2:  # second round is the measured one
        t0 = time.perf_counter()
        for _ in range(20):
            for x, g in zip(xs, gs):
                fn(x, 0.5, True).backward(g)
        replay[name] = round((time.perf_counter() - t0) / 20 * 1e3, 2)

    # (2) encoder forward + backward, interleaved
    enc = {k: 0.0 for k in variants}
    warm = 3
    for i, ids in enumerate(steps):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            D.dropout = variants[name]
            t0 = time.perf_counter()
            encode(ids)
            if i >= warm:
                enc[name] += time.perf_counter() - t0
    D.dropout = variants["byte_lanes"]
    n = len(steps) - warm
    enc_ms = {k: round(v / n * 1e3, 1) for k, v in enc.items()}
    res = {
        "command": " ".join(sys.argv), "threads": args.threads, "batches": n,
        "dropout_calls_per_step": len(shapes), "dropout_elements_per_step": int(sum(np.prod(s) for s in shapes)),
        "replay_fwd_bwd_ms_per_step": replay,
        "replay_ratio": round(replay["byte_lanes"] / replay["rand_like"], 3),
        "encoder_fwd_bwd_ms_per_step": enc_ms,
        "encoder_ratio": round(enc_ms["byte_lanes"] / enc_ms["rand_like"], 3),
    }
    return write_result(args.out, res)


if __name__ == "__main__":
    sys.exit(main())
