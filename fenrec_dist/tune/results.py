"""What a sweep leaves behind: the trials table (CSV, markdown), ``best.yaml`` and ``params.png``.

Rows are built from each trial's reported history (plain dicts of Tune's flattened
results), so this module is testable without Ray.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from fenrec_dist.config import dump_yaml
from fenrec_dist.train.checkpoint import atomic_write_text
from fenrec_dist.tune.space import Space, plain, trial_config
from fenrec_dist.tune.trainable import TIME_ATTR

STATUSES = ("completed", "stopped", "error", "pending")
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of the checkpoints it keeps


def prune_unregistered_checkpoints(trial_dir: Path, keep: int) -> list[str]:
    """Delete the ``checkpoint_*`` dirs of a *finished* trial that Ray Train never registered.

    A worker uploads its checkpoint before the Train controller registers it (and only a
    registration applies ``CheckpointConfig.num_to_keep``). When Tune stops a trial (ASHA)
    the controller dies with reports still queued, so their uploaded checkpoints stay on
    storage, unpruned (seen: 3 dirs where 1 is kept). Kept: the dirs named in the trial's
    ``checkpoint_manager_snapshot.json``; without one (nothing was registered), the newest
    ``keep`` by name (Ray names them by time); with an unreadable one, all. Returns the names
    deleted, oldest first.
    """
    dirs = sorted(p.name for p in Path(trial_dir).glob("checkpoint_*") if p.is_dir())
    snap = Path(trial_dir) / TRAIN_SNAPSHOT
    if snap.exists():
        try:
            state = json.loads(snap.read_text())
        except (OSError, json.JSONDecodeError):
            return []  # unreadable record: keep everything rather than guess
        results = [*state.get("checkpoint_results", []), *state.get("pending_training_results", []),
                   state.get("latest_checkpoint_result") or {}]
        kept = {r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")}
    else:
        kept = set(dirs[-keep:]) if keep > 0 else set(dirs)
    gone = [d for d in dirs if d not in kept]
    for d in gone:
        shutil.rmtree(Path(trial_dir) / d, ignore_errors=True)
    return gone


@dataclass
class TrialRow:
    """One trial: its sampled parameters, best validation metric, test metric (if it finished)."""

    trial_id: str
    params: dict[str, Any]
    best: float  # best validation metric over its epochs (NaN if none reported)
    test: float  # test metric of its best weights (NaN unless completed)
    epochs: int  # epochs completed
    status: str  # completed | stopped (early, by ASHA) | error | pending (no report)


def _is_true(v: Any) -> bool:
    return v is True or (isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) and v == 1)


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def row_from_history(trial_id: str, params: dict[str, Any], history: Iterable[dict[str, Any]], metric: str,
                     mode: str = "max", error: bool = False) -> TrialRow:
    """A TrialRow from the trial's reported results (flattened: ``valid/NDCG@20``).

    Per-epoch records carry ``epochs_done``; the last record of a finished trial has
    ``final`` with the best weights' ``valid`` and ``test`` metrics.
    """
    key, test_key = f"valid/{metric}", f"test/{metric}"
    best, test, epochs, final = math.nan, math.nan, 0, False
    better = max if mode == "max" else min
    for rec in history:
        if _is_true(rec.get("final")):
            final = True
            test = _num(rec.get(test_key))
            continue
        done = _num(rec.get(TIME_ATTR))
        if math.isnan(done):
            continue
        epochs = max(epochs, int(done))
        v = _num(rec.get(key))
        if not math.isnan(v):
            best = v if math.isnan(best) else better(best, v)
    status = "error" if error else "completed" if final else "stopped" if epochs else "pending"
    return TrialRow(trial_id, {k: plain(v) for k, v in params.items()}, best, test, epochs, status)


def sort_rows(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Best first by the metric; trials without a value last."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (math.isnan(r.best), sign * r.best if not math.isnan(r.best) else 0.0,
                                       r.trial_id))


def columns(space: Space) -> list[str]:
    return ["trial_id", *space.params, f"best_valid_{space.metric}", f"test_{space.metric}", "epochs", "status"]


def _cells(row: TrialRow, space: Space, fmt: bool) -> list[Any]:
    def f(v: Any, metric: bool = False) -> Any:
        if isinstance(v, float):
            if math.isnan(v):
                return ""
            return (f"{v:.4f}" if metric else f"{v:.4g}") if fmt else repr(v)
        return v

    return [row.trial_id, *(f(row.params.get(p)) for p in space.params), f(row.best, True), f(row.test, True),
            row.epochs, row.status]


def to_csv(rows: list[TrialRow], space: Space) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns(space))
    for r in rows:
        w.writerow(_cells(r, space, fmt=False))
    return buf.getvalue()


def to_markdown(rows: list[TrialRow], space: Space) -> str:
    cols = columns(space)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in _cells(r, space, fmt=True)) + " |")
    return "\n".join(lines) + "\n"


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """The first row with a metric (rows sorted by ``sort_rows``)."""
    return next((r for r in rows if not math.isnan(r.best)), None)


def plot_params(rows: list[TrialRow], space: Space, out: Path) -> Path | None:
    """params.png: the best validation metric against each searched parameter, one subplot each."""
    try:
        import matplotlib
    except ImportError:  # plotting is optional on minimal images
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(space.params)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    markers = {"completed": ("o", "tab:blue"), "stopped": ("x", "tab:orange"), "error": ("s", "tab:red"),
               "pending": (".", "gray")}
    for ax, name in zip(axes[0], names):
        p = space.params[name]
        values = [r.params.get(name) for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            pos = {v: v for v in values}
        else:  # categorical: listed order
            order = list(dict.fromkeys([*p.values, *values]))
            pos = {v: i for i, v in enumerate(order)}
            ax.set_xticks(range(len(order)), [str(v) for v in order])
        for status, (m, c) in markers.items():
            pts = [(pos[r.params.get(name)], r.best) for r in rows if r.status == status and not math.isnan(r.best)]
            if pts:
                ax.scatter([x for x, _ in pts], [y for _, y in pts], marker=m, color=c, label=status)
        if numeric and p.log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"best valid {space.metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{Path(space.path).name}: {len(rows)} trials")
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def write_results(sweep_dir: Path, rows: list[TrialRow], space: Space, base: dict[str, Any]) -> dict[str, Any]:
    """trials.csv, trials.md, best.yaml (the best trial's full config) and params.png."""
    rows = sort_rows(rows, space.mode)
    atomic_write_text(sweep_dir / "trials.csv", to_csv(rows, space))
    atomic_write_text(sweep_dir / "trials.md", to_markdown(rows, space))
    out: dict[str, Any] = {"rows": rows, "csv": sweep_dir / "trials.csv", "markdown": sweep_dir / "trials.md",
                           "best": None, "best_yaml": None, "png": None}
    best = best_row(rows)
    if best is not None:
        cfg = trial_config(base, best.params)
        header = (f"# Best trial {best.trial_id} of the sweep {sweep_dir} ({Path(space.path).name}): "
                  f"valid {space.metric}={best.best:.4f}\n"
                  f"# Searched: " + ", ".join(f"{k}={v!r}" for k, v in best.params.items()) + "\n"
                  f"# Train it: fenrec train --config {sweep_dir / 'best.yaml'}\n")
        atomic_write_text(sweep_dir / "best.yaml", header + dump_yaml(cfg))
        out["best"], out["best_yaml"] = best, sweep_dir / "best.yaml"
    out["png"] = plot_params(rows, space, sweep_dir / "params.png")
    return out
