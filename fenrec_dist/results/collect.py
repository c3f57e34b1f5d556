"""``fenrec results collect`` and ``fenrec results restore``: runs into and out of ``results/``.

``collect`` copies the small files of a run directory made by ``fenrec train`` into
``results/<dataset>/<name>/`` and writes ``run.json`` beside them; with ``checkpoint=True``
it also copies the run's newest complete checkpoint (a ``checkpoint_NNNNNN`` directory of
``checkpoints/``, or today's Ray Train ``checkpoint_*/``; ``checkpoints/`` whole for the earlier
one-process layout), so that a run in progress can be
committed and resumed on another machine with ``restore``. Collecting the same run again
replaces its folder: collecting a finished run without ``--checkpoint`` drops the checkpoint.

The folder is built in a hidden staging directory beside its destination and renamed into
place, so ``results/`` never shows a half-copied run. Checkpoints are copied before
``metrics.jsonl``: a run that trains while it is collected then has a log at least as long as
its checkpoint, and resuming drops the log's extra epochs.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fenrec_dist.results.layout import (
    CHECKPOINTS, CONFIG, FINAL, METRICS, RAY_CHECKPOINT_GLOB, RUN, ResultsError, atomic_write_text,
    best_epoch_of, config_differences, config_seed, copy_file, dir_mode, json_text, read_config, read_final,
    read_metrics, timing,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_state(cwd: Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it) of the checkout at ``cwd`` (default:
    the one this fenrec_dist package runs from); (None, None) outside a git checkout."""
    if cwd is None:
        cwd = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def host_description() -> dict[str, Any]:
    """The CPU model, logical CPU count and GPUs (``nvidia-smi``, when present) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, check=True, timeout=30).stdout
            gpus = [l.strip() for l in out.splitlines() if l.strip()]
        except (OSError, subprocess.SubprocessError):
            gpus = []
    return {"cpu": cpu, "cpus": os.cpu_count(), "gpus": gpus, "platform": platform.platform()}


def _checkpoint_sources(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders: ``checkpoints/`` and Ray Train's ``checkpoint_*/``."""
    found = [run_dir / CHECKPOINTS] if (run_dir / CHECKPOINTS).is_dir() else []
    found += sorted(d for d in run_dir.glob(RAY_CHECKPOINT_GLOB) if d.is_dir())
    return [d for d in found if any(p.is_file() for p in d.rglob("*"))]


def _newest_checkpoint(run_dir: Path, sources: list[Path]) -> list[tuple[Path, Path]]:
    """(folder, its path in the collected run) to copy: only the newest checkpoint directory
    holding a state (``checkpoint_NNNNNN`` by number: the trainers rename a checkpoint into place
    when it is whole, and resume still checks it), which is all a resume needs; every source
    folder whole for a run of the earlier one-process layout (``checkpoints/last.pt``)."""
    found = [d for src in sources for d in ([src] if src.name.startswith("checkpoint_") else src.glob("checkpoint_*"))
             if d.is_dir() and (d / "state.pt").is_file()]
    if not found:
        return [(src, Path(src.name)) for src in sources]
    newest = max(found, key=lambda d: (d.name, d.parent != run_dir))
    return [(newest, newest.relative_to(run_dir))]


def _copy_tree(src: Path, dst: Path, tries: int = 3) -> int:
    """Copy the folder ``src`` (a trainer may be replacing files in it: retried when a file
    vanishes mid-copy); returns the bytes copied. Lock and temp files are left out."""
    for attempt in range(tries):
        if dst.exists():
            shutil.rmtree(dst)
        try:
            total = 0
            for p in sorted(src.rglob("*")):
                if p.is_dir() or p.name.endswith(".tmp") or p.name == ".fenrec.lock":
                    continue
                copy_file(p, dst / p.relative_to(src))
                total += p.stat().st_size
            return total
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def default_preset(name: str, seed: int) -> str:
    """The run name less a trailing seed suffix: 'beauty-fast-s1' with seed 1 -> 'beauty-fast'."""
    m = re.match(rf"^(.+?)[-_.](?:s|seed)?{seed}$", name)
    return m.group(1) if m else name


def run_info(run_dir: Path, dest: Path, dataset: str, name: str, preset: str, seed: int,
             records: list[dict[str, Any]], final: dict[str, Any] | None, *, command: str | None,
             commit: str | None, checkpoint_files: list[str], host: dict[str, Any] | None = None,
             now: float | None = None) -> dict[str, Any]:
    """The content of ``run.json``.

    ``command``: how the run was made; without it the equivalent command is reconstructed
    from the copied config (``command_source: reconstructed``). ``commit``: the commit that
    trained it; without it the HEAD and dirty flag of the checkout fenrec_dist runs from are
    recorded at collection (``commit_source: collect``), as is the host: collect a run on the
    machine and checkout that trained it, or pass them.
    """
    t = timing(records, best_epoch_of(records, final), run_dir / METRICS)
    if command is None:
        ray_layout = any(Path(c).name.startswith("checkpoint_") for c in checkpoint_files) or \
            any(d.is_dir() for d in run_dir.glob(RAY_CHECKPOINT_GLOB))
        command = f"fenrec train --config {dest / CONFIG} --out runs/{name}" + ("" if ray_layout else " --local")
        command_source = "reconstructed"
    else:
        command_source = "given"
    if commit is None:
        git_commit, dirty = git_state()
        commit_source = "collect"
    else:
        git_commit, dirty, commit_source = commit, None, "given"
    return {
        "dataset": dataset,
        "name": name,
        "preset": preset,
        "seed": seed,
        "command": command,
        "command_source": command_source,
        "git_commit": git_commit,
        "git_dirty": dirty,
        "commit_source": commit_source,
        "host": host if host is not None else host_description(),
        "started": _iso(t.started),
        "ended": _iso(t.ended),
        "finished": final is not None,
        "epochs_run": t.epochs_run,
        "best_epoch": t.best_epoch,
        "epochs_to_best": t.epochs_to_best,
        "time_to_best_s": round(t.time_to_best_s, 3),
        "elapsed_to_best_s": None if t.elapsed_to_best_s is None else round(t.elapsed_to_best_s, 3),
        "train_time_s": round(t.train_time_s, 3),
        "checkpoint": checkpoint_files,
        "source": str(run_dir),
        "collected": _iso(now if now is not None else _dt.datetime.now(tz=_dt.timezone.utc).timestamp()),
    }


