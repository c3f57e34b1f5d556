"""Checkpoints cut short, object storage and storage that fails (issue 30, parts 4-6).

Faults injected: a checkpoint file truncated or changed in place, one rank's RNG file or
ZeRO shard deleted (resume takes the previous checkpoint and names the skipped one); a run
on ``s3://`` storage (moto's S3 server on the loopback) resumed from the bucket; the run
directory made unwritable mid-run, then given back (one line naming the path, resume works).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from fenrec_dist.config import load_config
from fenrec_dist.train import layout
from fenrec_dist.train.report import read_metrics


def _cfg(data, **kw):
    return load_config(None, tiny_overrides(data, **kw))


def _fake_checkpoint(root: Path, epochs: int, world: int = 2, fmt_manifest: bool = True) -> Path:
    """A checkpoint as the Ray runtime leaves it: each rank writes its files (a ZeRO shard of
    its own under deepspeed/) and manifest into a directory of its own; they are merged."""
    final = root / f"checkpoint_{epochs:06d}"
    for rank in range(world):
        d = root / f".rank{rank}"
        extra = dict(state={"model": {"w": torch.full((4,), float(epochs))}, "early_stopping": {}, "epoch": epochs,
                            "world_size": world, "deepspeed": True},
                     best={"model": {"w": torch.zeros(4)}, "epoch": 0}, record={"epoch": epochs - 1}) if rank == 0 else {}
        layout.write_rank_files(d, rank, {"torch": torch.get_rng_state()}, **extra)
        shard = d / "deepspeed" / "state" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        shard.parent.mkdir(parents=True)
        torch.save({"shard": torch.arange(8.0) + rank}, shard)
        if fmt_manifest:
            layout.write_manifest(d, rank)
        shutil.copytree(d, final, dirs_exist_ok=True)
        shutil.rmtree(d)
    return final


FAULTS = {
    "truncated best.pt": lambda d: (d / "best.pt").write_bytes((d / "best.pt").read_bytes()[:50]),
    "one byte of state.pt changed": lambda d: _flip_byte(d / "state.pt"),
    "rank 1's rng file deleted": lambda d: (d / "rng_rank1.pt").unlink(),
    "rank 1's ZeRO shard deleted": lambda d: (d / "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(),
    "rank 1's ZeRO shard changed": lambda d: _flip_byte(d / "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"),
    "rank 1's manifest missing": lambda d: (d / "manifest_rank1.json").unlink(),
}


def _flip_byte(p: Path, at: int = -20) -> None:
    b = bytearray(p.read_bytes())
    b[at] ^= 0xFF
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_scan_skips_a_checkpoint_cut_short_and_names_it(tmp_path, fault):
    older, newer = _fake_checkpoint(tmp_path, 2), _fake_checkpoint(tmp_path, 3)
    manifest = json.loads((newer / "manifest_rank1.json").read_text())["files"]
    assert "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt" in manifest and "rng_rank1.pt" in manifest
    assert layout.scan(layout.candidates(tmp_path)) == (newer, [])
    FAULTS[fault](newer)
    chosen, skipped = layout.scan(layout.candidates(tmp_path))
    assert chosen == older
    assert len(skipped) == 1 and str(newer) in skipped[0], skipped


def test_checkpoints_written_before_manifests_still_resume(tmp_path):
    older, newer = _fake_checkpoint(tmp_path, 2, fmt_manifest=False), _fake_checkpoint(tmp_path, 3, fmt_manifest=False)
    for d in (older, newer):  # as format 2 wrote them
        st = torch.load(d / "state.pt", weights_only=True)
        torch.save({**st, "format": 2}, d / "state.pt")
    assert layout.scan(layout.candidates(tmp_path)) == (newer, [])
    (newer / "rng_rank1.pt").unlink()
    assert layout.scan(layout.candidates(tmp_path))[0] == older
    # a format-3 checkpoint without its manifests is incomplete
    (older / "rng_rank1.pt").unlink()
    third = _fake_checkpoint(tmp_path, 4, fmt_manifest=False)
    chosen, skipped = layout.scan(layout.candidates(tmp_path))
    assert chosen is None and any(f"{third / 'manifest_rank0.json'}: missing" in s for s in skipped), skipped


def test_local_resume_skips_a_corrupt_newest_checkpoint_and_matches_uninterrupted(tiny_data, tmp_path):
    from fenrec_dist.train.local import train_local

    run = tmp_path / "run"
    full = train_local(_cfg(tiny_data, distributed__keep_checkpoints=3), run, log=lambda *_: None)
    recs = read_metrics(run)
    newest = run / "checkpoints" / "checkpoint_000003"
    assert (newest / "manifest_rank0.json").is_file()
    _flip_byte(newest / "state.pt")  # still a loadable torch file: only the checksum tells
    lines: list[str] = []
    resumed = train_local(_cfg(tiny_data, distributed__keep_checkpoints=3), run, resume=True, log=lines.append)
    assert any(line.startswith("resume: skipped") and str(newest / "state.pt") in line for line in lines), lines
    assert any("resumed after epoch 1" in line for line in lines), lines
    again = read_metrics(run)
    assert [r["epoch"] for r in again] == [0, 1, 2]
    assert again[2]["loss"] == recs[2]["loss"] and again[2]["valid"] == recs[2]["valid"]
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]


def _ray_run(data, run_dir, **kw):
    from fenrec_dist.distributed.driver import run_distributed

    return run_distributed(_cfg(data, **kw), run_dir, log=lambda *_: None)


def _by_epoch(run: Path) -> list[Path]:
    return sorted(layout.candidates(run), key=layout.checkpoint_epoch)


@pytest.mark.ray
@pytest.mark.slow  # 2 Ray runs, about 100 s: `make test-all`
def test_every_ranks_zero_shard_is_checkpointed_and_a_run_missing_one_resumes_from_the_previous(
        tiny_data, tmp_path, local_ray, capfd):
    """ZeRO stage 2 on 2 DeepSpeed workers: each checkpoint holds both ranks' optimizer shards,
    each listed (size, sha256) in its rank's manifest. Rank 1's shard deleted from the newest
    checkpoint: the re-run skips it, names it, resumes from the one before (DeepSpeed loads
    both shards) and ends with the uninterrupted run's metrics."""
    import ray

    kw = dict(deepspeed__enabled=True, deepspeed__zero_stage=2, distributed__keep_checkpoints=3)
    run = tmp_path / "zero"
    clean = _ray_run(tiny_data, run, **kw)
    recs = read_metrics(run)
    ckpts = _by_epoch(run)
    assert [layout.checkpoint_epoch(d) for d in ckpts] == [1, 2, 3]
    for d in ckpts:
        for rank in (0, 1):
            shard = f"deepspeed/state/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            assert (d / shard).is_file(), (d, shard)
            assert shard in json.loads((d / layout.manifest_name(rank)).read_text())["files"]
    shard1 = ckpts[-1] / "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard1.unlink()
    ray.shutdown()
    capfd.readouterr()
    again = _ray_run(tiny_data, run, **kw)
    out = "".join(capfd.readouterr())
    assert f"resume: skipped {shard1}: missing" in out, out[-3000:]
    assert "resumed after epoch 1" in out, out[-3000:]
    redone = read_metrics(run)
    assert [r["epoch"] for r in redone] == [0, 1, 2]
    for k, v in recs[2]["valid"].items():
        assert redone[2]["valid"][k] == pytest.approx(v, abs=1e-6), k
    for k, v in clean["test"].items():
        assert again["test"][k] == pytest.approx(v, abs=1e-6), k
    assert again["best_epoch"] == clean["best_epoch"]


