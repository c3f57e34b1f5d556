"""`fenrec tune`: a thin face over ``fenrec_dist.tune.sweep.run_sweep``."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_tune(args: argparse.Namespace) -> int:
    import sys

    from fenrec_dist.tune.sweep import SweepInterrupted, run_sweep

    try:
        run_sweep(config_path=args.config, space_path=args.space, overrides=args.overrides, out=args.out,
                  trials=args.trials, max_concurrent=args.max_concurrent, resume=args.resume, address=args.address)
    except SweepInterrupted as exc:
        print(f"fenrec: {exc}", file=sys.stderr)
        return 130
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fenrec tune`` on the ``fenrec`` sub-command parsers."""
    from fenrec_dist.cliutil import add_config_args as _add_config_args

    p = subparsers.add_parser(
        "tune", help="Ray Tune sweep: one TorchTrainer per trial, ASHA, results table + best.yaml",
        description="Sweep the hyperparameters named in a space file (tune_spaces/*.yaml). Writes trials.csv, "
                    "trials.md, best.yaml (fenrec train --config accepts it) and params.png to the sweep directory.")
    _add_config_args(p)
    p.add_argument("--space", help="search-space YAML (tune_spaces/*.yaml)")
    p.add_argument("--trials", type=int, help="number of samples (overrides the space's num_samples; "
                                              "for search: grid, repeats of the grid)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: derived from the resources)")
    p.add_argument("--out", help="sweep directory (default runs/tune-<space>-<time>); an existing one "
                                 "holding the same sweep is resumed")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep with its saved space and config")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)")
    p.set_defaults(fn=cmd_tune)
    return p
