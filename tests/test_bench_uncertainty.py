"""bench/accuracy/test_uncertainty.py on saved test ranks: the paired difference of two runs over
the same users, exactly; two runs over different users refused with one line naming the file."""

import json
import subprocess
import sys

import numpy as np

from conftest import ROOT

SCRIPT = ROOT / "bench" / "accuracy" / "test_uncertainty.py"


def _ranks(path, users, ranks):
    np.savez(path, users=np.asarray(users, np.int32), ranks=np.asarray(ranks, np.int32),
             ks=np.asarray([5, 10, 20], np.int32))
    return path


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_paired_difference_over_the_same_users_is_exact(tmp_path):
    a = _ranks(tmp_path / "a.npz", [1, 2, 3, 4], [0, 4, 30, 9])
    b = _ranks(tmp_path / "b.npz", [1, 2, 3, 4], [0, 5, 1, 30])
    out = _run(a, "--compare", b, "--out", tmp_path / "paired.json")
    assert out.returncode == 0, out.stderr
    diff = json.loads((tmp_path / "paired.json").read_text())["compare"]["paired_difference_run_minus_compare"]
    # HR@5 per user: a [1, 1, 0, 0], b [1, 0, 1, 0] -> differences [0, 1, -1, 0]
    assert diff["HR@5"]["mean"] == 0.0
    assert diff["HR@5"]["standard_error"] == round(float(np.std([0, 1, -1, 0], ddof=1) / 2), 5)
    # HR@20: a [1, 1, 0, 1], b [1, 1, 1, 0] -> [0, 0, -1, 1]; MRR: 1/(r+1) differences
    assert diff["HR@20"]["mean"] == 0.0
    mrr = np.mean([0, 1 / 5 - 1 / 6, 1 / 31 - 1 / 2, 1 / 10 - 1 / 31])
    assert diff["MRR"]["mean"] == round(float(mrr), 5)


def test_different_test_users_are_refused_naming_the_file(tmp_path):
    a = _ranks(tmp_path / "a.npz", [1, 2, 3], [0, 4, 30])
    b = _ranks(tmp_path / "b.npz", [1, 2, 5], [0, 5, 1])
    out = _run(a, "--compare", b, "--out", tmp_path / "paired.json")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == f"{b}: not the same test users (or ks) as {a}; a paired difference needs both"
    assert not (tmp_path / "paired.json").exists()
