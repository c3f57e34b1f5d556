"""The command-line faces turn bad input into one clear line and exit 2, writing nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from fenrec_dist.cli import main


def test_prepare_bad_input_exits_2_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n2 5 x 7\n")
    rc = main(["prepare", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{bad}:2" in err and "'x'" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.txt"]


def test_train_unknown_key_exits_2_before_writing(tmp_path, capsys):
    rc = main(["train", "--local", "--set", "train.epocs=3", "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "train.epocs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ray_job_config_error_exits_2():
    out = subprocess.run([sys.executable, "ray_job.py", "--config", "configs/demo.yaml", "--set", "model.encoder=lstm",
                          "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "ray_job: config error: model.encoder" in out.stderr


@pytest.mark.slow  # a subprocess training run: the full tier
def test_sigterm_stops_a_local_run_resumably(tiny_data, tmp_path):
    """`kill` (SIGTERM) mid-run: exit 130 with the resume command, finished epochs kept;
    --resume then completes the run."""
    import signal
    import time

    from conftest import tiny_overrides

    run = tmp_path / "run"
    sets = [a for kv in tiny_overrides(tiny_data, train__epochs=40) for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "fenrec_dist.cli", "train", "--local", "--out", str(run), *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"fenrec train --resume {run} --local" in err and "Traceback" not in err
    # the finished epochs: the newest checkpoint and metrics.jsonl agree (an epoch's commit is not interrupted)
    from fenrec_dist.train import layout

    done = layout.checkpoint_epoch(layout.newest(layout.candidates(run)))
    lines = len(metrics.read_text().splitlines())
    assert lines == done and 2 <= done < 40 and not (run / "final.json").exists()
    # --resume refuses to change what the run computes, and leaves the run as it was
    saved = (run / "config.yaml").read_text()
    res = subprocess.run([sys.executable, "-m", "fenrec_dist.cli", "train", "--resume", str(run), "--local",
                          "--set", "train.threads=1", "--set", "loss.gamma=0.3"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "'loss.gamma' is fixed by the run's config.yaml" in res.stderr, res.stderr
    assert (run / "config.yaml").read_text() == saved and len(metrics.read_text().splitlines()) == lines
    # continue it, now for only a few more epochs (the saved config says 40: cut it with the time limit)
    res = subprocess.run([sys.executable, "-m", "fenrec_dist.cli", "train", "--resume", str(run), "--local",
                          "--set", "train.time_limit_min=1e-6"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "resume: train.time_limit_min 0.0 -> 1e-06" in res.stderr
    assert (run / "config.yaml").read_text() == saved.replace("time_limit_min: 0.0", "time_limit_min: 1.0e-06")
    recs = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in recs] == list(range(done + 1))  # one more epoch, none lost or repeated
    assert (run / "final.json").exists()


def test_worker_setup_quiets_the_noisy_library_loggers():
    import logging

    import ray.train.v2._internal.execution.context as ctx

    from fenrec_dist.distributed.worker_setup import quiet_worker_logs

    quiet_worker_logs()
    assert logging.getLogger("faiss.loader").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("ray.data").level == logging.WARNING
    assert logging.getLogger(ctx.__file__) is ctx.logger  # the logger Ray Train reports through
    assert ctx.logger.level == logging.WARNING


def test_embedded_ray_also_quiets_the_autoscaler_request_warning(monkeypatch):
    """An embedded Ray has no autoscaler: its workers' hook also silences Ray Train's "failed to
    send resource request" warning (a traceback in `make demo` on a busy machine); a joined
    cluster keeps it."""
    import logging

    import ray

    import ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client as acc
    from fenrec_dist.config import load_config
    from fenrec_dist.distributed import worker_setup
    from fenrec_dist.distributed.driver import init_ray

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw["runtime_env"]["worker_process_setup_hook"]))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(load_config(None))
    init_ray(load_config(None), address="ray://head:10001")
    assert seen == ["fenrec_dist.distributed.worker_setup.quiet_local_worker_logs",
                    "fenrec_dist.distributed.worker_setup.quiet_worker_logs"]
    worker_setup.quiet_local_worker_logs()
    worker_setup.quiet_local_worker_logs()  # twice: one filter
    assert acc.logger.name in worker_setup.LOCAL_ONLY_QUIET_LOGGERS
    assert logging.getLogger("ray.data").level == logging.WARNING
    # Ray Train's controller runs logging.config.dictConfig after the hook: levels of existing
    # ray.train loggers are reset, filters are kept
    import logging.config

    train_logger = logging.getLogger("ray.train")
    level = train_logger.level
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                               "loggers": {"ray.train": {"level": "INFO"}}})
    train_logger.setLevel(level)  # (the rest of the session keeps its level)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.levelname)

    handler = Keep()
    acc.logger.addHandler(handler)
    try:
        acc.logger.warning("Failed to send resource request")
        acc.logger.error("a real error")
    finally:
        acc.logger.removeHandler(handler)
    assert records == ["ERROR"]


def test_evaluate_rescores_the_best_checkpoint(tiny_data, tmp_path, capsys, monkeypatch):
    """`fenrec evaluate RUN_DIR` scores the best weights again (not the last, not final.json): its
    test metrics are final.json's, and those of an independent full ranking with those weights."""
    import numpy as np
    import torch

    from conftest import tiny_overrides
    from fenrec_dist.config import load_config
    from fenrec_dist.data.dataset import load_prepared
    from fenrec_dist.metrics import finalize, rank_metrics, scores_ranks
    from fenrec_dist.model import build_encoder
    from fenrec_dist.train import trainer as single
    from fenrec_dist.train.checkpoint import load_state
    from fenrec_dist.train.local import train_local

    run = tmp_path / "run"
    script = iter([0.9, 0.1])  # epoch 0 validates best, so the best weights are not the last
    real = single.evaluate
    with monkeypatch.context() as mp:
        mp.setattr(single, "evaluate", lambda m, d, c, split, dev, *ix: (
            real(m, d, c, split, dev, *ix) if split == "test"
            else {**real(m, d, c, split, dev, *ix), "NDCG@20": next(script, 0.0)}))
        final = train_local(load_config(None, tiny_overrides(tiny_data, train__epochs=2)), run, log=lambda *_: None)
    ckpt = run / "checkpoints" / "checkpoint_000002"
    assert final["best_epoch"] == 0 and load_state(ckpt / "state.pt")["epoch"] == 2
    (run / "final.json").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr().out  # a summary line, then final.json's content
    out = json.loads(printed[printed.index("{"):])
    assert out["best_epoch"] == 0 and out["test"] == final["test"]
    assert json.loads((run / "final.json").read_text()) == out  # written again

    cfg = load_config(None, tiny_overrides(tiny_data))
    data = load_prepared(tiny_data, max_len=10, horizon=2)
    model = build_encoder(cfg.model, data.num_items, data.max_len)
    model.load_state_dict(load_state(ckpt / "best.pt")["model"])
    model.eval()
    w = model.item_emb.weight.detach()
    for split in ("valid", "test"):
        with torch.no_grad():
            z = model(torch.from_numpy(data.eval.inputs(split, 10)).long())
        targets = torch.from_numpy(data.eval.targets(split).astype(np.int64))
        values, offsets = data.eval.sequences(split)  # the whole history (+ valid for test)
        width = int(np.diff(offsets).max())
        exclude = torch.zeros(len(targets), width, dtype=torch.long)
        for u in range(len(targets)):
            row = torch.from_numpy(values[offsets[u]:offsets[u + 1]].astype(np.int64))
            exclude[u, :len(row)] = row
        ranks = scores_ranks(z.double() @ w.double().T, targets, exclude)
        assert finalize(rank_metrics(ranks, cfg.eval.ks)) == out[split], split


