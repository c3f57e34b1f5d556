"""The learning-rate schedule (train/schedule.py) and its config keys: exact values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fenrec_dist.config import ConfigError, TrainConfig, apply_resume_overrides, load_config
from fenrec_dist.train.schedule import lr_factor

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw) -> TrainConfig:
    return load_config(None, [f"train.{k}={v}" for k, v in kw.items()]).train


def test_defaults_are_exactly_the_constant_lr():
    cfg = TrainConfig()
    assert (cfg.lr_warmup_epochs, cfg.lr_schedule, cfg.lr_min_ratio) == (0, "constant", 0.0)
    assert {lr_factor(e, s, 7, cfg) for e in (0, 1, 399, 500) for s in range(7)} == {1.0}


def test_linear_warmup_then_constant():
    cfg = _cfg(lr_warmup_epochs=2, epochs=10)
    # 2 epochs x 4 steps: (step + 1) / 8, the full rate at the last warm-up step
    got = [lr_factor(e, s, 4, cfg) for e in (0, 1) for s in range(4)]
    assert got == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    assert [lr_factor(e, s, 4, cfg) for e in (2, 9) for s in (0, 3)] == [1.0] * 4


def test_cosine_after_warmup_exact_values():
    cfg = _cfg(lr_warmup_epochs=1, epochs=5, lr_schedule="cosine", lr_min_ratio=0.1)
    # 2 steps per epoch: warm-up steps 0-1, cosine over steps 2..9 (8 steps), floor 0.1
    assert [lr_factor(0, s, 2, cfg) for s in range(2)] == [0.5, 1.0]
    assert lr_factor(1, 0, 2, cfg) == 1.0                                          # cos(0)
    assert lr_factor(3, 0, 2, cfg) == pytest.approx(0.55, abs=1e-15)               # halfway: cos(pi/2)
    assert lr_factor(2, 0, 2, cfg) == 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 8))
    assert lr_factor(4, 1, 2, cfg) == 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8))
    assert lr_factor(5, 0, 2, cfg) == 0.1 and lr_factor(50, 1, 2, cfg) == 0.1      # past train.epochs: the floor
    seq = [lr_factor(e, s, 2, cfg) for e in range(1, 5) for s in range(2)]
    assert all(a > b for a, b in zip(seq, seq[1:]))                                # strictly decreasing


def test_cosine_without_warmup_starts_at_one_and_reaches_zero_floor():
    cfg = _cfg(epochs=2, lr_schedule="cosine")
    assert lr_factor(0, 0, 1, cfg) == 1.0
    assert lr_factor(1, 0, 1, cfg) == pytest.approx(0.5, abs=1e-15)
    assert lr_factor(2, 0, 1, cfg) == 0.0


def test_fast_preset_schedule():
    cfg = load_config(ROOT / "configs" / "beauty-fast.yaml").train
    assert (cfg.lr, cfg.lr_warmup_epochs, cfg.lr_schedule, cfg.lr_min_ratio, cfg.epochs) == \
        (0.005, 1, "cosine", 0.02, 40)
    assert lr_factor(0, 0, 514, cfg) == 1 / 514
    assert lr_factor(0, 513, 514, cfg) == 1.0
    assert lr_factor(20, 257, 514, cfg) == pytest.approx(0.51, abs=1e-12)        # halfway through epochs 1..39


@pytest.mark.parametrize("args", [(0, 0, 0), (0, 4, 4), (0, -1, 4), (-1, 0, 4)])
def test_bad_positions_are_rejected(args):
    with pytest.raises(ValueError):
        lr_factor(*args, TrainConfig())


def test_schedule_keys_are_checked():
    with pytest.raises(ConfigError, match=r"^train.lr_schedule: 'linear' is not one of"):
        load_config(None, ["train.lr_schedule=linear"])
    with pytest.raises(ConfigError, match=r"^train.lr_min_ratio: must be in \[0, 1\], got 1.5"):
        load_config(None, ["train.lr_min_ratio=1.5"])
    with pytest.raises(ConfigError, match=r"^train.lr_warmup_epochs: must be >= 0, got -1"):
        load_config(None, ["train.lr_warmup_epochs=-1"])
    with pytest.raises(ConfigError, match=r"^train.lr_warmup_epochs: must be < train.epochs \(3\), got 3"):
        load_config(None, ["train.lr_warmup_epochs=3", "train.epochs=3"])


def test_resume_may_not_move_the_cosine_horizon():
    cfg = load_config(ROOT / "configs" / "beauty-fast.yaml")
    with pytest.raises(ConfigError, match=r"^--resume: train.epochs is the horizon"):
        apply_resume_overrides(cfg, ["train.epochs=60"])
    ref = load_config(ROOT / "configs" / "beauty.yaml")  # constant LR: more epochs are fine
    assert apply_resume_overrides(ref, ["train.epochs=500"]) == [("train.epochs", 400, 500)]


@pytest.mark.parametrize("name", ["beauty", "sports", "toys", "yelp"])
def test_fast_presets_keep_the_reference_model_and_losses(name):
    """configs/<name>-fast.yaml differs from configs/<name>.yaml in training settings only
    (and the hard-negative warm-up); the reference presets stay as they are."""
    import dataclasses

    ref, fast = load_config(ROOT / "configs" / f"{name}.yaml"), load_config(ROOT / "configs" / f"{name}-fast.yaml")
    for section in ("data", "model", "loss", "intents", "eval"):
        assert getattr(ref, section) == getattr(fast, section), section
    assert dataclasses.replace(fast.negatives, warmup_epochs=ref.negatives.warmup_epochs) == ref.negatives
    assert (ref.train.lr, ref.train.epochs, ref.train.lr_schedule, ref.train.lr_warmup_epochs) == \
        (1e-3, 400, "constant", 0)
    assert (fast.train.lr, fast.train.epochs, fast.train.patience, fast.train.batch_size, fast.negatives.warmup_epochs,
            fast.train.lr_warmup_epochs, fast.train.lr_schedule, fast.train.lr_min_ratio) == \
        (0.005, 40, 10, 256, 15, 1, "cosine", 0.02)
