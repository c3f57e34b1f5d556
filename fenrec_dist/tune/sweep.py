"""The sweep: a Ray Tune ``Tuner`` over Ray Train trials (``fenrec tune``).

A sweep directory holds::

    sweep.json         what was asked (space, resolved base config, trials); resume reads it
    space.yaml         the space file as given;  base_config.yaml: the config every trial starts from
    tune/              Ray Tune's experiment (restorable with Tuner.restore)
    trials/<id>/       one TorchTrainer run per trial: config.yaml, metrics.jsonl, checkpoints, final.json
    trials.csv, trials.md, best.yaml, params.png

Concurrency is derived from the resources (the machine's, or the cluster's when Ray is
joined) and each trial's needs (``distributed.num_workers`` x ``cpus_per_worker``, GPUs),
unless ``max_concurrent`` is given. An embedded Ray is sized for that many trials plus
room for Ray Data's read tasks, and keeps its dashboard (Tune needs it to clean up the
trials ASHA stops). Each trial keeps ``distributed.keep_checkpoints`` checkpoints.
On a cluster the sweep directory must be on storage every node sees (as for
``distributed.storage_path``): trials write their runs there.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from fenrec_dist.config import Config, ConfigError, config_from_dict, dump_yaml, to_dict
from fenrec_dist.data.dataset import read_manifest
from fenrec_dist.train.checkpoint import atomic_write_json, atomic_write_text
from fenrec_dist.tune.space import Space, base_config, load_space, parse_space, validate_space
from fenrec_dist.tune.trainable import TIME_ATTR, run_trial, trial_dirname

SWEEP_FILE = "sweep.json"
TUNE_DIR = "tune"
TRIAL_CPU = 0.01  # the trial's own actor only waits on its TorchTrainer (0 raises in with_resources)
DATA_CPUS_PER_TRIAL = 2  # logical CPUs left per running trial to its Ray Data read tasks (list + read)


class SweepInterrupted(RuntimeError):
    """The sweep stopped before all trials finished (its state is saved; ``--resume`` continues)."""


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial's TorchTrainer asks the cluster for."""
    d = cfg.distributed
    need = {"CPU": d.num_workers * d.cpus_per_worker}
    if d.use_gpu:
        need["GPU"] = float(d.num_workers)
    return need


def machine_resources(cfg: Config) -> dict[str, float]:
    """This machine's CPUs (and GPUs if the trials use them), for an embedded Ray."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    res = {"CPU": float(cpus)}
    if cfg.distributed.use_gpu:
        import torch

        res["GPU"] = float(torch.cuda.device_count())
    return res


def derive_concurrency(need: dict[str, float], available: dict[str, float], num_trials: int,
                       requested: int | None = None) -> int:
    """Trials at once: ``requested``, else how many trials' needs fit in ``available`` (at least 1)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--max-concurrent must be >= 1, got {requested}")
        return min(requested, num_trials)
    fits = [math.floor(available.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return max(1, min([*fits, num_trials]))


def _search_alg(space: Space, seed: int, concurrency: int) -> tuple[Any, int | None]:
    """(search algorithm, TuneConfig.max_concurrent_trials).

    Random and grid search use Tune's BasicVariantGenerator, which enforces its own
    ``max_concurrent`` (Tune ignores ``max_concurrent_trials`` for it); Optuna is a
    Searcher, which Tune limits with ``max_concurrent_trials``.
    """
    if space.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed), concurrency
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency), None


def _scheduler(space: Space, base: Config) -> Any:
    if space.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = space.scheduler
    # stop_last_trials=False: a trial that reaches max_t is not killed before its final
    # evaluation; trials end at their own train.epochs (or early stopping).
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=s.max_t or base.train.epochs, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, stop_last_trials=False)


def _state(space: Space, base: Config) -> dict[str, Any]:
    return {"space_path": space.path, "space": space.raw, "num_samples": space.num_samples, "base": to_dict(base)}


