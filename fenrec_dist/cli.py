"""`fenrec`: the command line. A thin face over the package's functions."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fenrec_dist.cliutil import add_config_args as _add_config_args
from fenrec_dist.cliutil import run_reporting_errors
from fenrec_dist.config import ConfigError, apply_resume_overrides, describe, dump_yaml, load_config


def cmd_config(args: argparse.Namespace) -> int:
    if args.config or args.overrides:
        print(dump_yaml(load_config(args.config, args.overrides)), end="")
        return 0
    for key, tp, default, doc in describe():
        print(f"{key:<34} {tp:<22} {default!r:<28} {doc}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from fenrec_dist.data.synth import SynthConfig, write_synth

    cfg = SynthConfig(users=args.users, items=args.items, intents=args.intents, mean_length=args.mean_length,
                      seed=args.seed)
    summary = write_synth(cfg, args.out, fmt=args.format)
    print(json.dumps(summary))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from fenrec_dist.data.prepare import prepare

    t0 = time.perf_counter()
    m = prepare(
        args.input, args.out, fmt=args.format, max_len=args.max_len, horizon=args.horizon,
        min_interactions=args.min_interactions, k_core=args.k_core, user_col=args.user_col,
        item_col=args.item_col, time_col=args.time_col, num_shards=args.num_shards,
        row_group_size=args.row_group_size, overwrite=args.overwrite,
    )
    keys = ("users", "items", "interactions", "train_samples")
    print(f"prepared {args.out} in {time.perf_counter() - t0:.2f}s: " + ", ".join(f"{k}={m[k]:,}" for k in keys))
    if m.get("dropped"):
        print("dropped: " + ", ".join(f"{k}={v:,}" for k, v in m["dropped"].items()))
    return 0


def _finished_no_epoch(run_dir: Path) -> bool:
    """A run directory whose run stopped before its first epoch ended (a crash or a kill): its
    config.yaml and an empty log at most, nothing a new start would lose."""
    allowed = {"config.yaml", "metrics.jsonl", "tensorboard", "checkpoints"}
    entries = {p.name for p in run_dir.iterdir()}
    if not entries <= allowed:
        return False
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.read_text().strip():
        return False
    ckpt = run_dir / "checkpoints"
    return not (ckpt.exists() and any(ckpt.iterdir()))


def _check_resume_kind(run_dir: Path, local: bool) -> None:
    """A run resumes the way it was trained: a one-process run (RUN_DIR/checkpoints/) with
    --local, a Ray Train run (RUN_DIR/checkpoint_* directories) without. The other way round would
    start again from epoch 0 and overwrite the run's metrics.jsonl."""
    one_process = (run_dir / "checkpoints" / "last.pt").exists() or any(
        d.is_dir() for d in (run_dir / "checkpoints").glob("checkpoint_*"))
    ray_train = any(d.is_dir() for d in run_dir.glob("checkpoint_*"))
    if one_process and not local:
        raise ConfigError(f"{run_dir} was trained in one process (checkpoints/): resume it with --local "
                          f"(Ray Train workers would start it again from epoch 0)")
    if ray_train and local:
        raise ConfigError(f"{run_dir} was trained by Ray Train workers (its checkpoint_* directories): resume it "
                          f"without --local")


