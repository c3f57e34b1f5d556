"""`fenrec tune`: space files are checked before any trial starts; a quick.yaml sweep on
tiny synthetic data (Ray Tune over Ray Train trials, ASHA) writes the sorted trials
table, best.yaml (the best trial's full config) and params.png; an interrupted sweep
resumes."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from fenrec_dist.cli import main
from fenrec_dist.config import ConfigError, Config, load_config, to_dict
from fenrec_dist.tune.results import (TRAIN_SNAPSHOT, prune_unregistered_checkpoints, row_from_history, sort_rows,
                                      to_csv, to_markdown, write_results)
from fenrec_dist.tune.space import base_config, load_space, parse_space, trial_config, validate_space
from fenrec_dist.tune.sweep import derive_concurrency

SPACES = ROOT / "tune_spaces"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- the space files


@pytest.mark.parametrize("name", ["quick", "soft_label", "negatives", "contrast", "fast"])
def test_shipped_spaces_parse_and_validate(name):
    space = load_space(SPACES / f"{name}.yaml")
    config = ROOT / "configs" / {"quick": "demo.yaml", "fast": "beauty-fast.yaml"}.get(name, "beauty.yaml")
    base = base_config(config, [], space)
    validate_space(space, base)  # every candidate value passes the config's own checks
    assert space.metric == "NDCG@20" and space.mode == "max"
    assert space.scheduler.type == "asha"
    assert 2 <= space.num_trials() <= 4 if name == "quick" else space.num_trials() >= 8
    text = (SPACES / f"{name}.yaml").read_text()
    assert text.startswith("#"), "each space file starts with comments explaining it"


def test_issue_parameters_are_in_the_spaces():
    params = {n: set(load_space(SPACES / f"{n}.yaml").params) for n in ("soft_label", "negatives", "contrast")}
    assert params["soft_label"] == {"loss.gamma", "data.horizon"}
    assert {"negatives.hard_weight", "negatives.lam_min", "negatives.lam_max", "negatives.noise_ratio",
            "negatives.index_weight"} <= params["negatives"]
    assert params["contrast"] == {"loss.lambda_coarse", "loss.beta_fine", "negatives.tau", "negatives.margin"}


def test_fast_space_runs_asha_to_the_fast_presets_epochs():
    """The fast sweep: gamma and the negative weights, judged first 5 epochs after the hard
    negatives start, up to the preset's 40 epochs (max_t left to train.epochs)."""
    space = load_space(SPACES / "fast.yaml")
    base = base_config(ROOT / "configs" / "beauty-fast.yaml", [], space)
    assert {"loss.gamma", "negatives.hard_weight", "negatives.noise_ratio"} <= set(space.params)
    assert space.scheduler.max_t is None and base.train.epochs == 40
    assert base.negatives.warmup_epochs < space.scheduler.grace_period < base.train.epochs


def test_unknown_parameter_is_rejected_naming_file_and_parameter(tmp_path):
    p = _write(tmp_path, "params:\n  loss.gama: {type: uniform, low: 0.1, high: 0.5}\n")
    with pytest.raises(ConfigError) as e:
        load_space(p)
    msg = str(e.value)
    assert str(p) in msg and "'loss.gama'" in msg and "did you mean 'loss.gamma'" in msg


def test_unknown_fixed_key_and_top_level_key_are_rejected(tmp_path):
    p = _write(tmp_path, "fixed: {train.epocs: 3}\nparams:\n  loss.gamma: {type: uniform, low: 0.1, high: 0.5}\n")
    with pytest.raises(ConfigError, match="train.epocs"):
        load_space(p)
    p = _write(tmp_path, "schedular: asha\nparams:\n  loss.gamma: {type: uniform, low: 0.1, high: 0.5}\n")
    with pytest.raises(ConfigError, match="schedular"):
        load_space(p)


