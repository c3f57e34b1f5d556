"""Cluster deployment files (cluster/): they parse, validate, and their entrypoints dry-run.

No Ray is started here: every entrypoint is run as ``python ray_job.py ... --dry-run``
against the session's tiny dataset, with ``--set data.path=...`` appended.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
RAYJOB = CLUSTER / "rayjob.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
README = CLUSTER / "README.md"
REHEARSE = CLUSTER / "rehearse_local.sh"
PYTHON = ROOT / ".venv" / "bin" / "python"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_schema() -> dict:
    """ray/autoscaler/ray-schema.json from the installed ray, located without importing ray."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"ray's cluster schema not found at {path}"
    return json.loads(path.read_text())


def schema_errors(cfg: dict) -> list[str]:
    schema = ray_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(cfg)]


# ---------------------------------------------------------------------------------------
# Entrypoint extraction


def readme_blocks() -> list[str]:
    """Shell lines of the README's fenced code blocks, backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", README.read_text(), flags=re.S):
        lines += [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    return lines


def ray_job_args(command: str) -> list[str]:
    """The arguments after ``ray_job.py`` in a command line (``--dry-run`` dropped)."""
    argv = shlex.split(command, comments=True)
    i = next(i for i, a in enumerate(argv) if a.endswith("ray_job.py"))
    assert argv[i - 1] == "python", f"entrypoint must be `python ray_job.py`: {command}"
    return [a for a in argv[i + 1:] if a != "--dry-run"]


def readme_submit_lines() -> list[str]:
    return [ln for ln in readme_blocks() if ln.startswith("ray job submit")]


def is_tune_submit(line: str) -> bool:
    return shlex.split(line.split(" -- ", 1)[1])[:4] == ["python", "-m", "fenrec_dist.cli", "tune"]


def rehearse_submit(data: Path, store: Path) -> str:
    """The script's `ray job submit` command, its shell variables substituted."""
    text = REHEARSE.read_text().replace("\\\n", " ")
    line = next(ln.strip() for ln in text.splitlines() if re.search(r"\bray job submit --", ln)
                and not ln.lstrip().startswith(("#", "echo")))
    line = line[line.index("ray job submit"):].split("||")[0]
    for var, value in {"DATA": data, "STORE": store, "ADDRESS": "http://127.0.0.1:8265", "SID": "sid"}.items():
        line = line.replace(f'"${var}"', shlex.quote(str(value))).replace(f"${var}", shlex.quote(str(value)))
    assert "$" not in line, f"unresolved shell variable in: {line}"
    return line


def entrypoints(data: Path, store: Path) -> dict[str, list[str]]:
    out = {"rayjob": ray_job_args(load(RAYJOB)["spec"]["entrypoint"])}
    for i, line in enumerate(ln for ln in readme_submit_lines() if not is_tune_submit(ln)):
        out[f"readme-submit-{i}"] = ray_job_args(line.split(" -- ", 1)[1])
    for i, line in enumerate(ln for ln in readme_blocks() if ln.startswith("python ray_job.py")):
        out[f"readme-dryrun-{i}"] = ray_job_args(line)
    out["rehearse"] = ray_job_args(rehearse_submit(data, store).split(" -- ", 1)[1])
    return out


def dry_runs(all_args: dict[str, list[str]], data: Path) -> dict[str, tuple[dict, dict]]:
    """``python ray_job.py ARGS --set data.path=DATA --dry-run`` for each entry, two at a time."""
    python = str(PYTHON if PYTHON.exists() else sys.executable)
    cmds = {k: [python, "ray_job.py", *a, "--set", f"data.path={data}", "--dry-run"] for k, a in all_args.items()}
    out: dict[str, tuple[dict, dict]] = {}
    names = list(cmds)
    for i in range(0, len(names), 2):
        procs = {k: subprocess.Popen(cmds[k], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k in names[i:i + 2]}
        for k, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{k}: {shlex.join(cmds[k])}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            head, sep, plan = stdout.partition("# plan\n")
            assert sep and "# resolved config" in head, stdout
            out[k] = (yaml.safe_load(head.split("# resolved config", 1)[1]), json.loads(plan))
    return out


def overrides(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")


# ---------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("path", [LAUNCHER, RAYJOB, RUNTIME_ENV], ids=lambda p: p.name)
def test_yaml_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(load(path), dict)


def test_launcher_validates_against_rays_schema() -> None:
    cfg = load(LAUNCHER)
    assert schema_errors(cfg) == []
    # The validator is live: a misspelt key or a fractional resource is rejected.
    assert schema_errors({**cfg, "setup_comands": []})
    bad = json.loads(json.dumps(cfg))
    bad["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5
    assert schema_errors(bad)


def test_launcher_contents() -> None:
    cfg = load(LAUNCHER)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert "GPU" not in head["resources"] and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu_groups = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) > 0}
    assert gpu_groups, "no GPU worker group"
    for name, group in gpu_groups.items():
        assert 0 <= group["min_workers"] <= group["max_workers"] <= cfg["max_workers"], name
        assert group["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5")), name
    assert any('pip install' in c and '-e ".[gpu]"' in c for c in cfg["setup_commands"])
    assert not any("faiss-cpu" in c or ".[cpu]" in c for c in cfg["setup_commands"])
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])
    assert "." in cfg["file_mounts"].values()
    assert {".venv", "data", "runs", ".git"} <= set(cfg["rsync_exclude"])
    # Ray in the image matches the pinned one.
    pinned = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f":{pinned}-" in cfg["docker"]["image"]


