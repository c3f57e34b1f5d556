"""Time a baseline revision in the same run as this checkout: the one helper every A/B uses.

Three ways to get a revision's code, for three kinds of benchmark:

- ``revision_tree(rev)``: a temporary ``git worktree`` of ``rev``; run a subprocess from it with
  it first on ``PYTHONPATH`` (Ray's workers inherit it), for scripts that start their own
  processes (``scale/bench_prepare.py``).
- ``run_at_revision(rev, script, args)``: run this checkout's ``bench/<script>`` on ``rev``'s
  package in such a worktree and return its JSON result (``epoch/bench_epoch.py``,
  ``scale/bench_epoch_workers.py``).
- ``revision_package(rev, dest)``: ``rev``'s package importable as ``fenrec_dist_base`` beside
  this checkout's ``fenrec_dist`` in one process, for interleaved step-by-step timing
  (``micro/bench_step.py``, ``micro/bench_parts.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@contextlib.contextmanager
def revision_tree(rev: str) -> Iterator[Path]:
    """A temporary ``git worktree`` of ``rev`` (removed on exit): put it first on PYTHONPATH,
    and run from it, to import that revision's package."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                       check=True, capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                           capture_output=True)


def run_at_revision(rev: str, script: str, args: list[str], config: str | None = None) -> dict:
    """Run this checkout's ``bench/<script>`` (e.g. ``epoch/bench_epoch.py``) on ``rev``'s
    package and return its JSON result.

    ``rev`` is checked out in a temporary ``git worktree`` (removed afterwards) that is put first
    on PYTHONPATH (Ray's workers inherit it); the current ``script`` and the ``bench/_*.py``
    helpers are copied in, since older revisions may lack them. ``config``, when it lies inside
    this checkout, is replaced by the revision's own copy where the revision has one. ``args``
    must not contain ``--out`` or ``--config``. The result's provenance names ``rev``'s commit
    (dirty, since the script was copied in).
    """
    with revision_tree(rev) as tree, tempfile.TemporaryDirectory() as tmp:
        (tree / "bench").mkdir(exist_ok=True)
        for helper in BENCH.glob("_*.py"):
            (tree / "bench" / helper.name).write_text(helper.read_text())
        target = tree / "bench" / script
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((BENCH / script).read_text())
        extra: list[str] = []
        if config is not None:
            cfg = Path(config).resolve()
            if cfg.is_relative_to(ROOT) and (tree / cfg.relative_to(ROOT)).exists():
                cfg = tree / cfg.relative_to(ROOT)  # the revision's own config
            extra = ["--config", str(cfg)]
        out = Path(tmp) / "baseline.json"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, str(target), *args, *extra, "--out", str(out)], check=True, env=env, cwd=tree)
        return json.loads(out.read_text())


def revision_package(rev: str, dest: Path) -> None:
    """``rev``'s fenrec_dist as the importable package ``fenrec_dist_base`` under ``dest`` (put
    ``dest`` on ``sys.path``): both versions then run in one process, interleaved."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fenrec_dist"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    pkg = dest / "fenrec_dist"
    for f in pkg.rglob("*.py"):
        f.write_text(re.sub(r"\bfenrec_dist\b", "fenrec_dist_base", f.read_text()))
    pkg.rename(dest / "fenrec_dist_base")