@pytest.mark.parametrize("space, message", [
    ("params:\n  negatives.hard_weigth: {type: choice, values: [0.1, 0.2]}\n", "negatives.hard_weigth"),
    ("params:\n  train.batch_size: {type: randint, low: 0, high: 256}\n", "train.batch_size: must be >= 1, got 0"),
], ids=["unknown-parameter", "zero-batch-size"])
def test_cli_bad_space_exits_2_with_one_line_before_any_trial(tmp_path, capsys, space, message):
    import ray

    p = _write(tmp_path, space)
    rc = main(["tune", "--space", str(p), "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("fenrec: config error:"), err
    assert str(p) in err and message in err
    assert not (tmp_path / "sweep").exists()
    assert not ray.is_initialized()


def test_cli_unprepared_data_exits_2_before_any_trial(tmp_path, capsys):
    import ray

    rc = main(["tune", "--space", str(SPACES / "quick.yaml"), "--set", f"data.path={tmp_path / 'nodata'}",
               "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert rc == 2 and "nodata" in err and "manifest" in err
    assert not (tmp_path / "sweep").exists() and not ray.is_initialized()
    assert main(["tune", "--resume", str(tmp_path / "nosweep")]) == 2
    assert "holds no sweep" in capsys.readouterr().err
    assert main(["tune", "--resume", str(tmp_path), "--trials", "3"]) == 2
    assert "drop --config/--space/--set/--trials" in capsys.readouterr().err


def test_values_the_config_rejects_are_caught_before_the_sweep(tmp_path):
    base = Config()
    # loss.gamma must lie in (0, 1]: the range's low end is checked
    space = parse_space({"params": {"loss.gamma": {"type": "uniform", "low": 0.0, "high": 0.5}}}, tmp_path / "s.yaml")
    with pytest.raises(ConfigError) as e:
        validate_space(space, base)
    assert "s.yaml" in str(e.value) and "'loss.gamma'" in str(e.value)
    # type check: an int key cannot take a float range
    space = parse_space({"params": {"train.batch_size": {"type": "uniform", "low": 64, "high": 512}}}, "s.yaml")
    with pytest.raises(ConfigError, match="train.batch_size.*expected int"):
        validate_space(space, base)
    # cross-field check: overlapping lam ranges can give lam_min > lam_max
    space = parse_space({"params": {"negatives.lam_min": {"type": "uniform", "low": 0.2, "high": 0.35},
                                    "negatives.lam_max": {"type": "uniform", "low": 0.3, "high": 0.8}}}, "s.yaml")
    with pytest.raises(ConfigError, match="lam_min=0.35, negatives.lam_max=0.3 are rejected together"):
        validate_space(space, base)
    # ... while ranges that cannot cross pass, even where one end alone would not fit the defaults (0.4)
    validate_space(parse_space({"params": {"negatives.lam_min": {"type": "uniform", "low": 0.1, "high": 0.2},
                                           "negatives.lam_max": {"type": "uniform", "low": 0.2, "high": 0.3}}},
                               "s.yaml"), base)
    # a metric the evaluation does not report
    space = parse_space({"metric": "NDCG@50", "params": {"loss.gamma": {"type": "choice", "values": [0.2]}}}, "s.yaml")
    with pytest.raises(ConfigError, match="NDCG@50"):
        validate_space(space, base)


def test_horizon_above_the_prepared_one_is_rejected(tiny_data):
    space = parse_space({"params": {"data.horizon": {"type": "choice", "values": [1, 2, 3]}}}, "soft.yaml")
    base = load_config(None, [f"data.path={tiny_data}"])
    with pytest.raises(ConfigError, match="prepared horizon 2"):
        validate_space(space, base)
    validate_space(parse_space({"params": {"data.horizon": {"type": "choice", "values": [0, 1, 2]}}}, "s.yaml"), base)


def test_malformed_distributions_are_rejected(tmp_path):
    bad = [
        ({"type": "normal", "low": 0, "high": 1}, "type must be one of"),
        ({"type": "uniform", "low": 0.5, "high": 0.1}, "low < high"),
        ({"type": "loguniform", "low": 0.0, "high": 0.1}, "low > 0"),
        ({"type": "choice", "values": []}, "non-empty list"),
        ({"type": "uniform", "low": 0.1}, "needs 'high'"),
        ({"type": "uniform", "low": 0.1, "high": 0.5, "step": 2}, "unknown field"),
    ]
    for spec, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            parse_space({"params": {"loss.gamma": spec}}, "s.yaml")


@pytest.mark.parametrize("top, message", [
    ({"seed": -1}, r"seed must be in \[0, 2\*\*32 - 1\], got -1"),
    ({"seed": 2**32}, r"seed must be in \[0, 2\*\*32 - 1\], got 4294967296"),
    ({"num_samples": 0}, "num_samples must be >= 1, got 0"),
    ({"scheduler": {"type": "asha", "grace_period": 0}}, "scheduler.grace_period must be >= 1 epoch, got 0"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "scheduler.reduction_factor must be > 1, got 1"),
    ({"scheduler": {"type": "asha", "reduction_factor": float("nan")}}, "scheduler.reduction_factor: expected a finite number"),
    ({"scheduler": {"type": "asha", "grace_period": 3, "max_t": 2}}, r"scheduler.max_t \(2\) must be >= grace_period \(3\)"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type must be asha or fifo"),
])
def test_seed_samples_and_scheduler_settings_are_range_checked(top, message):
    """Settings outside the search space itself: a negative seed used to pass the checks and
    fail inside Ray's BasicVariantGenerator (NumPy: "expected non-negative integer")."""
    with pytest.raises(ConfigError, match=rf"^s.yaml: {message}"):
        parse_space({"params": {"loss.gamma": {"type": "uniform", "low": 0.1, "high": 0.3}}, **top}, "s.yaml")


def test_largest_space_seed_is_accepted_by_the_search_algorithms():
    from fenrec_dist.tune.sweep import _search_alg

    space = parse_space({"seed": 2**32 - 1, "params": {"loss.gamma": {"type": "uniform", "low": 0.1, "high": 0.3}}})
    _search_alg(space, space.seed, 1)


def test_optuna_is_used_only_when_installed():
    import importlib.util

    raw = {"search": "optuna", "params": {"loss.gamma": {"type": "uniform", "low": 0.1, "high": 0.5}}}
    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ConfigError, match="optuna.*not installed"):
            parse_space(raw, "s.yaml")
    else:
        assert parse_space(raw, "s.yaml").search == "optuna"


def test_grid_versus_random_search():
    from ray.tune.search.variant_generator import generate_variants

    params = {"loss.gamma": {"type": "uniform", "low": 0.1, "high": 0.4, "grid_points": 4},
              "negatives.hard_weight": {"type": "choice", "values": [0.05, 0.2]}}
    grid = parse_space({"search": "grid", "params": params}, "g.yaml")
    assert grid.params["loss.gamma"].grid_values() == [0.1, 0.2, 0.3, 0.4]
    assert grid.num_trials() == 8
    variants = [cfg["params"] for _, cfg in generate_variants({"params": grid.param_space()})]
    assert len(variants) == 8
    assert {(v["loss.gamma"], v["negatives.hard_weight"]) for v in variants} == {
        (g, w) for g in (0.1, 0.2, 0.3, 0.4) for w in (0.05, 0.2)}
    assert parse_space({"search": "grid", "num_samples": 2, "params": params}, "g.yaml").num_trials() == 16

    rnd = parse_space({"search": "random", "num_samples": 5, "params": params}, "r.yaml")
    assert rnd.num_trials() == 5
    rng = np.random.default_rng(0)
    for _ in range(20):
        [(_, cfg)] = list(generate_variants({"params": rnd.param_space()}, random_state=rng))
        assert 0.1 <= cfg["params"]["loss.gamma"] <= 0.4 and cfg["params"]["negatives.hard_weight"] in (0.05, 0.2)
    # a grid-typed parameter is crossed with the random samples
    mixed = parse_space({"num_samples": 2, "params": {"loss.gamma": {"type": "grid", "values": [0.1, 0.2, 0.3]}}},
                        "m.yaml")
    assert mixed.num_trials() == 6
    assert mixed.with_num_samples(4).num_trials() == 12
    with pytest.raises(ConfigError, match="grid_points"):
        parse_space({"search": "grid", "params": {"loss.gamma": {"type": "uniform", "low": 0.1, "high": 0.4}}}, "g")


def test_precedence_and_conflicting_set(tmp_path):
    space = load_space(SPACES / "quick.yaml")
    base = base_config(ROOT / "configs" / "demo.yaml", ["train.epochs=1"], space)
    assert base.model.hidden == 16          # fixed beats the config file (32)
    assert base.train.epochs == 1           # --set beats fixed (2)
    assert base.distributed.num_workers == 1  # resources: -> distributed.*
    with pytest.raises(ConfigError, match="--set loss.gamma conflicts"):
        base_config(None, ["loss.gamma=0.3"], space)


def test_trial_config_takes_numpy_samples():
    cfg = trial_config(Config(), {"loss.gamma": np.float64(0.3), "train.batch_size": np.int64(64)})
    assert cfg.loss.gamma == 0.3 and cfg.train.batch_size == 64 and type(cfg.train.batch_size) is int


def test_concurrency_from_resources():
    assert derive_concurrency({"CPU": 1.0}, {"CPU": 2.0}, num_trials=8) == 2
    assert derive_concurrency({"CPU": 2.0}, {"CPU": 2.0}, num_trials=8) == 1
    assert derive_concurrency({"CPU": 3.0}, {"CPU": 2.0}, num_trials=8) == 1  # at least one
    assert derive_concurrency({"CPU": 0.5}, {"CPU": 16.0}, num_trials=3) == 3  # never more than trials
    assert derive_concurrency({"CPU": 1.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 2.0}, num_trials=8) == 2
    assert derive_concurrency({"CPU": 1.0}, {"CPU": 2.0}, num_trials=8, requested=5) == 5
    with pytest.raises(ConfigError):
        derive_concurrency({"CPU": 1.0}, {"CPU": 2.0}, num_trials=8, requested=0)


# --------------------------------------------------------------------------- results, without Ray


def _history(values, final_test=None):
    recs = [{"epoch": i, "epochs_done": i + 1, "valid/NDCG@20": v} for i, v in enumerate(values)]
    if final_test is not None:
        recs.append({"final": True, "valid/NDCG@20": max(values), "test/NDCG@20": final_test, "epochs_done": math.nan})
    return recs


def test_rows_table_best_yaml_and_plot(tmp_path):
    space = load_space(SPACES / "quick.yaml")
    base = to_dict(base_config(None, [], space))
    rows = [
        row_from_history("t0", {"loss.gamma": 0.4, "negatives.hard_weight": 0.1}, _history([0.10]), "NDCG@20"),
        row_from_history("t1", {"loss.gamma": 0.1, "negatives.hard_weight": np.float64(0.05)},
                         _history([0.12, 0.15], 0.14), "NDCG@20"),
        row_from_history("t2", {"loss.gamma": 0.2, "negatives.hard_weight": 0.2}, _history([0.11, 0.13], 0.12),
                         "NDCG@20"),
        row_from_history("t3", {"loss.gamma": 0.3, "negatives.hard_weight": 0.2}, [], "NDCG@20", error=True),
    ]
    assert [r.status for r in rows] == ["stopped", "completed", "completed", "error"]
    assert rows[1].best == 0.15 and rows[1].epochs == 2 and rows[1].test == 0.14
    out = write_results(tmp_path, rows, space, base)
    assert [r.trial_id for r in out["rows"]] == ["t1", "t2", "t0", "t3"]
    with open(tmp_path / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["trial_id", "loss.gamma", "negatives.hard_weight", "best_valid_NDCG@20",
                              "test_NDCG@20", "epochs", "status"]
    assert [r["trial_id"] for r in table] == ["t1", "t2", "t0", "t3"]
    md = (tmp_path / "trials.md").read_text().splitlines()
    assert md[0].startswith("| trial_id |") and [l.split("|")[1].strip() for l in md[2:]] == ["t1", "t2", "t0", "t3"]
    best = load_config(tmp_path / "best.yaml")
    assert best == trial_config(base, {"loss.gamma": 0.1, "negatives.hard_weight": 0.05})
    assert (tmp_path / "params.png").read_bytes()[:8] == PNG_MAGIC
    assert sort_rows(rows, "min")[0].trial_id == "t0"
    assert "t1" in to_markdown(rows, space) and "t1" in to_csv(rows, space)


def test_prune_keeps_exactly_the_checkpoints_ray_train_registered(tmp_path):
    """A trial Tune stopped with reports still queued: its uploaded but unregistered dirs go."""
    import json

    names = [f"checkpoint_2026-11-27_10-00-0{i}.000000" for i in range(4)]
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "client_state.pt").write_bytes(b"x")
    (tmp_path / "checkpoint_tmp_not_a_dir").write_text("file, not a checkpoint dir")
    snap = {"checkpoint_results": [{"checkpoint_dir_name": names[1], "metrics": {}}],
            "pending_training_results": [], "latest_checkpoint_result": {"checkpoint_dir_name": names[1], "metrics": {}}}
    (tmp_path / TRAIN_SNAPSHOT).write_text(json.dumps(snap))
    assert prune_unregistered_checkpoints(tmp_path, keep=1) == [names[0], names[2], names[3]]
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == [
        names[1], TRAIN_SNAPSHOT, "checkpoint_tmp_not_a_dir"]  # files are left alone
    assert prune_unregistered_checkpoints(tmp_path, keep=1) == []  # idempotent


def test_prune_without_a_snapshot_keeps_the_newest(tmp_path):
    names = [f"checkpoint_2026-11-27_10-00-0{i}.000000" for i in range(3)]
    for n in names:
        (tmp_path / n).mkdir()
    assert prune_unregistered_checkpoints(tmp_path, keep=2) == [names[0]]
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == names[1:]


# --------------------------------------------------------------------------- a real sweep


@pytest.fixture
def fresh_ray():
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


def _check_sweep(sweep: Path, n: int) -> list[dict]:
    with open(sweep / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == n
    scores = [float(r["best_valid_NDCG@20"]) for r in table]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    md_ids = [l.split("|")[1].strip() for l in (sweep / "trials.md").read_text().splitlines()[2:]]
    assert md_ids == [r["trial_id"] for r in table]
    for r in table:
        assert r["status"] in ("completed", "stopped")
        trial = sweep / "trials" / r["trial_id"]
        assert (trial / "config.yaml").exists()
        kept = [p.name for p in trial.glob("checkpoint_*") if p.is_dir()]
        assert len(kept) <= 1  # quick.yaml keeps 1 per trial, even for trials ASHA stopped mid-report
        if kept:  # and it is the one Ray Train registered (so a resume of that run finds it)
            assert kept[0] in (trial / TRAIN_SNAPSHOT).read_text()
    best = table[0]
    best_cfg = load_config(sweep / "best.yaml")  # what `fenrec train --config best.yaml` loads
    assert best_cfg == load_config(sweep / "trials" / best["trial_id"] / "config.yaml")
    assert best_cfg.loss.gamma == pytest.approx(float(best["loss.gamma"]), abs=0)
    assert best_cfg.negatives.hard_weight == float(best["negatives.hard_weight"])
    assert best_cfg.train.epochs == 2 and best_cfg.model.hidden == 16
    assert (sweep / "params.png").read_bytes()[:8] == PNG_MAGIC
    return table


@pytest.mark.ray
def test_quick_sweep_writes_sorted_table_best_yaml_and_plot(tiny_data, tmp_path, fresh_ray, capsys):
    """2 trials at once (1 worker each) on the tiny data: about 60-100 s on 2 cores."""
    sweep = tmp_path / "sweep"
    t0 = time.perf_counter()
    rc = main(["tune", "--space", str(SPACES / "quick.yaml"), "--set", f"data.path={tiny_data}", "--trials", "2",
               "--out", str(sweep)])
    took = time.perf_counter() - t0
    assert rc == 0
    table = _check_sweep(sweep, 2)
    out = capsys.readouterr().out
    assert "| trial_id | loss.gamma |" in out  # the table is printed at the end
    assert all(r["trial_id"] in out for r in table)
    print(f"quick sweep: {took:.0f}s")


@pytest.mark.slow
@pytest.mark.ray
def test_interrupted_sweep_resumes(tiny_data, tmp_path):
    """SIGINT a 3-trial sweep once its first trial reports, then `fenrec tune --resume` finishes it."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    fenrec = str(Path(sys.executable).parent / "fenrec")
    cmd = [fenrec, "tune", "--space", str(SPACES / "quick.yaml"), "--set", f"data.path={tiny_data}",
           "--set", "train.epochs=3", "--max-concurrent", "1", "--out", str(sweep)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((sweep / "trials").glob("*/metrics.jsonl")):
            time.sleep(1)
        assert list((sweep / "trials").glob("*/metrics.jsonl")), "no trial reported an epoch"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (sweep / "trials.csv").exists()  # interrupted before the end
    done = subprocess.run([fenrec, "tune", "--resume", str(sweep)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming" in done.stdout
    with open(sweep / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and all(r["status"] in ("completed", "stopped") for r in table)
    assert (sweep / "best.yaml").exists() and (sweep / "params.png").exists()
    # at least one trial's Train run picked up from its checkpoint
    assert "[fenrec] resumed after epoch" in done.stdout + done.stderr


def test_prune_with_an_unreadable_snapshot_deletes_nothing(tmp_path):
    names = [f"checkpoint_2026-11-27_10-00-0{i}.000000" for i in range(3)]
    for n in names:
        (tmp_path / n).mkdir()
    (tmp_path / TRAIN_SNAPSHOT).write_text('{"checkpoint_results": [')  # cut short
    assert prune_unregistered_checkpoints(tmp_path, keep=1) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == names


# --------------------------------------------------------------------------- ranges of searched values


@pytest.mark.parametrize(
    "spec,search,bad,message",
    [
        # the randint low end 0 of a batch size once started a trial that hung
        ({"type": "randint", "low": 0, "high": 256}, "random", "0", "train.batch_size: must be >= 1, got 0"),
        ({"type": "randint", "low": 64, "high": 256}, "random", None, None),
        ({"type": "choice", "values": [128, 0, 256]}, "random", "0", "train.batch_size: must be >= 1, got 0"),
        ({"type": "grid", "values": [128, -1]}, "random", "-1", "train.batch_size: must be >= 1, got -1"),
        ({"type": "randint", "low": -4, "high": 4, "grid_points": 3}, "grid", "-4", "train.batch_size: must be >= 1"),
    ],
)
def test_range_ends_and_listed_values_are_range_checked(tmp_path, spec, search, bad, message):
    space = parse_space({"search": search, "params": {"train.batch_size": spec}}, tmp_path / "s.yaml")
    if bad is None:
        validate_space(space, Config())
        return
    with pytest.raises(ConfigError) as e:
        validate_space(space, Config())
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 's.yaml'}: parameter 'train.batch_size' value {bad} is rejected"), msg
    assert message in msg


@pytest.mark.parametrize(
    "name,spec,needle",
    [
        ("model.dropout", {"type": "uniform", "low": 0.1, "high": 1.0}, "'model.dropout' value 1.0 .*must be in \\[0, 1\\)"),
        ("model.attn_dropout", {"type": "choice", "values": [0.1, 1.5]}, "'model.attn_dropout' value 1.5"),
        ("train.lr", {"type": "uniform", "low": -0.01, "high": 0.01}, "'train.lr' value -0.01 .*train.lr: must be > 0"),
        ("train.epochs", {"type": "randint", "low": 0, "high": 3}, "'train.epochs' value 0 .*must be >= 1"),
        ("model.heads", {"type": "choice", "values": [1, 0]}, "'model.heads' value 0 .*model.heads: must be >= 1"),
        ("intents.nredo", {"type": "randint", "low": 0, "high": 2}, "'intents.nredo' value 0 .*intents.nredo: must"),
        ("eval.ks", {"type": "choice", "values": [[5, 10, 20], []]}, "'eval.ks' value \\[\\] .*non-empty"),
        ("deepspeed.zero_stage", {"type": "randint", "low": 0, "high": 3}, "'deepspeed.zero_stage' value 3"),
        ("loss.temperature", {"type": "choice", "values": [0.5, float("nan")]}, "'loss.temperature' value nan .*finite"),
    ],
)
def test_each_searched_key_is_checked_against_its_range(name, spec, needle):
    space = parse_space({"params": {name: spec}}, "s.yaml")
    with pytest.raises(ConfigError, match=needle):
        validate_space(space, Config())


def test_interior_values_of_an_int_range_meet_cross_field_checks():
    """hidden % heads: the ends 32 and 40 pass, 33 does not."""
    space = parse_space({"params": {"model.hidden": {"type": "randint", "low": 32, "high": 40}}}, "s.yaml")
    with pytest.raises(ConfigError, match="parameter 'model.hidden' value 33 .*divisible by model.heads"):
        validate_space(space, Config())
    validate_space(parse_space({"params": {"model.hidden": {"type": "choice", "values": [32, 40]}}}, "s.yaml"),
                   Config())


def test_bad_end_is_found_among_more_combinations_than_are_checked_jointly():
    """2^10 combinations > MAX_COMBOS: the single-key pass still checks every end."""
    params = {f"negatives.{k}": {"type": "choice", "values": [0.1, 0.2]}
              for k in ("hard_weight", "noise_ratio", "noise_step_size", "index_weight", "margin")}
    params.update({f"loss.{k}": {"type": "choice", "values": [0.1, 0.2]} for k in ("lambda_coarse", "beta_fine")})
    params["loss.gamma"] = {"type": "choice", "values": [0.1, 0.2]}
    params["model.init_std"] = {"type": "choice", "values": [0.01, 0.02]}
    params["negatives.tau"] = {"type": "uniform", "low": 0.0, "high": 8.0}  # tau must be > 0
    space = parse_space({"params": params}, "big.yaml")
    with pytest.raises(ConfigError, match=r"big.yaml: parameter 'negatives.tau' value 0.0 .*negatives.tau: must be > 0"):
        validate_space(space, Config())


def test_non_finite_range_ends_and_duplicate_keys_in_space_files(tmp_path):
    for low, high in ((float("nan"), 0.5), (0.1, float("inf"))):
        with pytest.raises(ConfigError, match="expected a finite number"):
            parse_space({"params": {"loss.gamma": {"type": "uniform", "low": low, "high": high}}}, "s.yaml")
    p = _write(tmp_path, "params:\n  loss.gamma: {type: uniform, low: 0.1, high: 0.5}\n"
                         "  loss.gamma: {type: uniform, low: 0.2, high: 0.3}\n")
    with pytest.raises(ConfigError, match=rf"{p}: line 3: duplicate key 'loss.gamma'"):
        load_space(p)
    with pytest.raises(ConfigError, match="is a directory"):
        load_space(tmp_path)