def _load_state(sweep_dir: Path) -> tuple[Space, Config, dict[str, Any]]:
    f = sweep_dir / SWEEP_FILE
    if not f.is_file():
        raise ConfigError(f"{sweep_dir} holds no sweep ({SWEEP_FILE} missing)")
    state = json.loads(f.read_text())
    space = parse_space(state["space"], state["space_path"]).with_num_samples(int(state["num_samples"]))
    return space, config_from_dict(state["base"]), state


def plan_sweep(config_path: str | None, space_path: str | None, overrides: list[str], out: str | None,
               trials: int | None, resume: str | None) -> tuple[Path, Space, Config, bool]:
    """Resolve and check everything before Ray starts: (sweep dir, space, base config, resuming).

    ``resume`` continues the sweep in that directory with its saved space and config. An
    ``out`` directory that already holds the same sweep is resumed too; one holding a
    different sweep is an error.
    """
    if resume:
        if config_path or space_path or overrides or trials is not None:
            raise ConfigError("--resume continues a sweep with its saved space and config; "
                              "drop --config/--space/--set/--trials")
        sweep_dir = Path(resume).resolve()
        space, base, _ = _load_state(sweep_dir)
        return sweep_dir, space, base, True
    if not space_path:
        raise ConfigError("--space is required (a file like tune_spaces/quick.yaml), or --resume SWEEP_DIR")
    space = load_space(space_path).with_num_samples(trials)
    base = base_config(config_path, overrides, space)
    validate_space(space, base)
    read_manifest(base.data.path)  # DataError naming the file when the data is not prepared
    stem = Path(space_path).stem
    sweep_dir = Path(out or Path("runs") / f"tune-{stem}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if (sweep_dir / SWEEP_FILE).exists():
        old = json.loads((sweep_dir / SWEEP_FILE).read_text())
        new = _state(space, base)
        if {k: old.get(k) for k in new if k != "space_path"} != {k: v for k, v in new.items() if k != "space_path"}:
            raise ConfigError(f"{sweep_dir} holds a different sweep (another space, config or --trials); "
                              f"use --resume {sweep_dir} to continue it, or another --out")
        return sweep_dir, space, base, True
    return sweep_dir, space, base, False


def run_sweep(config_path: str | None = None, space_path: str | None = None, overrides: list[str] | None = None,
              out: str | None = None, trials: int | None = None, max_concurrent: int | None = None,
              resume: str | None = None, address: str | None = None, log: Callable[[str], None] = print
              ) -> dict[str, Any]:
    """Run (or resume) a sweep; returns ``results.write_results``'s summary plus the sweep dir."""
    import ray
    from ray import tune

    from fenrec_dist.distributed.driver import check_embedded_gpus, init_ray
    from fenrec_dist.tune.results import (prune_unregistered_checkpoints, row_from_history, to_markdown,
                                          write_results)

    sweep_dir, space, base, resuming = plan_sweep(config_path, space_path, overrides or [], out, trials, resume)
    check_embedded_gpus(base, address)  # before the sweep directory exists
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        atomic_write_json(sweep_dir / SWEEP_FILE, {**_state(space, base), "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        atomic_write_text(sweep_dir / "space.yaml", Path(space.path).read_text())
        atomic_write_text(sweep_dir / "base_config.yaml", dump_yaml(base))

    num_trials = space.num_trials()
    need = trial_resources(base)
    if resuming:  # the restored search keeps the concurrency it started with: size Ray for it
        max_concurrent = json.loads((sweep_dir / SWEEP_FILE).read_text()).get("concurrency", max_concurrent)
    joined = ray.is_initialized() or bool(address or os.environ.get("RAY_ADDRESS"))
    t0 = time.perf_counter()
    if joined:
        init_ray(base, address)
        avail = {k: float(v) for k, v in ray.cluster_resources().items()}
        # each running trial also needs a CPU for its Ray Data read tasks, or reads starve
        concurrency = derive_concurrency({**need, "CPU": need["CPU"] + 1}, avail, num_trials, max_concurrent)
    else:
        concurrency = derive_concurrency(need, machine_resources(base), num_trials, max_concurrent)
        # Logical CPUs: the trials' workers plus room for every running trial's Ray Data
        # reads (3 trials x 1 worker on 4 CPUs starved the reads forever). Oversubscribing
        # the physical cores is fine: the workers are the only busy processes.
        init_ray(base, None, num_cpus=int(math.ceil(concurrency * need["CPU"])) + DATA_CPUS_PER_TRIAL * concurrency)
    if not resuming:
        state = json.loads((sweep_dir / SWEEP_FILE).read_text())
        atomic_write_json(sweep_dir / SWEEP_FILE, {**state, "concurrency": concurrency})
    sched = space.scheduler
    log(f"sweep {sweep_dir}: {num_trials} trial(s), search {space.search}, "
        + (f"ASHA (grace {sched.grace_period}, reduction {sched.reduction_factor:g}, "
           f"max_t {sched.max_t or base.train.epochs} epochs)" if sched.type == "asha" else "no early stopping")
        + f", {concurrency} at a time, each {base.distributed.num_workers} worker(s) x "
        f"{base.distributed.cpus_per_worker:g} CPU; metric valid {space.metric} ({space.mode}); "
        f"ray up in {time.perf_counter() - t0:.1f}s" + ("; resuming" if resuming else ""))

    trainable = tune.with_resources(tune.with_parameters(run_trial, base=to_dict(base), sweep_dir=str(sweep_dir)),
                                    {"cpu": TRIAL_CPU})
    exp_dir = sweep_dir / TUNE_DIR
    if resuming and tune.Tuner.can_restore(str(exp_dir)):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        seed = space.seed if space.seed is not None else base.train.seed
        search_alg, max_trials = _search_alg(space, seed, concurrency)
        tuner = tune.Tuner(
            trainable,
            param_space={"params": space.param_space()},
            tune_config=tune.TuneConfig(
                metric=space.tune_metric, mode=space.mode, search_alg=search_alg,
                scheduler=_scheduler(space, base), num_samples=space.num_samples,
                max_concurrent_trials=max_trials, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(sweep_dir), verbose=1),
        )
    t0 = time.perf_counter()
    grid = tuner.fit()
    elapsed = time.perf_counter() - t0
    # Ctrl-C / SIGINT: Tune saves its state (the running trials as RUNNING) and returns.
    # The saved state, not the in-memory grid, tells which trials are unfinished.
    saved = tune.ExperimentAnalysis(str(exp_dir)).trials
    finished = sum(t.status in ("TERMINATED", "ERROR") for t in saved)
    if finished < max(len(saved), num_trials):
        raise SweepInterrupted(f"sweep interrupted with {finished} of {num_trials} trial(s) finished; "
                               f"continue it with: fenrec tune --resume {sweep_dir}")

    rows = []
    for r in grid:
        prune_unregistered_checkpoints(sweep_dir / "trials" / Path(r.path).name, base.distributed.keep_checkpoints)
        df = r.metrics_dataframe
        history = df.to_dict("records") if df is not None else ([r.metrics] if r.metrics else [])
        rows.append(row_from_history(Path(r.path).name, (r.config or {}).get("params", {}), history, space.metric,
                                     space.mode, error=r.error is not None))
    summary = write_results(sweep_dir, rows, space, to_dict(base))
    log(to_markdown(summary["rows"], space).rstrip())
    if summary["best"] is None:
        errors = [str(r.error) for r in grid if r.error is not None]
        raise RuntimeError(f"no trial of {sweep_dir} reported a metric" + (f"; first error: {errors[0]}" if errors else ""))
    log(f"{len(rows)} trial(s) in {elapsed:.0f}s; best {summary['best'].trial_id} valid {space.metric}="
        f"{summary['best'].best:.4f} -> {summary['best_yaml']}; table {summary['markdown']}; plot {summary['png']}")
    return {**summary, "sweep_dir": sweep_dir, "seconds": elapsed, "concurrency": concurrency}