def cmd_train(args: argparse.Namespace) -> int:
    from fenrec_dist.train.checkpoint import atomic_write_text
    from fenrec_dist.train.runlock import ensure_idle
    from fenrec_dist.train.local import load_run_config

    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its saved config; drop --config")
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"{run_dir} holds no run (config.yaml missing)")
        ensure_idle(run_dir)  # before a --set rewrites config.yaml under a running process
        _check_resume_kind(run_dir, args.local)
        cfg = load_run_config(run_dir)
        changes = apply_resume_overrides(cfg, args.overrides)
        if changes:  # the run directory keeps describing how the run goes on
            atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
            for key, old, new in changes:
                print(f"resume: {key} {old!r} -> {new!r} (saved to {run_dir / 'config.yaml'})", file=sys.stderr)
    else:
        cfg = load_config(args.config, args.overrides)
        if not args.local and not args.out and cfg.distributed.name:
            # distributed.storage_path/distributed.name, as ray_job.py: the same command again
            # resumes from the newest complete checkpoint in that storage (its first line says so)
            from fenrec_dist.distributed.driver import run_distributed

            print(json.dumps(run_distributed(cfg, None, address=args.address)["test"]))
            return 0
        run_dir = Path(args.out) if args.out else Path("runs") / f"{Path(args.config or 'default').stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "config.yaml").exists():
            if not _finished_no_epoch(run_dir):
                raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
            print(f"note: {run_dir} holds a run that finished no epoch (it stopped before its first epoch "
                  f"ended); starting it again with this config", file=sys.stderr)
    if args.local:
        from fenrec_dist.train.local import train_local

        try:
            final = train_local(cfg, run_dir, resume=bool(args.resume))
        except KeyboardInterrupt:
            print(f"interrupted: {run_dir} keeps every finished epoch (checkpoints/, metrics.jsonl). "
                  f"Continue with: fenrec train --resume {run_dir} --local; test the best so far with: "
                  f"fenrec evaluate {run_dir}", file=sys.stderr)
            return 130
    else:
        from fenrec_dist.distributed.driver import run_distributed

        final = run_distributed(cfg, run_dir, address=args.address)
    print(json.dumps(final["test"]))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fenrec_dist.train.local import evaluate_run

    final = evaluate_run(Path(args.run_dir))
    print(json.dumps(final, indent=2))
    return 0


def cmd_negatives_inspect(args: argparse.Namespace) -> int:
    from fenrec_dist.negatives.inspect import format_report, inspect_run, plot_report

    if args.items:
        from fenrec_dist.negatives.inspect import format_item_report, item_negatives
        from fenrec_dist.train.local import load_run_config

        run_dir = Path(args.run_dir)
        cfg = load_run_config(run_dir)
        state, best_epoch, _ = _best_weights(run_dir)
        report = {"run_dir": str(run_dir), "best_epoch": best_epoch,
                  **item_negatives(state, cfg, samples=args.items_samples, mined=args.items_k, seed=cfg.train.seed)}
        print(json.dumps(report, indent=2) if args.json else format_item_report(report))
        return 0

    report = inspect_run(args.run_dir, epoch=args.epoch, user=args.user, sample=args.sample)
    if args.plot:
        plot_report(report, args.plot)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.plot and not args.json:
        print(f"plot: {args.plot}")
    return 0


def _best_weights(run_dir: Path):  # type: ignore[no-untyped-def]
    """(state dict, best epoch, extra) of a run's best weights: the one place the serving commands
    read the trainer's checkpoint layout."""
    from fenrec_dist.train.local import best_weights

    return best_weights(run_dir, "cpu")


