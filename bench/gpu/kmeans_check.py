#!/usr/bin/env python
"""FAISS k-means against the torch k-means (intents.backend) on real representations.

    python bench/gpu/kmeans_check.py --data data/beauty [--device cpu|cuda] [--k 256] [--niter 20]
        [--threads 1] [--out FILE.json]

Embeds every training sample with a freshly initialised SASRec (eval mode, the epoch-start pass
of epoch 0), clusters the float32 [N, d] representations with ``faiss.Kmeans`` (host CPU) and
with ``negatives/torch_kmeans.py`` on ``--device`` from the same seed, and prints one JSON line:
seconds of each, the two inertias and their ratio, the largest centroid difference, and the
share of samples assigned alike. FAISS is optional (only the torch figures without it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fenrec_dist.config import load_config  # noqa: E402
from fenrec_dist.data.dataset import load_prepared  # noqa: E402
from fenrec_dist.model import build_encoder  # noqa: E402
from fenrec_dist.negatives.knn import nearest  # noqa: E402
from fenrec_dist.negatives.torch_kmeans import inertia, kmeans  # noqa: E402


def _git_head() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfg = load_config(args.config, [f"data.path={args.data}"])
    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    torch.manual_seed(cfg.train.seed)
    model = build_encoder(cfg.model, data.num_items, data.max_len).to(dev).eval()
    order = np.argsort(data.train.input_len, kind="stable")
    reprs = torch.empty(len(order), cfg.model.hidden, device=dev)
    with torch.no_grad():
        for i in range(0, len(order), 2048):
            idx = order[i:i + 2048]
            reprs[torch.from_numpy(idx).to(dev)] = model(torch.from_numpy(data.train.inputs[idx].astype(np.int64)).to(dev))
    x = reprs.float().cpu()
    out = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "git": _git_head(), "device": args.device, "threads": args.threads, "n": int(x.shape[0]), "d": int(x.shape[1]), "k": args.k,
           "niter": args.niter, "seed": args.seed, "torch": torch.__version__}
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = kmeans(reprs, args.k, args.niter, seed=args.seed, max_points_per_centroid=1 << 30)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["torch_s"] = round(time.perf_counter() - t0, 3)
    out["torch_inertia"] = inertia(x, res.centroids.cpu())
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
        t0 = time.perf_counter()
        km = faiss.Kmeans(x.shape[1], args.k, niter=args.niter, seed=args.seed, verbose=False,
                          max_points_per_centroid=1 << 30, min_points_per_centroid=1)
        km.train(x.numpy())
        out["faiss_s"] = round(time.perf_counter() - t0, 3)
        out["faiss_inertia"] = inertia(x, torch.from_numpy(km.centroids))
        out["inertia_ratio_torch_over_faiss"] = out["torch_inertia"] / out["faiss_inertia"]
        out["centroid_max_abs_diff"] = float(np.abs(res.centroids.cpu().numpy() - km.centroids).max())
        _, a = nearest(x, res.centroids.cpu())
        _, b = nearest(x, torch.from_numpy(km.centroids))
        out["same_assignment_share"] = float((a == b).float().mean())
    line = json.dumps(out)
    print(line)
    if args.out:  # with the provenance every bench result carries (bench/_result.py)
        sys.path.insert(0, str(ROOT / "bench"))
        from _result import write_result

        write_result(args.out, out, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
