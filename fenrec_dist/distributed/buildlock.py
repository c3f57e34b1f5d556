"""Stale build locks of PyTorch C++ extensions (DeepSpeed's CPU communication op).

On CPU, DeepSpeed compiles ``deepspeed_shm_comm`` on a worker's first start
(``torch.utils.cpp_extension.load``). The builder creates ``BUILD_DIR/lock`` and deletes it
when the build ends; a build that is killed (Ctrl-C during a first run, a worker lost to
SIGKILL, a timeout) leaves the file behind, and every later start waits on it forever with
no message (torch's ``FileBaton.wait``). :func:`clear_stale_build_lock` runs before DeepSpeed
initialises: a lock that no process on this host holds open (the builder keeps the file's
descriptor open for the whole build) and that is older than ``min_age_s`` is removed, with
a line saying so; a lock that a process holds is left to its build.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

SHM_OP = "deepspeed_shm_comm"
NO_PROC_MIN_AGE_S = 1800.0  # without /proc (macOS) a lock is stale only when this old


def build_directory(name: str) -> Path:
    """Where ``torch.utils.cpp_extension.load(name=...)`` builds (TORCH_EXTENSIONS_DIR or
    torch's default root); the directory is created when missing, as torch does."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def holders(path: Path, proc: Path = Path("/proc")) -> list[int] | None:
    """PIDs of this host's processes with ``path`` open; None when /proc is not available."""
    if not (proc / "self" / "fd").is_dir():
        return None
    target = str(path.resolve())
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # another user's process, or it just ended
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return found


def clear_stale_build_lock(name: str = SHM_OP, min_age_s: float = 60.0,
                           log: Callable[[str], None] = print) -> bool:
    """Remove ``name``'s build lock when it is stale (see the module doc); True if removed."""
    lock = build_directory(name) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    held = holders(lock)
    if held:
        log(f"[fenrec] {lock}: another process (pid {', '.join(map(str, held))}) is building {name}; waiting for it")
        return False
    if age < (min_age_s if held is not None else NO_PROC_MIN_AGE_S):
        return False
    try:
        lock.unlink()
    except FileNotFoundError:  # its build just ended
        return False
    log(f"[fenrec] removed {lock}, a build lock of {name} left {age / 60:.0f} min ago by a build that was "
        f"interrupted (no process holds it); building the op again")
    return True