def cmd_export(args: argparse.Namespace) -> int:
    from fenrec_dist.serve.export import export_run
    from fenrec_dist.train.local import load_run_config

    run_dir = Path(args.run_dir)
    cfg = load_run_config(run_dir)
    data_dir = Path(args.data or cfg.data.path)
    if not data_dir.is_dir():
        raise ConfigError(f"{run_dir}: its data.path {data_dir} is not a directory here; pass --data DIR (the prepared "
                          f"dataset the run trained on)")
    state, best_epoch, extra = _best_weights(run_dir)
    m = export_run(state, cfg, data_dir, args.out, overwrite=args.overwrite,
                   source={"run_dir": str(run_dir), "best_epoch": best_epoch, **extra})
    print(f"exported {run_dir} (best epoch {best_epoch}) to {args.out}: {m['num_items']:,} items, d={m['dim']}, "
          f"index {m['index']['kind']} ({m['index']['build_seconds']:.2f}s), ids {m['ids']}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from fenrec_dist.serve.recommend import Recommender, recommend_file, recommend_history

    if (args.history is None) == (args.input is None):
        raise ConfigError("recommend: give either --history \"i1 i2 ...\" or --input FILE.parquet --out FILE.parquet")
    if args.input is not None and not args.out:
        raise ConfigError("recommend: --input needs --out FILE.parquet")
    if args.k < 1:
        raise ConfigError(f"recommend: --k must be >= 1, got {args.k}")
    rec = Recommender(args.export_dir)
    if args.history is not None:
        print(json.dumps(recommend_history(rec, args.history, args.k, args.ann, args.skip_unknown)))
        return 0
    t0 = time.perf_counter()
    counts = recommend_file(rec, args.input, args.out, args.k, args.ann, args.skip_unknown, args.batch_size)
    secs = time.perf_counter() - t0
    print(json.dumps({"out": args.out, **counts.as_dict(), "seconds": round(secs, 3),
                      "users_per_s": round(counts.rows / max(secs, 1e-9), 1)}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fenrec_dist.demo import run_demo

    run_demo(args.workdir, args.config, args.overrides, local=args.local)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fenrec", description="Train FENRec sequential recommenders.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("config", help="print the documented config keys, or a resolved config")
    _add_config_args(p)
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("synth", help="write a seeded synthetic interaction log")
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--intents", type=int, default=10)
    p.add_argument("--mean-length", type=float, default=12.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["seq", "csv"], default="csv")
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("prepare", help="interaction log -> sharded Parquet training data")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--format", default="auto", choices=["auto", "seq", "csv", "tsv", "parquet", "amazon-json"])
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--horizon", type=int, default=2)
    p.add_argument("--min-interactions", type=int, default=3)
    p.add_argument("--k-core", type=int, default=0)
    p.add_argument("--user-col", default="user")
    p.add_argument("--item-col", default="item")
    p.add_argument("--time-col", default="timestamp")
    p.add_argument("--num-shards", type=int, default=32,
                   help="training shards, partitioned by target item; the most Ray workers a run can use")
    p.add_argument("--row-group-size", type=int, default=16384)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("train", help="train a model (Ray Train workers; --local for one process without Ray)")
    _add_config_args(p)
    p.add_argument("--out", help="run directory (default runs/<config>-<time>; on Ray with distributed.name set: "
                                 "distributed.storage_path/distributed.name, and the same command again resumes)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint with its saved config; --set may "
                        "change only how it runs (train.threads, train.device, train.epochs, ...: "
                        "fenrec_dist.config.RESUME_KEYS)")
    p.add_argument("--local", action="store_true", help="train in this process, without Ray or DeepSpeed")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("demo", help="synthetic data -> 2 Ray workers -> test metrics beside baselines")
    _add_config_args(p)
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--local", action="store_true", help="one process, without Ray")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("negatives", help="inspect the FAISS negative index of a run")
    nsub = p.add_subparsers(dest="negatives_cmd", required=True)
    q = nsub.add_parser("inspect", help="negative quality per epoch; one sample's or user's neighbours")
    q.add_argument("run_dir")
    q.add_argument("--epoch", type=int, help="epoch to detail (default: the newest saved)")
    who = q.add_mutually_exclusive_group()
    who.add_argument("--user", type=int, help="list the neighbours of this user's samples")
    who.add_argument("--sample", type=int, help="list the neighbours of this sample")
    q.add_argument("--plot", metavar="FILE.png", help="draw the per-epoch figures as a PNG")
    q.add_argument("--json", action="store_true", help="print the report as JSON (fields: see the module docs)")
    q.add_argument("--items", action="store_true",
                   help="the sampled L_rec's item negatives instead: hardness of in-batch, random and mined items "
                        "for the run's best weights, and how often they are the user's held-out item")
    q.add_argument("--items-samples", type=int, default=2048, help="training samples scored with --items")
    q.add_argument("--items-k", type=int, default=0, help="mined items per sample (0: loss.sampled_mined, else 64)")
    q.set_defaults(fn=cmd_negatives_inspect)

    p = sub.add_parser("export", help="a run's best weights -> encoder, item embeddings, item index, id map")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="export directory (written atomically)")
    p.add_argument("--data", help="the prepared dataset of the run (default: the run's data.path)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("recommend", help="top-k items for histories from an export directory")
    p.add_argument("export_dir")
    p.add_argument("--history", help='one history: "i1 i2 ..." (original item ids, oldest first)')
    p.add_argument("--input", help="Parquet file: column history (list of ids or a space-separated string), "
                                   "optional user")
    p.add_argument("--out", help="Parquet output of --input (columns user, items, scores; written atomically)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--ann", action="store_true", help="rank with the item index instead of every item")
    p.add_argument("--skip-unknown", action="store_true",
                   help="drop unknown item ids (and skip rows left empty or malformed), counting them")
    p.add_argument("--batch-size", type=int, default=1024)
    p.set_defaults(fn=cmd_recommend)

    p = sub.add_parser("evaluate", help="re-score a run's best checkpoint on validation and test")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_evaluate)

    from fenrec_dist.tune.cli import add_parser as add_tune_parser

    add_tune_parser(sub)
    from fenrec_dist.results.cli import add_parsers as add_results_parsers

    add_results_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors("fenrec", lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
