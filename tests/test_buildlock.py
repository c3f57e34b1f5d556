"""Stale build locks of DeepSpeed's CPU op: removed only when no process holds them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fenrec_dist.distributed.buildlock import SHM_OP, build_directory, clear_stale_build_lock, holders

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


@pytest.fixture
def ext_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    return tmp_path / "ext"


def _lock(age_s: float) -> Path:
    lock = build_directory(SHM_OP) / "lock"
    lock.touch()
    t = time.time() - age_s
    os.utime(lock, (t, t))
    return lock


def test_build_directory_follows_torch_extensions_dir(ext_root):
    assert build_directory(SHM_OP) == ext_root / SHM_OP and (ext_root / SHM_OP).is_dir()


def test_a_lock_left_by_an_interrupted_build_is_removed(ext_root):
    lock = _lock(age_s=3 * 3600)
    lines: list[str] = []
    assert clear_stale_build_lock(log=lines.append) is True
    assert not lock.exists()
    assert len(lines) == 1 and f"removed {lock}" in lines[0] and "180 min ago" in lines[0], lines
    assert clear_stale_build_lock(log=lines.append) is False and len(lines) == 1  # nothing left to do


def test_a_lock_held_by_a_running_build_or_just_made_is_kept(ext_root):
    lock = _lock(age_s=3 * 3600)
    # a builder keeps the lock's descriptor open for the whole build (torch's FileBaton)
    proc = subprocess.Popen([sys.executable, "-c", "import os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
                             "print('open', flush=True)\ntime.sleep(60)\n", str(lock)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        assert holders(lock) == [proc.pid]
        lines: list[str] = []
        assert clear_stale_build_lock(log=lines.append) is False
        assert lock.exists() and f"pid {proc.pid}" in lines[0] and "waiting for it" in lines[0]
    finally:
        proc.kill()
        proc.wait()
    assert holders(lock) == []
    young = _lock(age_s=5)  # no holder yet, but just created: left alone
    assert clear_stale_build_lock(min_age_s=60, log=lambda *_: None) is False and young.exists()
    assert clear_stale_build_lock(min_age_s=1, log=lambda *_: None) is True and not young.exists()


def test_no_lock_is_nothing_to_do(ext_root):
    lines: list[str] = []
    assert clear_stale_build_lock(log=lines.append) is False and lines == []
