"""What a run shows while it trains: a progress line per epoch, metrics.jsonl, TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def eta_text(rec: dict[str, Any], max_epochs: int, metric: str, patience: int | None = None) -> str:
    """Time left at this epoch's pace: to the early stop that comes if ``metric`` does not
    improve (the best epoch plus ``patience``), and at most to ``max_epochs``."""
    per_epoch = rec.get("time", {}).get("epoch", 0.0)
    last = max_epochs - 1
    cap = f"ETA<={format_duration(per_epoch * max(0, last - rec['epoch']))}"
    best_epoch = rec.get("best_epoch", -1)
    if patience is None or best_epoch < 0 or best_epoch + patience >= last:
        return cap
    stop = best_epoch + patience  # EarlyStopping: patience epochs without a new best
    return (f"ETA {format_duration(per_epoch * max(0, stop - rec['epoch']))} to the early stop after epoch {stop}"
            f" unless {metric} improves ({cap})")


def progress_line(rec: dict[str, Any], max_epochs: int, metric: str, patience: int | None = None) -> str:
    """One human-readable line per epoch from a metrics record (``patience``: early stopping's,
    for the ETA to the stop it would bring)."""
    loss = rec.get("loss", {})
    val = rec.get("valid", {})
    phases = rec.get("time", {})
    parts = [
        f"epoch {rec['epoch']:>3}",
        "loss " + " ".join(f"{k}={v:.4f}" for k, v in loss.items()),
        f"{rec.get('samples_per_s', 0):,.0f} samples/s",
        " ".join(f"{k}={v:.4f}" for k, v in val.items() if k in ("HR@20", "NDCG@20", "MRR", "ann_recall@20")),
        "time " + " ".join(f"{k}={v:.1f}s" for k, v in phases.items()),
        f"best {metric}={rec.get('best', float('nan')):.4f}@{rec.get('best_epoch', -1)}",
        eta_text(rec, max_epochs, metric, patience),
    ]
    neg = rec.get("negatives")
    if neg:
        fig = [f"fn={neg['raw_fn_rate']:.0%}" if "raw_fn_rate" in neg else "",
               f"cos mined={neg['mined_cos']:.3f}" if "mined_cos" in neg else "",
               f"used={neg['train_cos_index']:.3f}" if "train_cos_index" in neg else "",
               f"in-batch={neg['train_cos_in_batch']:.3f}" if "train_cos_in_batch" in neg else ""]
        parts.insert(4, "index " + " ".join(f for f in fig if f))
    if "startup" in rec:
        parts.append("startup " + " ".join(f"{k}={v:.1f}s" for k, v in rec["startup"].items()
                                           if isinstance(v, (int, float))))
    return " | ".join(parts)


PREVIOUS = "previous"  # a resumed run's first report: its checkpoint's own record (the epoch before it)


class MetricsLog:
    """Appends one JSON line per epoch; on resume keeps only completed epochs."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.run_dir = run_dir
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except Exception:  # tensorboard missing: the JSON log still works
                self._tb = None

    def truncate(self, completed_epochs: int) -> None:
        """Drop records of epochs >= completed_epochs (written before an interruption)."""
        if not self.path.exists():
            return
        keep = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["epoch"] < completed_epochs]
        self.path.write_text("".join(l + "\n" for l in keep))

    def write(self, rec: dict[str, Any]) -> None:
        rec = {**rec, "wall_time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            step = rec["epoch"]
            for group in ("loss", "valid", "time"):
                for k, v in rec.get(group, {}).items():
                    self._tb.add_scalar(f"{group}/{k}", v, step)
            self._tb.add_scalar("samples_per_s", rec.get("samples_per_s", 0.0), step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def drop_final(run_dir: Path, log=print) -> None:
    """Remove the final.json of an earlier finish of a run that trains on (its best checkpoint
    may change); the run's end writes it again, and ``fenrec evaluate`` rebuilds it any time."""
    final = Path(run_dir) / "final.json"
    if final.exists():
        final.unlink()
        log(f"resume: removed {final} of the earlier finish; it is written again when the run ends")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]


def plot_curves(run_dir: Path, metric: str = "NDCG@20") -> Path | None:
    """PNG of the training losses and validation metrics per epoch (curves.png)."""
    recs = read_metrics(run_dir)
    if not recs:
        return None
    try:
        import matplotlib
    except ImportError:  # plotting is optional on minimal GPU images
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in recs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in recs[0].get("loss", {}):
        axes[0].plot(epochs, [r["loss"].get(k, float("nan")) for r in recs], label=k)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].set_title("training losses")
    for k in ("HR@20", "NDCG@20", "MRR"):
        if k in recs[0].get("valid", {}):
            axes[1].plot(epochs, [r["valid"][k] for r in recs], label=k)
    best = max(recs, key=lambda r: r["valid"].get(metric, float("-inf")))
    axes[1].axvline(best["epoch"], color="gray", linestyle="--", label=f"best {metric} @ {best['epoch']}")
    axes[1].set_xlabel("epoch")
    axes[1].set_title("validation (full ranking)")
    axes[1].legend()
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
