"""The layout of ``results/<dataset>/<run>/`` and reading it back strictly.

A collected run directory holds:

* ``config.yaml``: the resolved config the run trained with (copied from its run directory);
* ``metrics.jsonl``: one JSON record per finished epoch (``epoch``, ``valid``, ``time.epoch``,
  ``wall_time``, ``best_epoch``, ...), as ``fenrec train`` writes it;
* ``final.json``: best epoch and the best checkpoint's valid and test metrics; absent while the
  run is still in progress;
* ``run.json``: written by ``fenrec results collect`` (see :func:`run_info`): the command, the
  git commit and dirty flag, the host, start and end time, seed, preset name, and the epochs
  and wall time to the best checkpoint derived from ``metrics.jsonl``;
* ``checkpoints/`` (and, for a Ray Train run of today's layout, ``checkpoint_*/``): only while
  the run is in progress, so that it resumes on another machine.

Every problem is a :class:`ResultsError` naming the file (and line) at fault. Nothing here is
filled in when it is missing: a run without ``metrics.jsonl`` is an error, not a row.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fenrec_dist.atomic import atomic_write_bytes, atomic_write_text, dir_mode, file_mode  # noqa: F401
from fenrec_dist.config import RESUME_KEYS
from fenrec_dist.data.errors import DataError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
FINAL = "final.json"
RUN = "run.json"
CHECKPOINTS = "checkpoints"
#: Ray Train checkpoint directories of today's distributed layout (top level of a run directory).
RAY_CHECKPOINT_GLOB = "checkpoint_*"
#: The files ``collect`` copies from a run directory, in this order (``final.json`` if present).
SMALL_FILES = (CONFIG, METRICS, FINAL)

#: Config keys that may differ between two collections of one run (``fenrec train --resume
#: --set`` may change them) or between the seeds of one preset: they do not change what a run
#: computes. ``train.seed`` is what tells the seeds of one preset apart.
EXECUTION_KEYS = frozenset(RESUME_KEYS) | {"data.path", "distributed.name", "distributed.storage_path"}

#: Test metrics of the results table, in column order.
TEST_METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")
#: The validation metric of the curves PNG.
CURVE_METRIC = "NDCG@20"


class ResultsError(DataError):
    """A results directory, or a run directory to collect, that is missing a file or holds a bad one."""


# atomic writes: fenrec_dist.atomic (re-exported for this package's modules)
_file_mode = file_mode


def json_text(obj: Any) -> str:
    """The JSON text this package writes: 2-space indent, keys in the given order, final newline."""
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"


def copy_file(src: Path, dst: Path) -> None:
    """Copy the bytes of ``src`` to ``dst`` (contents only; a new file gets the umask's permissions)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        os.fsync(fo.fileno())


# --------------------------------------------------------------------------- reading files


def read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultsError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_config(path: Path) -> dict[str, Any]:
    """The raw mapping of a run's ``config.yaml`` (not validated against today's Config, so
    the configs of older runs stay readable)."""
    try:
        obj = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultsError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ResultsError(f"{path}: not a readable YAML file: {exc}") from exc
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: expected a YAML mapping (a resolved run config)")
    return obj


def config_seed(config: dict[str, Any], path: Path) -> int:
    seed = (config.get("train") or {}).get("seed") if isinstance(config.get("train"), dict) else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ResultsError(f"{path}: train.seed missing or not an int ({seed!r})")
    return seed


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.seed": 1, ...}``: the dotted keys of a nested config mapping."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = EXECUTION_KEYS) -> list[str]:
    """The dotted keys, present in both configs and not in ``ignore``, whose values differ
    (a key only one of them has, from an older or newer version of the code, is not compared)."""
    fa, fb = flat_config(a), flat_config(b)
    return sorted(k for k in fa.keys() & fb.keys() if k not in ignore and fa[k] != fb[k])


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl``: epochs 0, 1, ..., n-1 in order, each with a
    ``time.epoch`` in seconds and ``valid`` metrics (errors name ``path:line``)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise ResultsError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not readable: {exc}") from exc
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path}:{i}: not a JSON record: {exc}") from exc
        if not isinstance(rec, dict):
            raise ResultsError(f"{path}:{i}: expected a JSON object")
        if rec.get("epoch") != len(records):
            raise ResultsError(f"{path}:{i}: epoch {rec.get('epoch')!r} where epoch {len(records)} was expected "
                               f"(records must be the epochs 0, 1, ... in order)")
        if not _finite((rec.get("time") or {}).get("epoch")):
            raise ResultsError(f"{path}:{i}: time.epoch (seconds of the epoch) missing or not a number")
        if not isinstance(rec.get("valid"), dict):
            raise ResultsError(f"{path}:{i}: valid metrics missing")
        records.append(rec)
    if not records:
        raise ResultsError(f"{path}: no epoch records (the run finished no epoch)")
    return records


