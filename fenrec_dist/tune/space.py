"""The search-space file of a sweep (``tune_spaces/*.yaml``): parsing and validation.

A space names dotted config keys (``loss.gamma``) and how to sample them. Everything is
checked before any trial starts: unknown top-level keys, unknown parameter names (not a
key of the config), malformed distributions, and every value a trial could receive
(each parameter's extremes or listed values, alone and together) is run through the
config's own type and range checks. Errors are ``ConfigError`` naming the file and the
parameter. Only ``Param.domain`` touches Ray Tune.

Precedence of a trial's config: dataclass defaults < ``--config`` file < the space's
``fixed``/``resources`` < ``--set`` < the sampled parameters.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fenrec_dist.config import (
    Config,
    ConfigError,
    apply_override,
    check_value,
    config_from_dict,
    describe,
    load_config,
    metrics_for_ks,
    parse_override,
    read_yaml,
    to_dict,
    validate,
)

TOP_KEYS = ("metric", "mode", "search", "num_samples", "seed", "scheduler", "resources", "fixed", "params")
SEARCHES = ("random", "grid", "optuna")
PARAM_TYPES = ("uniform", "loguniform", "randint", "choice", "grid")
PARAM_KEYS = {
    "uniform": {"type", "low", "high", "grid_points"},
    "loguniform": {"type", "low", "high", "grid_points"},
    "randint": {"type", "low", "high", "grid_points"},
    "choice": {"type", "values"},
    "grid": {"type", "values"},
}
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor", "max_t"}
RESOURCE_KEYS = {"num_workers": "distributed.num_workers", "cpus_per_worker": "distributed.cpus_per_worker",
                 "use_gpu": "distributed.use_gpu"}
MAX_COMBOS = 512  # joint value combinations checked exhaustively; beyond, singles + a random sample
MAX_INT_VALUES = 100_000  # randint ranges up to this size have every value checked against the key's range


def plain(value: Any) -> Any:
    """A numpy scalar (as Tune's samplers return) as the Python value the config expects."""
    return value.item() if isinstance(value, np.generic) else value


def config_keys() -> list[str]:
    return [key for key, *_ in describe()]


@dataclass(frozen=True)
class Param:
    """One searched config key.

    ``uniform``/``loguniform``: a float in [low, high]; ``randint``: an int in [low, high]
    (both ends included); ``choice``: one of ``values`` at random; ``grid``: every one of
    ``values`` (Tune's grid_search, crossed with the other grid parameters).
    ``grid_points``: how many evenly spaced values (log-spaced for loguniform) a range
    gives under ``search: grid``.
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple[Any, ...] = ()
    grid_points: int | None = None

    def grid_values(self) -> list[Any]:
        """The values this parameter takes under ``search: grid``."""
        if self.type in ("choice", "grid"):
            return list(self.values)
        assert self.low is not None and self.high is not None
        if self.type == "randint":
            if self.grid_points is None:
                return list(range(int(self.low), int(self.high) + 1))
            return sorted({int(round(v)) for v in np.linspace(self.low, self.high, self.grid_points)})
        n = self.grid_points or 0
        pts = np.geomspace(self.low, self.high, n) if self.type == "loguniform" else np.linspace(self.low, self.high, n)
        return [float(round(float(v), 10)) for v in pts]

    def candidates(self, search: str) -> list[Any]:
        """Values checked before the sweep: a range's ends, or every listed/grid value."""
        if search == "grid" or self.type in ("choice", "grid"):
            return self.grid_values()
        if self.type == "randint":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]  # what Tune's float samplers return

    def all_values(self, search: str, limit: int) -> list[Any] | None:
        """Every value a trial can receive, when there are at most ``limit`` (else None):
        a randint's whole range, the listed or grid values; None for float ranges."""
        if search == "grid" or self.type in ("choice", "grid"):
            values = self.grid_values()
        elif self.type == "randint" and int(self.high) - int(self.low) < limit:
            values = list(range(int(self.low), int(self.high) + 1))
        else:
            return None
        return values if len(values) <= limit else None

    def domain(self, search: str) -> Any:
        """The Ray Tune search-space object."""
        from ray import tune

        if search == "grid" or self.type == "grid":
            return tune.grid_search(self.grid_values())
        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "randint":
            return tune.randint(int(self.low), int(self.high) + 1)  # Tune's upper end is exclusive
        return tune.choice(list(self.values))

    @property
    def log_scale(self) -> bool:
        return self.type == "loguniform"


