"""`fenrec demo`: synthetic log -> prepared shards -> 2 Ray Train workers -> test metrics
printed beside the popularity and first-order Markov baselines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fenrec_dist.baselines import MarkovBaseline, evaluate_popularity
from fenrec_dist.config import Config, load_config
from fenrec_dist.data.dataset import PreparedData, load_prepared
from fenrec_dist.train.loop import exclude_block

ROOT = Path(__file__).resolve().parents[1]


def baseline_metrics(data: PreparedData, split: str = "test") -> dict[str, dict[str, float]]:
    """Popularity and Markov baselines on the prepared data's evaluation table."""
    ev = data.eval
    counts = np.bincount(ev.history_values.astype(np.int64), minlength=data.num_items + 1)
    counts[0] = 0
    values, offsets = ev.sequences(split)
    exclude = exclude_block(values, offsets, 0, len(ev.user))
    last = values[offsets[1:] - 1].astype(np.int64)
    targets = ev.targets(split).astype(np.int64)
    hist = [ev.history_values[offsets_a:offsets_b] for offsets_a, offsets_b in
            zip(ev.history_offsets[:-1], ev.history_offsets[1:])]
    markov = MarkovBaseline.fit(hist, data.num_items)
    return {
        "popularity": evaluate_popularity(counts, targets, exclude, data.num_items),
        "markov": markov.evaluate(last, targets, exclude),
    }


def format_table(rows: dict[str, dict[str, float]]) -> str:
    keys = ["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"]
    lines = [f"{'model':<12}" + "".join(f"{k:>9}" for k in keys)]
    for name, m in rows.items():
        lines.append(f"{name:<12}" + "".join(f"{m[k]:>9.4f}" for k in keys))
    return "\n".join(lines)


def run_demo(workdir: str | Path = "runs/demo", config: str | Path | None = None, overrides: list[str] | None = None,
             local: bool = False, log=print) -> dict[str, Any]:
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.data.synth import SynthConfig, write_synth

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # The data goes where the config says (configs/demo.yaml: data/demo), so the config runs
    # as it is afterwards: `fenrec train --config configs/demo.yaml`, `ray_job.py --dry-run`.
    cfg: Config = load_config(config or ROOT / "configs" / "demo.yaml", overrides or [])
    data_dir = Path(cfg.data.path)
    log_path = workdir / "synth.csv"
    t0 = time.perf_counter()
    if not (data_dir / "manifest.json").exists():
        s = write_synth(SynthConfig(users=2000, items=400, seed=0), log_path, fmt="csv")
        log(f"synthetic log: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions -> {log_path}")
        m = prepare(log_path, data_dir, max_len=cfg.data.max_len, horizon=cfg.data.horizon, num_shards=4,
                    overwrite=True)
        log(f"prepared {data_dir}: {m['train_samples']:,} training samples in {len(m['shards'])} shards "
            f"({time.perf_counter() - t0:.1f}s)")
    else:
        log(f"using the prepared data at {data_dir}")
    run_dir = workdir / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    if local:
        from fenrec_dist.train.local import train_local as train_single

        final = train_single(cfg, run_dir, log=log)
    else:
        from fenrec_dist.distributed.driver import run_distributed

        final = run_distributed(cfg, run_dir, log=log)
    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    rows = {"FENRec": final["test"], **baseline_metrics(data, "test")}
    log("\ntest metrics (full ranking over all items, history excluded):\n" + format_table(rows))
    log(f"\nrun directory: {run_dir}  (metrics.jsonl, tensorboard/, curves.png, final.json)")
    return rows
