"""Run a benchmark script on another revision's code, for before/after figures from one run."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


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
    """Run this checkout's ``bench/<script>`` on ``rev``'s package and return its JSON result.

    ``rev`` is checked out in a temporary ``git worktree`` (removed afterwards) that is put first
    on PYTHONPATH (Ray's workers inherit it); the current ``script`` and ``_result.py`` are
    copied in, since older revisions may lack them. ``config``, when it lies inside this
    checkout, is replaced by the revision's own copy where the revision has one. ``args`` must
    not contain ``--out`` or ``--config``.
    """
    with revision_tree(rev) as tree, tempfile.TemporaryDirectory() as tmp:
        (tree / "bench").mkdir(exist_ok=True)
        for name in (script, "_result.py", "_baseline.py"):
            (tree / "bench" / name).write_text((ROOT / "bench" / name).read_text())
        extra: list[str] = []
        if config is not None:
            cfg = Path(config).resolve()
            if cfg.is_relative_to(ROOT) and (tree / cfg.relative_to(ROOT)).exists():
                cfg = tree / cfg.relative_to(ROOT)  # the revision's own config
            extra = ["--config", str(cfg)]
        out = Path(tmp) / "baseline.json"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, str(tree / "bench" / script), *args, *extra, "--out", str(out)],
                       check=True, env=env, cwd=tree)
        return json.loads(out.read_text())