@dataclass(frozen=True)
class Scheduler:
    """ASHA (asynchronous successive halving) over completed epochs, or none (fifo)."""

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None  # None: the trials' train.epochs


@dataclass(frozen=True)
class Space:
    path: str
    params: dict[str, Param]
    metric: str = "NDCG@20"
    mode: str = "max"
    search: str = "random"
    num_samples: int = 1
    seed: int | None = None
    scheduler: Scheduler = field(default_factory=lambda: Scheduler(type="fifo"))
    fixed: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the file's mapping, for sweep.json

    @property
    def tune_metric(self) -> str:
        """The flattened key Tune sees: the worker reports {"valid": {"NDCG@20": ...}}."""
        return f"valid/{self.metric}"

    def num_trials(self) -> int:
        """Trials the sweep runs: grid points (crossed) times num_samples."""
        grid = 1
        for p in self.params.values():
            if self.search == "grid" or p.type == "grid":
                grid *= len(p.grid_values())
        return grid * self.num_samples

    def param_space(self) -> dict[str, Any]:
        return {name: p.domain(self.search) for name, p in self.params.items()}

    def with_num_samples(self, n: int | None) -> Space:
        if n is None:
            return self
        if n < 1:
            raise ConfigError(f"--trials must be >= 1, got {n}")
        return Space(**{**self.__dict__, "num_samples": n})


# --------------------------------------------------------------------------- parsing


