"""What every command-line face shares (``fenrec``, ``fenrec tune``, ``ray_job.py``): the config
arguments and the rule that a bad config or bad data ends in one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable

from fenrec_dist.config import ConfigError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML run config (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.lr=0.0005 (repeatable)")


def run_reporting_errors(prog: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; a ConfigError or DataError becomes one clear line on stderr and exit 2.

    A reader that closes the pipe early (``fenrec config | head``) ends the command quietly
    with exit 141, as a shell tool killed by SIGPIPE does, instead of a traceback.
    """
    from fenrec_dist.data.errors import DataError

    try:
        return int(fn() or 0)
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
