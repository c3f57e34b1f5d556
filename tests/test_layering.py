"""One direction of imports: import-linter's contracts in pyproject.toml hold, and they are
strict enough to catch an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_package_keeps_its_import_contracts():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_a_contract(tmp_path):
    """A copy of the package where the model imports the trainer and a loss imports Ray."""
    shutil.copytree(ROOT / "fenrec_dist", tmp_path / "fenrec_dist", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "fenrec_dist" / "model" / "base.py", "a") as f:
        f.write("\nfrom fenrec_dist.train import trainer  # noqa\n")
    res = _lint(tmp_path)
    assert res.returncode != 0 and "broken" in res.stdout, res.stdout
    assert "fenrec_dist.model.base -> fenrec_dist.train.trainer" in res.stdout, res.stdout
