"""``fenrec report``: the README's results table and the validation-curve PNG, from ``results/`` alone.

The table groups the finished runs of one dataset and preset (``run.json``'s ``preset``); the
runs of a group differ by ``train.seed`` of their ``config.yaml`` and in nothing else that
changes what a run computes (checked: a group mixing configs is an error). Per group: test
HR@5/10/20, NDCG@5/10/20 and MRR of each run's best-validation checkpoint as mean ± sample
standard deviation over seeds, the seeds, the epochs and the training time to the best
checkpoint, and the published baseline with our gap to it in percent. A second table lists
every run (in progress ones too) with its provenance.

The output is a pure function of the files: fixed float formatting, a fixed order (datasets
Beauty, Sports, Toys, Yelp, then others by name; presets by name; runs by seed and name), and a
PNG drawn on a private Agg canvas with matplotlib's default style and no ``Software`` stamp.
The block between ``<!-- results:begin -->`` and ``<!-- results:end -->`` of a markdown file is
replaced and nothing else in it changes.
"""

from __future__ import annotations

import io
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fenrec_dist.results.layout import (
    CONFIG, CURVE_METRIC, EXECUTION_KEYS, TEST_METRICS, ResultsError, Run, atomic_write_bytes, atomic_write_text,
    config_differences, load_results,
)
from fenrec_dist.results.published import FENREC_CLAIMED_GAIN_PCT, PUBLISHED

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
DATASET_ORDER = ("beauty", "sports", "toys", "yelp")
DATASET_NAMES = {"beauty": "Beauty", "sports": "Sports", "toys": "Toys", "yelp": "Yelp"}
DASH = "—"


# --------------------------------------------------------------------------- grouping and numbers


@dataclass(frozen=True)
class Group:
    """The finished runs of one dataset and preset, sorted by seed."""

    dataset: str
    preset: str
    runs: tuple[Run, ...]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def test(self, metric: str) -> list[float]:
        return [float(r.final["test"][metric]) for r in self.runs if r.final is not None]


def dataset_key(name: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(name) if name in DATASET_ORDER else len(DATASET_ORDER), name)


def dataset_name(name: str) -> str:
    return DATASET_NAMES.get(name, name)


