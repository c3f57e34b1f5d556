"""Cluster faults on one machine (issue 30, parts 1-3): a Ray cluster of three nodes
(``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes of one CPU each, so
the two training workers of one CPU each must run on different nodes), a node lost in the
middle of an epoch, too few nodes left, and a driver lost and its job submitted again.

The runs use torch DDP (``deepspeed.enabled=false``: a worker start without DeepSpeed's set-up
is seconds, not a minute, on 2 cores); a killed DeepSpeed worker's restart is
tests/test_ray_train.py's. The fault hook ``FENREC_FAULT_AT`` with ``FENREC_FAULT_HOLD_S``
holds a rank in the middle of epoch 1 (marker file written, naming its pid) while the test
removes that rank's node or kills the driver.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, tiny_overrides
from fenrec_dist.config import dump_yaml, load_config
from fenrec_dist.train.report import read_metrics

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # about 4 min together: `make test-all`

KW = dict(distributed__cpus_per_worker=1, deepspeed__enabled=False, distributed__max_failures=1)
NODE = dict(num_cpus=1, object_store_memory=80_000_000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    # the dashboard (Ray's state API: where each worker ran) on a free port: others may hold 8265
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80_000_000,
                                                      "dashboard_port": _free_port(),
                                                      "dashboard_agent_listen_port": None})
    for _ in range(2):
        c.add_node(**NODE)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _run(cluster, data: Path, run_dir: Path, **kw: Any) -> dict[str, Any]:
    import ray

    from fenrec_dist.distributed.driver import run_distributed

    ray.shutdown()  # joined again, so the workers' env (the fault hook's variables) is this test's
    cfg = load_config(None, tiny_overrides(data, **{**KW, **kw}))
    return run_distributed(cfg, run_dir, address=cluster.address, log=lambda *_: None)


def _node_of(cluster, pid: int) -> Any:
    """The cluster node whose raylet started the worker process ``pid`` (alive)."""
    import psutil

    parent = psutil.Process(pid).ppid()
    for node in [cluster.head_node, *cluster.worker_nodes]:
        if any(p.process.pid == parent for p in node.all_processes.get("raylet", [])):
            return node
    raise AssertionError(f"worker pid {pid}: no node's raylet started it")


def _worker_nodes(pids: list[float]) -> list[str]:
    """The node id of each Ray Train worker pid (Ray's state API keeps ended actors)."""
    from ray.util.state import list_actors

    where = {a.pid: a.node_id for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=1000)}
    return [where[int(p)] for p in pids]


def _wait_for(path: Path, alive: Any, timeout: float = 300.0) -> str:
    """``path``'s text once it exists, while ``alive()`` (the run) holds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert alive(), f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return path.read_text()


def _same_metrics(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["epochs_run"] == want["epochs_run"] == 3
    assert got["best_epoch"] == want["best_epoch"]
    for split in ("valid", "test"):
        for k, v in want[split].items():
            assert got[split][k] == pytest.approx(v, abs=1e-6), (split, k)


@pytest.fixture(scope="module")
def clean(cluster, tiny_data, tmp_path_factory) -> dict[str, Any]:
    """An uninterrupted run on the cluster: its final.json and its workers' node ids."""
    out = tmp_path_factory.mktemp("clean") / "run"
    final = _run(cluster, tiny_data, out)
    first = read_metrics(out)[0]
    return {"final": final, "nodes": _worker_nodes(first["startup"]["pid"])}