def read_final(path: Path) -> dict[str, Any]:
    final = read_json(path)
    best = final.get("best_epoch")
    if isinstance(best, bool) or not isinstance(best, int) or best < 0:
        raise ResultsError(f"{path}: best_epoch missing or not an epoch number ({best!r})")
    test = final.get("test")
    if not isinstance(test, dict):
        raise ResultsError(f"{path}: test metrics missing")
    for k in TEST_METRICS:
        if not _finite(test.get(k)):
            raise ResultsError(f"{path}: test {k} missing or not a number")
    return final


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """When a run ran and how long it took to its best checkpoint, from ``metrics.jsonl``.

    ``time_to_best_s`` sums ``time.epoch`` of epochs 0..best: the time spent training and
    validating up to the best checkpoint, without start-up, pauses between resumed sessions
    and the final test. ``elapsed_to_best_s`` is wall clock from the start of epoch 0 to the
    end of the best epoch (``wall_time`` of the records): it includes those pauses.
    """

    epochs_run: int
    best_epoch: int
    epochs_to_best: int
    time_to_best_s: float
    train_time_s: float
    elapsed_to_best_s: float | None
    started: float | None
    ended: float | None


def timing(records: list[dict[str, Any]], best_epoch: int, where: Path | str = METRICS) -> Timing:
    if not 0 <= best_epoch < len(records):
        raise ResultsError(f"{where}: best epoch {best_epoch} is not among its {len(records)} epoch records")
    epoch_s = [float(r["time"]["epoch"]) for r in records]
    walls = [r.get("wall_time") for r in records]
    started = ended = elapsed = None
    if all(_finite(w) for w in walls):
        started = float(walls[0]) - epoch_s[0]
        ended = float(walls[-1])
        elapsed = float(walls[best_epoch]) - started
    return Timing(epochs_run=len(records), best_epoch=best_epoch, epochs_to_best=best_epoch + 1,
                  time_to_best_s=sum(epoch_s[: best_epoch + 1]), train_time_s=sum(epoch_s),
                  elapsed_to_best_s=elapsed, started=started, ended=ended)


def best_epoch_of(records: list[dict[str, Any]], final: dict[str, Any] | None) -> int:
    """final.json's best epoch; for a run in progress, the last record's ``best_epoch``."""
    if final is not None:
        return int(final["best_epoch"])
    best = records[-1].get("best_epoch")
    if isinstance(best, bool) or not isinstance(best, int) or best < 0:
        return max(range(len(records)), key=lambda e: (records[e]["valid"].get(CURVE_METRIC, -math.inf), -e))
    return best


# --------------------------------------------------------------------------- collected runs


@dataclass(frozen=True)
class Run:
    """One collected run: ``results/<dataset>/<name>/``."""

    dataset: str
    name: str
    path: Path
    preset: str
    seed: int
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    final: dict[str, Any] | None
    info: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.final is not None

    @property
    def timing(self) -> Timing:
        return timing(self.metrics, best_epoch_of(self.metrics, self.final), self.path / METRICS)

    def curve(self, metric: str = CURVE_METRIC) -> list[tuple[int, float]]:
        return [(r["epoch"], float(r["valid"][metric])) for r in self.metrics if _finite(r["valid"].get(metric))]


def load_run(path: Path, dataset: str | None = None) -> Run:
    """Read one collected run strictly: config.yaml, metrics.jsonl and run.json must exist;
    final.json is absent only while the run is in progress."""
    path = Path(path)
    for name in (CONFIG, METRICS, RUN):
        if not (path / name).is_file():
            raise ResultsError(f"{path / name}: missing (a collected run holds {CONFIG}, {METRICS}, {RUN} and, "
                               f"once finished, {FINAL}; collect it with `fenrec results collect`)")
    config = read_config(path / CONFIG)
    seed = config_seed(config, path / CONFIG)
    metrics = read_metrics(path / METRICS)
    final = read_final(path / FINAL) if (path / FINAL).exists() else None
    info = read_json(path / RUN)
    preset = info.get("preset")
    if not isinstance(preset, str) or not preset.strip():
        raise ResultsError(f"{path / RUN}: preset missing (the name that groups runs across seeds)")
    if final is not None and final["best_epoch"] >= len(metrics):
        raise ResultsError(f"{path / FINAL}: best_epoch {final['best_epoch']} but {path / METRICS} holds "
                           f"{len(metrics)} epochs")
    return Run(dataset=dataset or path.parent.name, name=path.name, path=path, preset=preset, seed=seed,
               config=config, metrics=metrics, final=final, info=info)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
                  key=lambda p: p.name)


def is_run_dir(path: Path) -> bool:
    """A folder counts as a collected run when it holds any of config.yaml, metrics.jsonl or
    run.json (then it must hold all of them); other folders (a sweep's tables) are not runs."""
    return any((path / name).exists() for name in (CONFIG, METRICS, RUN))


def load_results(root: Path) -> list[Run]:
    """Every run under ``root/<dataset>/<run>/``, sorted by dataset and run name. Hidden
    folders (a collect's staging directory) and folders that are not runs are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"{root}: no such results directory")
    return [load_run(run_dir, dataset.name) for dataset in _visible_dirs(root) for run_dir in _visible_dirs(dataset)
            if is_run_dir(run_dir)]