def sort_runs(runs: Sequence[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: (dataset_key(r.dataset), r.preset, r.seed, r.name))


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Finished runs grouped by (dataset, preset); a group must hold distinct seeds of one config."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in sort_runs([r for r in runs if r.finished]):
        groups.setdefault((r.dataset, r.preset), []).append(r)
    out = []
    for (dataset, preset), members in groups.items():
        first = members[0]
        by_seed: dict[int, Run] = {}
        for other in members:
            if other.seed in by_seed:
                raise ResultsError(f"{other.path}: seed {other.seed} of preset {preset!r} ({dataset}) is already "
                                   f"collected as {by_seed[other.seed].path}; a preset's runs must differ by seed")
            by_seed[other.seed] = other
            differ = config_differences(first.config, other.config, EXECUTION_KEYS | {"train.seed"})
            if differ:
                raise ResultsError(f"{other.path / CONFIG}: differs from {first.path / CONFIG} in "
                                   f"{', '.join(differ)}, but both are preset {preset!r}; collect it under "
                                   f"another --preset")
        out.append(Group(dataset, preset, tuple(members)))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_metric(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.4f}" if s is None else f"{m:.4f} ± {s:.4f}"


def fmt_gap(ours: float, base: float) -> str:
    return f"{100.0 * (ours - base) / base:+.1f}%"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return DASH
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------- the markdown block


def results_table(groups: Sequence[Group]) -> list[str]:
    head = ["Dataset", "Preset", "Seeds", "Epochs to best", "Time to best", *TEST_METRICS]
    lines = [_row(head), _row(["---"] * 2 + ["---:"] * (len(head) - 2))]
    for g in groups:
        name = dataset_name(g.dataset)
        epochs = ", ".join(str(r.timing.epochs_to_best) for r in g.runs)
        t_best = statistics.fmean(r.timing.time_to_best_s for r in g.runs)
        seeds = f"{len(g.runs)} ({', '.join(str(s) for s in g.seeds)})"
        lines.append(_row([name, f"`{g.preset}`", seeds, epochs, fmt_duration(t_best),
                           *(fmt_metric(g.test(k)) for k in TEST_METRICS)]))
        pub = PUBLISHED.get(g.dataset)
        if pub is None:
            continue
        lines.append(_row([name, f"{pub.model} (published)", "", "", "",
                           *(f"{pub.metrics[k]:.4f}" if k in pub.metrics else DASH for k in TEST_METRICS)]))
        gaps = [100.0 * (statistics.fmean(g.test(k)) - v) / v for k, v in pub.metrics.items()]
        lines.append(_row([name, f"gap to {pub.model} (mean {statistics.fmean(gaps):+.1f}%)", "", "", "",
                           *(fmt_gap(statistics.fmean(g.test(k)), pub.metrics[k]) if k in pub.metrics else ""
                             for k in TEST_METRICS)]))
    return lines


def _commit(info: dict[str, Any]) -> str:
    c = info.get("git_commit")
    if not isinstance(c, str) or not c:
        return DASH
    return f"`{c[:10]}`" + (" (dirty)" if info.get("git_dirty") else "")


def _host(info: dict[str, Any]) -> str:
    host = info.get("host")
    if not isinstance(host, dict):
        return DASH
    parts = [str(host.get("cpu") or DASH)]
    if host.get("cpus"):
        parts[0] += f" ({host['cpus']} CPUs)"
    gpus = host.get("gpus") or []
    if gpus:
        parts.append(", ".join(sorted(set(map(str, gpus)))) + (f" x{len(gpus)}" if len(gpus) > 1 else ""))
    return _cell("; ".join(parts))


def runs_table(runs: Sequence[Run]) -> list[str]:
    head = ["Run", "Preset", "Seed", "Status", "Epochs run", "Epochs to best", "Time to best", "Elapsed to best",
            f"Valid {CURVE_METRIC}", f"Test {CURVE_METRIC}", "Commit", "Host", "Command"]
    lines = [_row(head), _row(["---"] * 3 + ["---"] + ["---:"] * 6 + ["---"] * 3)]
    for r in sort_runs(runs):
        t = r.timing
        valid = r.metrics[t.best_epoch]["valid"].get(CURVE_METRIC)
        test = r.final["test"][CURVE_METRIC] if r.final is not None else None
        cmd = r.info.get("command")
        lines.append(_row([
            f"`{r.dataset}/{r.name}`", f"`{r.preset}`", str(r.seed), "finished" if r.finished else "in progress",
            str(t.epochs_run), str(t.epochs_to_best), fmt_duration(t.time_to_best_s),
            fmt_duration(t.elapsed_to_best_s),
            DASH if valid is None else f"{float(valid):.4f}", DASH if test is None else f"{float(test):.4f}",
            _commit(r.info), _host(r.info), f"`{_cell(cmd)}`" if isinstance(cmd, str) and cmd else DASH,
        ]))
    return lines


def render_block(runs: Sequence[Run], png_link: str | None, results_name: str = "results") -> str:
    """The markdown between the README markers (no trailing newline)."""
    out = [f"<!-- generated by `fenrec report` from {results_name}/; edit those files, not this block -->"]
    if not runs:
        out += ["", f"No runs collected yet: see {results_name}/README.md."]
        return "\n".join(out)
    groups = group_runs(runs)
    out += ["", "Test metrics of each run's best-validation checkpoint (full ranking over the catalogue, "
                "leave-one-out): mean ± sample standard deviation over the seeds of a preset. Epochs to best: "
                "epochs trained up to and including the best checkpoint (early stopping and model selection on "
                f"validation {CURVE_METRIC}), per seed. Time to best: seconds of those epochs (training, "
                "clustering and validation; `time.epoch` of metrics.jsonl), mean over seeds; elapsed to best "
                "adds start-up and the pauses between a run's resumed starts. Published: the strongest baseline "
                f"per dataset, as the FENRec paper reports it; FENRec claims about {FENREC_CLAIMED_GAIN_PCT:g}% over it on average."]
    if groups:
        out += [""] + results_table(groups)
    else:
        out += ["", "No run has finished yet."]
    out += ["", "Runs (one per seed; a run in progress is listed here and drawn below, not averaged above):", ""]
    out += runs_table(runs)
    if png_link is not None:
        out += ["", f"![Validation {CURVE_METRIC} per epoch of every run]({png_link})"]
    return "\n".join(out)


def replace_block(text: str, block: str, where: Path | str) -> str:
    """``text`` with everything between the results markers replaced by ``block``."""
    nb, ne = text.count(BEGIN), text.count(END)
    if nb == 0 or ne == 0:
        raise ResultsError(f"{where}: no results block: add the lines {BEGIN} and {END} where the results "
                           f"table goes")
    if nb > 1 or ne > 1:
        raise ResultsError(f"{where}: {BEGIN} and {END} must each appear once (found {nb} and {ne})")
    i, j = text.index(BEGIN) + len(BEGIN), text.index(END)
    if j < i:
        raise ResultsError(f"{where}: {END} comes before {BEGIN}")
    return text[:i] + "\n" + block.rstrip("\n") + "\n" + text[j:]


# --------------------------------------------------------------------------- the PNG

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
_STYLES = ("-", "--", ":", "-.")


def render_png(runs: Sequence[Run]) -> bytes:
    """PNG bytes: validation NDCG@20 per epoch, one panel per dataset, one line per run (colour
    = preset, line style = seed), a dot at the best epoch. Same runs, same bytes."""
    import matplotlib
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    by_dataset: dict[str, list[Run]] = {}
    for r in sort_runs(runs):
        by_dataset.setdefault(r.dataset, []).append(r)
    with matplotlib.rc_context():
        matplotlib.style.use("default")  # no matplotlibrc of the machine changes the picture
        n = len(by_dataset)
        fig = Figure(figsize=(4.8 * n, 3.6), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, n, squeeze=False)[0]
        for ax, (dataset, members) in zip(axes, by_dataset.items()):
            presets = sorted({r.preset for r in members})
            seen: dict[str, int] = {}
            for r in members:
                k = seen.get(r.preset, 0)
                seen[r.preset] = k + 1
                color = _COLORS[presets.index(r.preset) % len(_COLORS)]
                xs, ys = zip(*r.curve()) if r.curve() else ((), ())
                label = f"{r.preset} seed {r.seed}" + ("" if r.finished else " (in progress)")
                ax.plot(xs, ys, color=color, linestyle=_STYLES[k % len(_STYLES)], linewidth=1.2, label=label)
                best = r.timing.best_epoch
                yb = r.metrics[best]["valid"].get(CURVE_METRIC)
                if yb is not None:
                    ax.plot([best], [float(yb)], marker="o", markersize=4, color=color)
            ax.set_title(dataset_name(dataset))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"valid {CURVE_METRIC}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class ReportOutput:
    readme_text: str
    png: bytes | None
    runs: int
    finished: int


def build(results: Path, readme: Path, png: Path) -> ReportOutput:
    """What ``fenrec report`` would write (nothing is written)."""
    runs = load_results(results)
    try:
        text = readme.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ResultsError(f"{readme}: missing") from exc
    link = Path(os.path.relpath(png, readme.parent)).as_posix() if runs else None
    block = render_block(runs, link, Path(results).name)
    return ReportOutput(replace_block(text, block, readme), render_png(runs) if runs else None, len(runs),
                        sum(r.finished for r in runs))


def report(results: str | Path = "results", readme: str | Path = "README.md", png: str | Path | None = None,
           check: bool = False, log=print) -> list[Path]:
    """Rewrite the README block and the PNG from ``results``; returns the files that changed
    (with ``check``: that would change, writing nothing)."""
    results, readme = Path(results), Path(readme)
    png = Path(png) if png is not None else results / "valid_curves.png"
    out = build(results, readme, png)
    changed: list[Path] = []
    if readme.read_text(encoding="utf-8") != out.readme_text:
        changed.append(readme)
        if not check:
            atomic_write_text(readme, out.readme_text)
    if out.png is not None and (not png.exists() or png.read_bytes() != out.png):
        changed.append(png)
        if not check:
            atomic_write_bytes(png, out.png)
    verb = "stale" if check else "rewritten"
    log(f"{out.runs} runs ({out.finished} finished) in {results}: "
        + (", ".join(f"{p} {verb}" for p in changed) if changed else "README block and PNG up to date"))
    return changed