def collect(run_dir: str | Path, results: str | Path, dataset: str, name: str, *, preset: str | None = None,
            command: str | None = None, commit: str | None = None, checkpoint: bool = False,
            log=print) -> Path:
    """Copy a run directory's small files (and, with ``checkpoint``, its checkpoints) into
    ``results/<dataset>/<name>/`` with a new ``run.json``; returns that folder."""
    run_dir, results = Path(run_dir), Path(results)
    for what, value in (("--dataset", dataset), ("--name", name)):
        if not NAME_RE.match(value):
            raise ResultsError(f"{what} {value!r}: use letters, digits, '.', '_' and '-' (not starting with one "
                               f"of the last three)")
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir}: no such run directory")
    for req in (CONFIG, METRICS):
        if not (run_dir / req).is_file():
            raise ResultsError(f"{run_dir / req}: missing; is {run_dir} a run directory made by `fenrec train`?")
    config = read_config(run_dir / CONFIG)
    seed = config_seed(config, run_dir / CONFIG)
    preset = preset or default_preset(name, seed)
    ckpts = _checkpoint_sources(run_dir) if checkpoint else []
    if checkpoint and not ckpts:
        raise ResultsError(f"{run_dir}: --checkpoint, but the run holds no checkpoint ({CHECKPOINTS}/ or "
                           f"{RAY_CHECKPOINT_GLOB}/)")
    dest = results / dataset / name
    if (dest / CONFIG).is_file():
        differ = config_differences(read_config(dest / CONFIG), config)
        if differ:
            raise ResultsError(f"{dest} holds another run (its {CONFIG} differs in {', '.join(differ)}); choose "
                               f"another --name, or delete {dest} first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}.collect-"))
    try:
        copied: list[str] = []
        size = 0
        for src, rel in _newest_checkpoint(run_dir, ckpts):  # before metrics.jsonl: see the module docs
            size += _copy_tree(src, stage / rel)
            copied += sorted(str(p.relative_to(stage)) for p in (stage / rel).rglob("*") if p.is_file())
        for fname in (CONFIG, FINAL, METRICS):
            if (run_dir / fname).is_file():
                copy_file(run_dir / fname, stage / fname)
        records = read_metrics(stage / METRICS)
        final = read_final(stage / FINAL) if (stage / FINAL).exists() else None
        if final is not None and final["best_epoch"] >= len(records):
            raise ResultsError(f"{run_dir / FINAL}: best_epoch {final['best_epoch']} but {run_dir / METRICS} "
                               f"holds {len(records)} epochs")
        info = run_info(run_dir, dest, dataset, name, preset, seed, records, final, command=command,
                        commit=commit, checkpoint_files=copied)
        atomic_write_text(stage / RUN, json_text(info))
        os.chmod(stage, dir_mode())
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}.old-"))
            os.replace(dest, old / name)
        os.replace(stage, dest)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    state = "finished" if final is not None else "in progress"
    log(f"collected {run_dir} -> {dest} ({state}, {info['epochs_run']} epochs, best after "
        f"{info['epochs_to_best']}, preset {preset}, seed {seed}"
        + (f"; checkpoint {size / 2**20:.1f} MiB" if ckpts else "") + ")")
    return dest


def restore(result_dir: str | Path, to: str | Path, log=print) -> Path:
    """Copy a collected run in progress (its files and checkpoint) back to a run directory
    that ``fenrec train --resume`` continues; returns that directory."""
    src, to = Path(result_dir), Path(to)
    for req in (CONFIG, METRICS):
        if not (src / req).is_file():
            raise ResultsError(f"{src / req}: missing; is {src} a collected run (results/<dataset>/<run>)?")
    ckpts = _checkpoint_sources(src)
    if not ckpts:
        raise ResultsError(f"{src}: no checkpoint was collected with it ({CHECKPOINTS}/ or {RAY_CHECKPOINT_GLOB}/), "
                           f"so it cannot be resumed; collect the run with --checkpoint while it is in progress")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise ResultsError(f"{to}: already exists and is not an empty directory; restore into a new one")
    to.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.restore-"))
    try:
        for c in ckpts:
            _copy_tree(c, stage / c.name)
        for fname in (CONFIG, FINAL, METRICS):
            if (src / fname).is_file():
                copy_file(src / fname, stage / fname)
        os.chmod(stage, dir_mode())
        if to.exists():
            to.rmdir()
        os.replace(stage, to)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    local = (to / CHECKPOINTS).is_dir() and not any(c.name.startswith("checkpoint_") for c in ckpts)
    log(f"restored {src} -> {to}; continue with: fenrec train --resume {to}" + (" --local" if local else ""))
    return to