def test_two_workers_run_on_two_nodes(cluster, clean):
    head = cluster.head_node.node_id
    nodes = clean["nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2 and head not in nodes
    assert set(nodes) <= {n.node_id for n in cluster.worker_nodes}
    assert clean["final"]["epochs_run"] == 3


def test_node_lost_mid_epoch_resumes_on_a_node_added_back(cluster, clean, tiny_data, tmp_path, monkeypatch):
    """Rank 1's node is removed (no graceful shutdown) in the middle of epoch 1, a node is added
    back: the worker group restarts on the nodes there, from epoch 0's checkpoint, and ends
    with the uninterrupted run's metrics."""
    marker = tmp_path / "held.txt"
    monkeypatch.setenv("FENREC_FAULT_AT", f"1:3:1:{marker}")
    monkeypatch.setenv("FENREC_FAULT_HOLD_S", "120")  # the rank waits there while its node goes
    done: dict[str, Any] = {}

    def train() -> None:  # in a thread: the cluster's nodes are started from the main thread
        try:
            done["final"] = _run(cluster, tiny_data, tmp_path / "run")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            done["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    text = _wait_for(marker, thread.is_alive)
    # epoch 0's checkpoint registered by the controller (its metrics line): else the restart
    # rightly begins at epoch 0, which is not the fault this test injects
    deadline = time.monotonic() + 60
    while not (tmp_path / "run" / "metrics.jsonl").exists() or not read_metrics(tmp_path / "run"):
        assert time.monotonic() < deadline, "epoch 0 was never recorded"
        time.sleep(0.2)
    node = _node_of(cluster, int(text.rsplit("pid", 1)[1]))
    cluster.remove_node(node, allow_graceful=False)  # the node of rank 1, held in the middle of epoch 1
    added = cluster.add_node(**NODE)  # a node back (an autoscaler's, a replaced spot node)
    thread.join(timeout=400)
    assert not thread.is_alive(), "the run did not end"
    assert "error" not in done, done.get("error")
    final = done["final"]
    assert "rank 1 at epoch 1" in marker.read_text()
    recs = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in recs] == [0, 1, 2]  # the restart began at epoch 1 (startup in its record)
    assert "startup" in recs[1]
    again = _worker_nodes(recs[1]["startup"]["pid"])
    assert len(set(again)) == 2 and node.node_id not in again and added.node_id in again
    _same_metrics(final, clean["final"])


def test_too_few_nodes_is_one_clear_line_not_a_hang(cluster, tiny_data, tmp_path):
    """Three workers of one CPU on two one-CPU nodes: the start waits distributed.resource_wait_s,
    then fails with one line naming what the workers need and what the nodes have."""
    from fenrec_dist.distributed.driver import NoRoomError

    t0 = time.monotonic()
    with pytest.raises(NoRoomError) as err:
        _run(cluster, tiny_data, tmp_path / "run", distributed__num_workers=3, distributed__resource_wait_s=5)
    msg = str(err.value)
    assert time.monotonic() - t0 < 90
    assert "\n" not in msg and "3 worker(s) of CPU 1 each" in msg and "CPU 2" in msg, msg
    assert "distributed.resource_wait_s" in msg


def _driver(cfg_path: Path, storage: Path, env: dict[str, str], **kw: Any) -> Any:
    cmd = [sys.executable, "ray_job.py", "--config", str(cfg_path), "--set", "distributed.name=job",
           "--set", f"distributed.storage_path={storage}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_driver_lost_mid_run_resubmitted_resumes_from_storage(cluster, clean, tiny_data, tmp_path):
    """The job's driver is SIGKILLed in the middle of epoch 1; the same command again (while the
    first runs: refused; after: resumed from storage with no flag, said on its first line)."""
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(dump_yaml(load_config(None, tiny_overrides(tiny_data, **KW))))
    storage, marker = tmp_path / "storage", tmp_path / "held.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENREC_FAULT")}
    env.update(RAY_ADDRESS=cluster.address, PYTHONUNBUFFERED="1")
    first = _driver(cfg_path, storage, {**env, "FENREC_FAULT_AT": f"1:3:0:{marker}", "FENREC_FAULT_HOLD_S": "120"})
    try:
        _wait_for(marker, lambda: first.poll() is None)
        deadline = time.monotonic() + 60  # the controller notes epoch 0 (checkpoint and metrics line)
        while not (storage / "job" / "metrics.jsonl").exists() or not read_metrics(storage / "job"):
            assert time.monotonic() < deadline, "epoch 0 was never recorded"
            time.sleep(0.2)
        assert [r["epoch"] for r in read_metrics(storage / "job")] == [0]
        # the same command while the first driver lives: refused, one line naming it
        second = _driver(cfg_path, storage, env)
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 2, out
        assert f"is being trained by another process (pid {first.pid}" in out.strip().splitlines()[-1], out
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (storage / "job" / ".fenrec.lock").exists()  # left by the killed driver: it must not block
    third = _driver(cfg_path, storage, env)
    out, _ = third.communicate(timeout=420)
    lines = out.splitlines()
    assert third.returncode == 0, out[-3000:]
    assert lines[0].startswith("resuming job from checkpoint_"), out[:2000]
    assert f"(1 of 3 epochs done) in {storage}" in lines[0], lines[0]
    final = json.loads(next(line for line in lines if line.startswith("FINAL "))[len("FINAL "):])
    assert [r["epoch"] for r in read_metrics(storage / "job")] == [0, 1, 2]
    _same_metrics(final, clean["final"])


_HOLDER = """
import sys, time, ray
ray.init(address=sys.argv[1])

@ray.remote(num_cpus=0)
class TrainController:  # stands for a live driver's Ray Train controller
    def ping(self):
        return 1

c = TrainController.remote()
ray.get(c.ping.remote())
ctx = ray.get_runtime_context()
open(sys.argv[2], "w").write(f"{ctx.get_job_id()} {ctx.get_node_id()}\\n")
print("ready", flush=True)
time.sleep(600)
"""


def test_a_lost_drivers_actors_are_waited_for_and_a_live_ones_refused(cluster, tmp_path):
    """``.fenrec.ray_job`` names the job that trained the run: while that job's Ray Train actors
    live, a new driver waits, and refuses after its bound; once they are gone it goes on."""
    import ray

    from fenrec_dist.distributed.driver import JOB_FILE, wait_for_lost_driver
    from fenrec_dist.train.runlock import RunInUseError

    ray.shutdown()
    ray.init(address=cluster.address)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, cluster.address, str(run_dir / JOB_FILE)],
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline().strip() == "ready"
        job = (run_dir / JOB_FILE).read_text().split()[0]
        lines: list[str] = []
        with pytest.raises(RunInUseError, match=f"still trained by Ray job {job}"):
            wait_for_lost_driver(run_dir, lines.append, timeout_s=3)
        assert lines and "waiting for 1 Ray Train actor(s) of job" in lines[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    t0 = time.monotonic()
    wait_for_lost_driver(run_dir, lambda *_: None, timeout_s=60)  # Ray ends a lost driver's actors
    assert time.monotonic() - t0 < 30
    assert (run_dir / JOB_FILE).read_text().split()[0] == ray.get_runtime_context().get_job_id()
    ray.shutdown()
