"""The ``fenrec results collect|restore`` and ``fenrec report`` subcommands (parsers and handlers)."""

from __future__ import annotations

import argparse


def cmd_results_collect(args: argparse.Namespace) -> int:
    from fenrec_dist.results.collect import collect

    collect(args.run_dir, args.results, args.dataset, args.name, preset=args.preset, command=args.command,
            commit=args.commit, checkpoint=args.checkpoint)
    return 0


def cmd_results_restore(args: argparse.Namespace) -> int:
    from fenrec_dist.results.collect import restore

    restore(args.result_dir, args.to)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fenrec_dist.results.report import report

    changed = report(args.results, args.readme, args.png, check=args.check)
    return 1 if args.check and changed else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="keep runs in the repository: collect a run into results/, restore one")
    rsub = p.add_subparsers(dest="results_cmd", required=True)
    q = rsub.add_parser("collect", help="copy a run directory's small files (and --checkpoint) to "
                                        "RESULTS/DATASET/NAME with a run.json")
    q.add_argument("run_dir", help="run directory made by `fenrec train` (runs/...)")
    q.add_argument("--dataset", required=True, help="dataset folder under RESULTS (beauty, sports, toys, yelp)")
    q.add_argument("--name", required=True, help="run folder name, e.g. fast-s1")
    q.add_argument("--preset", help="the name that groups this run with its other seeds (default: --name less a "
                                    "trailing -s<seed>, e.g. fast-s1 -> fast)")
    q.add_argument("--command", help="the command that made the run (default: an equivalent one, reconstructed "
                                     "from its config.yaml)")
    q.add_argument("--commit", help="the git commit that trained it (default: this checkout's HEAD and dirty flag)")
    q.add_argument("--checkpoint", action="store_true",
                   help="also copy the run's checkpoints, so that the run in progress resumes elsewhere "
                        "(collect again without it when the run has finished)")
    q.add_argument("--results", default="results", help="results folder (default results)")
    q.set_defaults(fn=cmd_results_collect)
    q = rsub.add_parser("restore", help="copy a collected run in progress back to a run directory to resume")
    q.add_argument("result_dir", help="results/DATASET/NAME")
    q.add_argument("--to", required=True, help="new run directory (then: fenrec train --resume DIR --local)")
    q.set_defaults(fn=cmd_results_restore)

    p = sub.add_parser("report", help="rewrite the README results block and the validation-curve PNG from results/")
    p.add_argument("--results", default="results", help="results folder (default results)")
    p.add_argument("--readme", default="README.md",
                   help="markdown file whose block between <!-- results:begin --> and <!-- results:end --> is "
                        "replaced (default README.md)")
    p.add_argument("--png", help="validation-curve PNG (default RESULTS/valid_curves.png)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when the README block or PNG is stale")
    p.set_defaults(fn=cmd_report)