def test_rayjob_has_kuberay_required_fields() -> None:
    job = load(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    assert "ray_job.py" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values must be strings"
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers and all(c.get("name") and c.get("image") for c in head_containers)
    groups = cluster["workerGroupSpecs"]
    assert groups
    total_gpus = 0
    for g in groups:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in g, f"worker group lacks {key}"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        containers = g["template"]["spec"]["containers"]
        assert containers and all(c.get("name") and c.get("image") for c in containers)
        gpus = int(containers[0]["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= 1
        total_gpus += gpus * g["replicas"]
    # Storage shared by head and workers (PVC) or a cloud URI.
    sets = overrides(ray_job_args(spec["entrypoint"]))
    storage = sets["distributed.storage_path"]
    if "://" not in storage:
        mounts = [m["mountPath"] for c in head_containers + [c for g in groups for c in g["template"]["spec"]["containers"]]
                  for m in c.get("volumeMounts", [])]
        assert all(any(storage.startswith(mp) for mp in mounts if mp != "/dev/shm") for _ in [0])
        assert sum(1 for mp in mounts if storage.startswith(mp)) == 1 + sum(len(g["template"]["spec"]["containers"]) for g in groups)
    # The job asks for no more GPU workers than the cluster has GPUs.
    assert sets["distributed.use_gpu"] == "true"
    assert int(sets["distributed.num_workers"]) <= total_gpus


def test_rayjob_runtime_env_matches_runtime_env_file() -> None:
    inline = yaml.safe_load(load(RAYJOB)["spec"]["runtimeEnvYAML"])
    assert inline["env_vars"] == load(RUNTIME_ENV)["env_vars"]
    assert inline["working_dir"]


def test_runtime_env_file() -> None:
    env = load(RUNTIME_ENV)
    assert env["working_dir"] == "."
    assert {".venv", "runs", "data", ".git"} <= set(env["excludes"])
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "env_vars values must be strings"
    # The local head's python already has everything: nothing to install from the network.
    assert not {"pip", "uv", "conda", "container", "image_uri", "py_modules"} & set(env)
    # Ray accepts it as a runtime env.
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)


@pytest.mark.parametrize("source", ["runtime_env.yaml", "rayjob.yaml"])
def test_job_runtime_env_merges_with_the_drivers(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ray.init() inside the job adds the driver's env_vars; Ray must be able to merge them.

    Without RAY_OVERRIDE_JOB_RUNTIME_ENV=1 a shared key (even with an equal value) makes
    ray.init raise "Failed to merge the Job's runtime env" (seen in the local rehearsal).
    """
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from fenrec_dist.distributed.driver import worker_env

    job = load(RUNTIME_ENV) if source == "runtime_env.yaml" else yaml.safe_load(load(RAYJOB)["spec"]["runtimeEnvYAML"])
    for k in ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "OMP_NUM_THREADS"):
        monkeypatch.setenv(k, "x")  # the worst case: every forwarded variable set on the head
    driver = {"env_vars": worker_env()}
    override = job["env_vars"].get("RAY_OVERRIDE_JOB_RUNTIME_ENV") == "1"
    merged = _merge_runtime_env(job, driver, override=override)
    assert merged is not None, "job runtime env conflicts with ray_job.py's ray.init(runtime_env=...)"
    assert merged["working_dir"] == job["working_dir"]
    assert merged["env_vars"]["DS_ACCELERATOR"] == "x"


def test_readme_references_existing_files() -> None:
    text = README.read_text()
    refs = set(re.findall(r"\b(?:cluster|configs)/[\w.\-]+", text))
    assert {"cluster/aws-gpu.yaml", "cluster/rayjob.yaml", "cluster/runtime_env.yaml",
            "cluster/rehearse_local.sh"} <= refs
    missing = sorted(r for r in refs if not (ROOT / r).exists())
    assert not missing, f"README references missing files: {missing}"
    lines = readme_blocks()
    assert "ray up cluster/aws-gpu.yaml" in [ln.split("#")[0].strip() for ln in lines]
    assert any(ln.startswith("ray dashboard cluster/aws-gpu.yaml") for ln in lines)
    assert "kubectl apply -f cluster/rayjob.yaml" in lines
    assert "bash cluster/rehearse_local.sh" in lines
    submits = readme_submit_lines()
    assert submits
    for line in submits:
        argv = shlex.split(line.split(" -- ", 1)[0])
        assert argv[argv.index("--runtime-env") + 1] == "cluster/runtime_env.yaml"
        assert argv[argv.index("--working-dir") + 1] == "."
        assert argv[argv.index("--address") + 1] == "http://127.0.0.1:8265"
    assert "not yet available" not in text
    assert any(is_tune_submit(ln) for ln in submits), "README shows no sweep job"


def test_rehearse_script() -> None:
    assert subprocess.run(["bash", "-n", str(REHEARSE)], capture_output=True).returncode == 0
    text = REHEARSE.read_text()
    assert "trap stop_head EXIT" in text
    assert "RAY_AUTH_MODE=disabled" in text and "--node-ip-address=127.0.0.1" in text
    submit = rehearse_submit(Path("/d"), Path("/s"))
    argv = shlex.split(submit.split(" -- ", 1)[0])
    assert argv[argv.index("--runtime-env") + 1] == "cluster/runtime_env.yaml"
    # Unix socket paths under --temp-dir must stay < 108 characters.
    tmp = re.search(r'RAY_TMP="\$\(mktemp -d (\S+)\)"', text).group(1)
    assert len(tmp) < 30


def test_readme_sweep_job_resolves_on_tiny_data(tiny_data: Path, tmp_path: Path) -> None:
    """The README's sweep job: its `fenrec tune` arguments parse, and its space, config and
    overrides resolve and validate (``plan_sweep``, everything a sweep checks before Ray
    starts) with ``data.path`` pointed at the tiny dataset."""
    from fenrec_dist.cli import build_parser
    from fenrec_dist.tune.sweep import plan_sweep

    lines = [ln for ln in readme_submit_lines() if is_tune_submit(ln)]
    assert lines
    for line in lines:
        args = build_parser().parse_args(shlex.split(line.split(" -- ", 1)[1])[3:])
        assert args.space and (ROOT / args.space).is_file() and args.out
        sets = [o for o in args.overrides if not o.startswith("data.path=")] + [f"data.path={tiny_data}"]
        assert len(sets) == len(args.overrides), "the sweep job must set data.path"
        sweep_dir, space, base, resuming = plan_sweep(str(ROOT / args.config), str(ROOT / args.space), sets,
                                                      str(tmp_path / "sweep"), args.trials, None)
        assert not resuming and space.params and base.data.path == str(tiny_data)
        for o in sets:
            key, value = o.split("=", 1)
            section, name = key.split(".")
            assert str(getattr(getattr(base, section), name)).lower() == value.lower(), o
    assert "--tune" in REHEARSE.read_text() and "fenrec_dist.cli tune" in REHEARSE.read_text()


def test_entrypoints_dry_run_on_tiny_data(tiny_data: Path, tmp_path: Path) -> None:
    eps = entrypoints(tiny_data, tmp_path / "runs")
    assert {"rayjob", "rehearse"} <= set(eps) and any(k.startswith("readme-submit") for k in eps)
    results = dry_runs(eps, tiny_data)
    for name, args in eps.items():
        cfg, plan = results[name]
        sets = overrides(args)
        assert plan["data"]["path"] == str(tiny_data), name
        assert plan["data"]["shards"] and all(Path(s).is_file() for s in plan["data"]["shards"]), name
        assert cfg["data"]["path"] == str(tiny_data), name
        if "distributed.num_workers" in sets:
            assert plan["scaling"]["workers"] == int(sets["distributed.num_workers"]), name
            assert plan["scaling"]["global_batch"] == plan["scaling"]["workers"] * cfg["train"]["batch_size"], name
        if "distributed.use_gpu" in sets:
            assert plan["scaling"]["use_gpu"] is (sets["distributed.use_gpu"] == "true"), name
        if "distributed.storage_path" in sets:
            assert plan["storage_path"] == sets["distributed.storage_path"], name
        if "distributed.name" in sets:
            assert plan["run_name"] == sets["distributed.name"], name