@pytest.mark.parametrize("argv", [["config"], ["config", "--set", "train.batch_size=0"]])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(argv):
    """`fenrec config | head -1`: the reader goes away; exit 141 (as after SIGPIPE), no traceback
    and no 'Exception ignored' noise; errors still exit 2 with their one line."""
    proc = subprocess.Popen([sys.executable, "-m", "fenrec_dist.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read()
    rc = proc.wait()
    if argv[-1].endswith("=0"):
        assert rc == 2 and "train.batch_size: must be >= 1, got 0" in err, err
    else:
        assert rc == 141 and err == "", err


def test_gpu_requests_this_machine_cannot_meet_exit_2_before_anything_starts(tiny_data, tmp_path, capsys, monkeypatch):
    """train.device=cuda without CUDA, and distributed.use_gpu=true with more workers than the
    machine's GPUs on an embedded Ray (which would wait for them forever): one line, exit 2,
    no run or sweep directory, Ray not started. Joining a cluster is not checked (its
    autoscaler may add GPU nodes)."""
    import ray
    import torch

    from conftest import tiny_overrides
    from fenrec_dist.config import load_config
    from fenrec_dist.distributed.driver import check_embedded_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.shutdown()
    sets = [a for kv in tiny_overrides(tiny_data, train__epochs=1) for a in ("--set", kv)]
    rc = main(["train", "--local", "--out", str(tmp_path / "cuda"), *sets, "--set", "train.device=cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.device: cuda, but torch" in err and "sees no CUDA device" in err, err
    assert not (tmp_path / "cuda").exists()
    rc = main(["train", "--out", str(tmp_path / "gpu"), *sets, "--set", "distributed.use_gpu=true"])
    err = capsys.readouterr().err
    assert rc == 2 and "distributed.use_gpu: true asks for 2 GPU(s)" in err and "this machine has 0" in err, err
    assert not (tmp_path / "gpu").exists() and not ray.is_initialized()
    rc = main(["tune", "--space", str(ROOT / "tune_spaces" / "quick.yaml"), *sets, "--set", "distributed.use_gpu=true",
               "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert rc == 2 and "distributed.use_gpu: true asks for" in err, err
    assert not (tmp_path / "sweep").exists() and not ray.is_initialized()
    cfg = load_config(None, tiny_overrides(tiny_data, distributed__use_gpu=True))
    check_embedded_gpus(cfg, address="ray://head:10001")  # a cluster: not checked
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_embedded_gpus(cfg)  # 2 workers, 2 GPUs


def test_fenrec_train_on_ray_with_a_run_name_uses_its_storage_as_ray_job_does(tiny_data, tmp_path, monkeypatch, capsys):
    """`fenrec train` (Ray) with distributed.name and no --out trains into
    distributed.storage_path/distributed.name, so the same command again resumes there."""
    from conftest import tiny_overrides
    from fenrec_dist.distributed import driver

    seen = []

    def fake(cfg, run_dir, address=None, log=print):
        seen.append((run_dir, driver.resolve_run(cfg, run_dir)[0]))
        return {"test": {"NDCG@20": 0.5}}

    monkeypatch.setattr(driver, "run_distributed", fake)
    sets = [x for o in tiny_overrides(tiny_data, distributed__name="job1",
                                      distributed__storage_path=str(tmp_path / "store")) for x in ("--set", o)]
    assert main(["train", *sets]) == 0
    assert main(["train", *sets]) == 0  # no "already holds a run": the driver resumes
    assert seen == [(None, tmp_path / "store" / "job1")] * 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"NDCG@20": 0.5}