def _err(path: str | Path, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def _number(path: str | Path, where: str, value: Any, integer: bool = False) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise _err(path, f"{where}: expected {'an int' if integer else 'a number'}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _err(path, f"{where}: expected a finite number, got {value!r}")
    return value


def _flatten(mapping: Any, path: str | Path, section: str, prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}, "loss.gamma": 0.2} -> {"train.epochs": 3, "loss.gamma": 0.2}."""
    if not isinstance(mapping, dict):
        raise _err(path, f"{section}: expected a mapping of dotted config keys, got {type(mapping).__name__}")
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, path, section, key + "."))
        else:
            out[key] = v
    return out


def _unknown_key(path: str | Path, section: str, name: str, kind: str = "parameter") -> ConfigError:
    close = difflib.get_close_matches(name, config_keys(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return _err(path, f"unknown {kind} '{name}' in {section}: not a config key{hint}; `fenrec config` lists them")


def _parse_param(path: str | Path, name: str, spec: Any, search: str) -> Param:
    where = f"params.{name}"
    if not isinstance(spec, dict):
        raise _err(path, f"{where}: expected a mapping like {{type: uniform, low: 0.1, high: 0.5}}, got {spec!r}")
    ptype = spec.get("type")
    if ptype not in PARAM_TYPES:
        raise _err(path, f"{where}: type must be one of {list(PARAM_TYPES)}, got {ptype!r}")
    extra = set(spec) - PARAM_KEYS[ptype]
    if extra:
        raise _err(path, f"{where}: unknown field(s) {sorted(extra)} for type {ptype} "
                         f"(allowed: {sorted(PARAM_KEYS[ptype])})")
    if ptype in ("choice", "grid"):
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise _err(path, f"{where}: {ptype} needs a non-empty list 'values'")
        if search == "optuna" and ptype == "grid":
            raise _err(path, f"{where}: type grid cannot be used with search: optuna (use choice)")
        return Param(name, ptype, values=tuple(values))
    for k in ("low", "high"):
        if k not in spec:
            raise _err(path, f"{where}: {ptype} needs '{k}'")
    integer = ptype == "randint"
    low = _number(path, f"{where}.low", spec["low"], integer)
    high = _number(path, f"{where}.high", spec["high"], integer)
    if not low < high:
        raise _err(path, f"{where}: need low < high, got low={low} high={high}")
    if ptype == "loguniform" and low <= 0:
        raise _err(path, f"{where}: loguniform needs low > 0, got {low}")
    points = spec.get("grid_points")
    if points is not None and (isinstance(points, bool) or not isinstance(points, int) or points < 2):
        raise _err(path, f"{where}: grid_points must be an int >= 2, got {points!r}")
    if search == "grid" and points is None and ptype != "randint":
        raise _err(path, f"{where}: search: grid needs grid_points (or type grid with values) for a {ptype} range")
    return Param(name, ptype, low=low, high=high, grid_points=points)


def _parse_scheduler(path: str | Path, spec: Any) -> Scheduler:
    if spec is None or spec in ("fifo", "none"):
        return Scheduler(type="fifo")
    if spec == "asha":
        return Scheduler()
    if not isinstance(spec, dict):
        raise _err(path, f"scheduler: expected a mapping like {{type: asha, grace_period: 1}}, got {spec!r}")
    extra = set(spec) - SCHEDULER_KEYS
    if extra:
        raise _err(path, f"scheduler: unknown field(s) {sorted(extra)} (allowed: {sorted(SCHEDULER_KEYS)})")
    stype = spec.get("type", "asha")
    if stype not in ("asha", "fifo"):
        raise _err(path, f"scheduler.type must be asha or fifo, got {stype!r}")
    if stype == "fifo":
        return Scheduler(type="fifo")
    grace = _number(path, "scheduler.grace_period", spec.get("grace_period", 1), integer=True)
    rf = _number(path, "scheduler.reduction_factor", spec.get("reduction_factor", 2))
    max_t = spec.get("max_t")
    if grace < 1:
        raise _err(path, f"scheduler.grace_period must be >= 1 epoch, got {grace}")
    if rf <= 1:
        raise _err(path, f"scheduler.reduction_factor must be > 1, got {rf}")
    if max_t is not None:
        max_t = _number(path, "scheduler.max_t", max_t, integer=True)
        if max_t < grace:
            raise _err(path, f"scheduler.max_t ({max_t}) must be >= grace_period ({grace})")
    return Scheduler(type="asha", grace_period=int(grace), reduction_factor=float(rf), max_t=max_t)


def parse_space(raw: Any, path: str | Path = "<space>") -> Space:
    """A Space from the file's mapping (structure only; see ``validate_space``)."""
    if not isinstance(raw, dict):
        raise _err(path, f"expected a mapping at the top level, got {type(raw).__name__}")
    extra = set(raw) - set(TOP_KEYS)
    if extra:
        raise _err(path, f"unknown top-level key(s) {sorted(extra)} (allowed: {list(TOP_KEYS)})")
    search = raw.get("search", "random")
    if search not in SEARCHES:
        raise _err(path, f"search must be one of {list(SEARCHES)}, got {search!r}")
    if search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise _err(path, "search: optuna needs the optuna package, which is not installed "
                         "(pip install optuna), or use search: random")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise _err(path, f"mode must be max or min, got {mode!r}")
    metric = raw.get("metric", "NDCG@20")
    if not isinstance(metric, str):
        raise _err(path, f"metric must be a string like NDCG@20, got {metric!r}")
    num_samples = _number(path, "num_samples", raw.get("num_samples", 1), integer=True)
    if num_samples < 1:
        raise _err(path, f"num_samples must be >= 1, got {num_samples}")
    seed = raw.get("seed")
    if seed is not None:
        seed = _number(path, "seed", seed, integer=True)
        if not 0 <= seed <= 2**32 - 1:  # the search algorithms seed NumPy generators with it
            raise _err(path, f"seed must be in [0, 2**32 - 1], got {seed}")
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise _err(path, "params: expected a non-empty mapping of dotted config keys to distributions")
    known = set(config_keys())
    params: dict[str, Param] = {}
    for name, spec in params_raw.items():
        name = str(name)
        if name not in known:
            raise _unknown_key(path, "params", name)
        params[name] = _parse_param(path, name, spec, search)
    fixed = _flatten(raw.get("fixed") or {}, path, "fixed")
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict):
        raise _err(path, f"resources: expected a mapping, got {resources!r}")
    for k, v in resources.items():
        if k not in RESOURCE_KEYS:
            raise _err(path, f"resources: unknown key '{k}' (allowed: {sorted(RESOURCE_KEYS)})")
        if RESOURCE_KEYS[k] in fixed:
            raise _err(path, f"resources.{k} and fixed {RESOURCE_KEYS[k]} both given")
        fixed[RESOURCE_KEYS[k]] = v
    for k in fixed:
        if k not in known:
            raise _unknown_key(path, "fixed", k, kind="key")
        if k in params:
            raise _err(path, f"'{k}' is both fixed and searched")
    return Space(path=str(path), params=params, metric=metric, mode=mode, search=search, num_samples=int(num_samples),
                 seed=seed, scheduler=_parse_scheduler(path, raw.get("scheduler")), fixed=fixed, raw=raw)


def load_space(path: str | Path) -> Space:
    p = Path(path)
    return parse_space(read_yaml(p, what="space file"), p)


# --------------------------------------------------------------------------- configs


