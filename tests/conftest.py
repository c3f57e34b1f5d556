"""Shared fixtures: a tiny synthetic dataset prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Two OpenMP runtimes (torch, faiss) busy-waiting on an oversubscribed 2-core machine slow
# tiny runs down 30x; passive waiting costs nothing measurable at these sizes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared synthetic dataset: 400 users, 80 items, max_len 10 (a few thousand samples)."""
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.data.synth import SynthConfig, write_synth

    d = tmp_path_factory.mktemp("tiny")
    write_synth(SynthConfig(users=400, items=80, intents=4, mean_length=10, seed=1), d / "log.csv", fmt="csv")
    prepare(d / "log.csv", d / "data", max_len=10, horizon=2, num_shards=4)
    return d / "data"


def tiny_overrides(data: Path, **extra: object) -> list[str]:
    """Config overrides for a fast run on ``tiny_data``."""
    base = {
        "data.path": str(data), "data.max_len": 10, "model.hidden": 16, "model.dropout": 0.1,
        "model.attn_dropout": 0.1, "intents.k": 8, "intents.niter": 5, "negatives.warmup_epochs": 1,
        "negatives.noise_ratio": 1, "train.epochs": 3, "train.batch_size": 128, "train.progress": False,
        "train.patience": 10, "train.threads": 1, "distributed.num_workers": 2, "distributed.cpus_per_worker": 0.5,
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def local_ray():
    """No Ray before or after the test (each Ray Train run starts its own embedded Ray)."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()