UNWRITABLE_SCRIPT = """
import os, sys
from fenrec_dist.cliutil import run_reporting_errors
from fenrec_dist.config import load_config
from fenrec_dist.train.local import train_local

run, overrides = sys.argv[1], sys.argv[2:]

def log(line):
    print(line, flush=True)
    if line.startswith("epoch   0"):  # mid-run: the checkpoints directory stops taking writes
        os.chmod(os.path.join(run, "checkpoints"), 0o555)

sys.exit(run_reporting_errors("fenrec train", lambda: train_local(load_config(None, overrides), run, log=log) and 0))
"""


def test_a_run_directory_that_stops_taking_writes_stops_the_run_with_one_line_and_resumes(tiny_data, tmp_path):
    """The checkpoints directory made read-only after epoch 0's commit, in a process that obeys
    permissions (root's CAP_DAC_OVERRIDE dropped with setpriv): the run exits 2 with one line
    naming the path, epoch 0's checkpoint is intact; writable again, resume ends as an
    uninterrupted run does."""
    import os
    import subprocess
    import sys

    from fenrec_dist.train.local import train_local

    prefix: list[str] = []
    if os.geteuid() == 0:  # root writes through permissions: run the trainer without that capability
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions would not stop the writes")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
    run = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(UNWRITABLE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run(prefix + [sys.executable, str(script), str(run), *tiny_overrides(tiny_data)],
                         capture_output=True, text=True, timeout=300, env=env)
    ckpts = run / "checkpoints"
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(ckpts) in err and "cannot write epoch 1's checkpoint" in err and "checkpoint_000001 is intact" in err, err
    os.chmod(ckpts, 0o755)
    assert [d.name for d in layout.candidates(run)] == ["checkpoint_000001"]
    assert layout.scan(layout.candidates(run)) == (ckpts / "checkpoint_000001", [])
    assert [r["epoch"] for r in read_metrics(run)] == [0]
    resumed = train_local(_cfg(tiny_data), run, resume=True, log=lambda *_: None)
    clean = train_local(_cfg(tiny_data), tmp_path / "clean", log=lambda *_: None)
    assert resumed["test"] == clean["test"] and resumed["best_epoch"] == clean["best_epoch"]
    assert [r["valid"] for r in read_metrics(run)] == [r["valid"] for r in read_metrics(tmp_path / "clean")]


SECRET = "fenrec-secret-Zq81xT"  # the fake S3 secret key: it must appear in no output


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on the loopback with a bucket ``fenrec``; AWS_* point at it."""
    boto3 = pytest.importorskip("boto3")
    server = pytest.importorskip("moto.server")
    srv = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "fenrec-test-key",
                 "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="fenrec")
    servers = [srv]
    yield client, servers  # servers[-1]: the one running (a test may stop it and start another)
    servers[-1].stop()


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="fenrec", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_join_uri_keeps_a_query_at_the_end():
    from fenrec_dist.distributed.storage import join_uri

    assert join_uri("s3://b/p?endpoint_override=127.0.0.1:9&scheme=http", "run") == \
        "s3://b/p/run?endpoint_override=127.0.0.1:9&scheme=http"
    assert join_uri("s3://b/p/", "run") == "s3://b/p/run"
    assert join_uri("/data/runs/", "run") == "/data/runs/run"


def test_a_controller_failure_with_storage_down_is_the_storages_one_line(tmp_path, monkeypatch):
    """Ray Train's controller writes its own snapshot to the run's storage; when that fails the
    run's error is Ray's, not a worker's: the driver probes the storage and names it."""
    from fenrec_dist.distributed.storage import storage_down
    from fenrec_dist.train.checkpoint import StorageError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    controller = RuntimeError("Training failed due to controller error:\nWhen initiating multiple part upload ...")
    down = storage_down(controller, "s3://fenrec/runs?endpoint_override=127.0.0.1:9&scheme=http", "down")
    assert isinstance(down, StorageError)
    msg = str(down)
    assert "\n" not in msg and msg.startswith("s3://fenrec/runs/down?endpoint_override=127.0.0.1:9") and \
        "storage not reachable" in msg and "run the same command again" in msg, msg
    # a worker's own StorageError is that line, as it is
    mine = StorageError("s3://x/y: cannot write epoch 3's checkpoint")
    wrapped = RuntimeError("worker failed")
    wrapped.__cause__ = mine
    assert storage_down(wrapped, "s3://x", "y") is mine
    # storage that answers: the error is not storage's
    (tmp_path / "run").mkdir()
    assert storage_down(controller, str(tmp_path), "run") is None
    assert storage_down(None, str(tmp_path), "run") is None


def test_a_storage_path_with_credentials_is_refused_without_echoing_them(tiny_data, tmp_path, monkeypatch):
    from fenrec_dist.config import ConfigError
    from fenrec_dist.distributed.driver import prepare_run, worker_env

    monkeypatch.chdir(tmp_path)
    for bad in (f"s3://AKIAFAKE:{SECRET}@fenrec/runs", f"s3://fenrec/runs?access_key=AKIAFAKE&secret_key={SECRET}"):
        with pytest.raises(ConfigError) as exc:
            prepare_run(_cfg(tiny_data, distributed__storage_path=bad, distributed__name="x"))
        msg = str(exc.value)
        assert SECRET not in msg and "AKIAFAKE" not in msg and "\n" not in msg and "s3://fenrec/runs" in msg, msg
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    env = worker_env()  # Ray's runtime_env_agent.log prints these: the endpoint, never the key
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and SECRET not in env.values()


@pytest.mark.ray
@pytest.mark.slow  # 2 Ray runs, 90-220 s on 2 busy cores: `make test-all`
def test_a_run_on_s3_keeps_everything_in_the_bucket_and_resumes_from_it(tiny_data, tmp_path, local_ray, s3, capfd,
                                                                         monkeypatch):
    """2 DeepSpeed workers (ZeRO stage 1) with index-mined negatives on s3://fenrec/runs: the
    checkpoints (both ranks' shards and manifests), metrics.jsonl, final.json and the negative
    index files are objects in the bucket; a new driver with an empty local directory resumes
    from the bucket with more epochs. The secret key appears in no output."""
    import ray

    client, _ = s3
    monkeypatch.chdir(tmp_path)  # the driver's local run directory: ./runs/s3run
    kw = dict(distributed__storage_path="s3://fenrec/runs", distributed__name="s3run", deepspeed__zero_stage=1,
              negatives__sources="[in_batch,hard,noise,index]", negatives__index_k=4, negatives__index_candidates=16)
    first = _ray_run(tiny_data, None, train__epochs=2, **kw)
    assert first["epochs_run"] == 2
    keys = _keys(client, "runs/s3run/")
    names = {k.removeprefix("runs/s3run/") for k in keys}
    assert {"metrics.jsonl", "final.json", "config.yaml", "negatives/summary.jsonl",
            "negatives/epoch_0001/samples.parquet", "negatives/epoch_0001/index.faiss"} <= names, sorted(names)
    ckpts = sorted({n.split("/")[0] for n in names if n.startswith("checkpoint_") and "/" in n})
    assert len(ckpts) == 2
    for c in ckpts:
        for f in ("state.pt", "best.pt", "rng_rank0.pt", "rng_rank1.pt", "manifest_rank0.json", "manifest_rank1.json",
                  "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                  "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"):
            assert f"{c}/{f}" in names, (c, f)
    stored = client.get_object(Bucket="fenrec", Key="runs/s3run/metrics.jsonl")["Body"].read().decode()
    assert [json.loads(line)["epoch"] for line in stored.splitlines()] == [0, 1]
    shutil.rmtree(tmp_path / "runs")  # a driver on another machine: nothing local, only the bucket
    ray.shutdown()
    again = _ray_run(tiny_data, None, train__epochs=3, **kw)
    out = "".join(capfd.readouterr())
    assert "resumed after epoch 1" in out, out[-3000:]
    assert again["epochs_run"] == 3
    stored = client.get_object(Bucket="fenrec", Key="runs/s3run/metrics.jsonl")["Body"].read().decode()
    assert [json.loads(line)["epoch"] for line in stored.splitlines()] == [0, 1, 2]
    assert json.loads(client.get_object(Bucket="fenrec", Key="runs/s3run/final.json")["Body"].read())["epochs_run"] == 3
    assert SECRET not in out
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"  # Ray's own log files
    leaked = [p for p in logs.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


@pytest.mark.ray
@pytest.mark.slow  # 2 Ray runs, 90-180 s on 2 busy cores: `make test-all`
def test_s3_going_down_mid_run_stops_the_run_with_one_line_and_it_resumes_once_back(tiny_data, tmp_path, local_ray,
                                                                                      s3, monkeypatch):
    """The S3 server stopped once epoch 0's metrics line is in the bucket: the run ends with one
    line naming the storage path; epoch 0's checkpoint in the bucket stays complete; with the
    server back (same port, same objects) the same command resumes after epoch 0 and finishes."""
    import threading
    import time

    import ray
    from moto.server import ThreadedMotoServer

    from fenrec_dist.train.checkpoint import StorageError

    client, servers = s3
    host, port = servers[0].get_host_and_port()
    monkeypatch.chdir(tmp_path)
    kw = dict(distributed__storage_path="s3://fenrec/runs", distributed__name="down", distributed__max_failures=0)
    stopped = threading.Event()

    def stop_after_epoch_0() -> None:
        while not stopped.is_set():
            try:
                body = client.get_object(Bucket="fenrec", Key="runs/down/metrics.jsonl")["Body"].read()
                if body.count(b"\n") >= 1:
                    servers[0].stop()
                    stopped.set()
                    return
            except Exception:  # not there yet
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=stop_after_epoch_0, daemon=True)
    watcher.start()
    try:
        with pytest.raises(StorageError) as exc:
            _ray_run(tiny_data, None, **kw)
    finally:
        stopped.set()
    msg = str(exc.value)
    assert "\n" not in msg and "s3://fenrec/runs/down" in msg, msg
    servers.append(ThreadedMotoServer(ip_address=host, port=port, verbose=False))
    servers[-1].start()
    names = {k.removeprefix("runs/down/") for k in _keys(client, "runs/down/")}
    ckpts = sorted({n.split("/")[0] for n in names if n.startswith("checkpoint_") and "/" in n})
    # epoch 0's is complete; the next one's upload may have begun (some ranks' files) when the
    # server went: resume skips it (test_scan_skips_a_checkpoint_cut_short_and_names_it)
    assert ckpts and {f"{ckpts[0]}/manifest_rank0.json", f"{ckpts[0]}/manifest_rank1.json"} <= names, sorted(names)
    ray.shutdown()
    again = _ray_run(tiny_data, None, **kw)
    assert again["epochs_run"] == 3
    stored = client.get_object(Bucket="fenrec", Key="runs/down/metrics.jsonl")["Body"].read().decode()
    assert [json.loads(line)["epoch"] for line in stored.splitlines()] == [0, 1, 2]
    # the interrupted run on S3 ends where an uninterrupted one on a local path does
    ray.shutdown()
    clean = _ray_run(tiny_data, tmp_path / "clean", distributed__max_failures=0)
    assert again["best_epoch"] == clean["best_epoch"]
    for split in ("valid", "test"):
        for k, v in clean[split].items():
            assert again[split][k] == pytest.approx(v, abs=1e-6), (split, k)