def base_config(config_path: str | Path | None, overrides: list[str], space: Space) -> Config:
    """defaults < config file < space fixed/resources < ``--set``: the config every trial starts from."""
    cfg = load_config(config_path)
    for key, value in space.fixed.items():
        try:
            apply_override(cfg, key, value)
        except ConfigError as exc:
            raise _err(space.path, f"fixed: {exc}") from exc
    for text in overrides:
        key, value = parse_override(text)
        if key in space.params:
            raise ConfigError(f"--set {key} conflicts with the parameter '{key}' searched by {space.path}")
        apply_override(cfg, key, value)
    validate(cfg)
    if Path(cfg.data.path).exists():
        cfg.data.path = str(Path(cfg.data.path).resolve())
    return cfg


def trial_config(base: dict[str, Any] | Config, params: dict[str, Any]) -> Config:
    """The full config of one trial: the base config with the sampled ``params`` applied."""
    cfg = config_from_dict(copy.deepcopy(to_dict(base) if isinstance(base, Config) else base))
    for key, value in params.items():
        apply_override(cfg, key, plain(value))
    validate(cfg)
    return cfg


def allowed_metrics(cfg: Config) -> list[str]:
    return metrics_for_ks(cfg.eval.ks)


def _prepared_horizon(cfg: Config) -> int | None:
    from fenrec_dist.data.dataset import MANIFEST

    manifest = Path(cfg.data.path) / MANIFEST
    if not manifest.is_file():
        return None
    import json

    try:
        return int(json.loads(manifest.read_text())["horizon"])
    except (ValueError, KeyError, TypeError):
        return None


def _blame(space: Space, exc: ConfigError, params: dict[str, Any]) -> ConfigError:
    """The file-level error for a combination the config rejects: one searched parameter
    when the error is about it alone, else all of them together."""
    keys = set(exc.keys)
    culprits = [n for n in params if n in keys] if keys else [n for n in params if str(exc).startswith(f"{n}:")]
    if len(culprits) == 1:
        n = culprits[0]
        return _err(space.path, f"parameter '{n}' value {params[n]!r} is rejected by the config: {exc}")
    joined = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return _err(space.path, f"parameters {joined} are rejected together by the config: {exc}")


def validate_space(space: Space, base: Config) -> None:
    """Check every value a trial can receive against the config, before any trial starts.

    1. Each parameter alone: both ends of a range (every value of a randint range, every
       listed or grid value) go through the config's type and range checks of that key
       (``check_value``: ``train.batch_size`` must be >= 1, ``model.dropout`` in [0, 1), ...).
       Every key's range is an interval, so a float range whose two ends pass holds only
       valid values.
    2. Their joint combinations, with the base config, go through ``trial_config`` (types,
       ranges and cross-field checks such as lam_min <= lam_max or hidden % heads == 0):
       exhaustively over every value when there are at most ``MAX_COMBOS`` of them, else
       over the ends, exhaustively up to ``MAX_COMBOS`` combinations, else a seeded sample.
    """
    if space.metric not in allowed_metrics(base):
        raise _err(space.path, f"metric {space.metric!r} is not reported (eval.ks={list(base.eval.ks)}; "
                               f"choose one of {allowed_metrics(base)})")
    base_dict = to_dict(base)
    horizon = _prepared_horizon(base)
    cands = {name: p.candidates(space.search) for name, p in space.params.items()}
    for name, p in space.params.items():
        singles = p.all_values(space.search, MAX_INT_VALUES) or cands[name]
        for v in singles:
            try:
                check_value(name, plain(v))
            except ConfigError as exc:
                raise _err(space.path, f"parameter '{name}' value {v!r} is rejected by the config: {exc}") from exc
            if name == "data.horizon" and horizon is not None and v > horizon:
                raise _err(space.path, f"parameter 'data.horizon' value {v} exceeds the prepared horizon {horizon} "
                                       f"of {base.data.path} (prepare with --horizon {v}, or search values <= {horizon})")
    full = {name: p.all_values(space.search, MAX_COMBOS) or cands[name] for name, p in space.params.items()}
    if math.prod(len(v) for v in full.values()) <= MAX_COMBOS:
        cands = full  # e.g. every hidden size of a small randint range against model.heads
    names = list(cands)
    if math.prod(len(v) for v in cands.values()) <= MAX_COMBOS:
        combos = itertools.product(*cands.values())
    else:
        rng = random.Random(0)
        combos = (tuple(rng.choice(cands[n]) for n in names) for _ in range(MAX_COMBOS))
    for combo in combos:
        params = dict(zip(names, combo))
        try:
            trial_config(base_dict, params)
        except ConfigError as exc:
            raise _blame(space, exc, params) from exc
