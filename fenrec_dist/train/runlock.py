"""One training process per run directory.

Two processes training the same run directory (a second ``fenrec train --resume RUN`` while
the first still runs) would interleave their ``metrics.jsonl`` lines and overwrite each
other's checkpoints. :func:`run_lock` holds an exclusive ``flock`` on ``RUN_DIR/.fenrec.lock``
while a run trains; the file names the holder (pid and host) for the error message. The
operating system drops the lock when its process ends, however it ends, so a crash or a
SIGKILL leaves no stale lock to clean up. Where ``fcntl`` is missing (Windows) the lock is
not taken.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

from fenrec_dist.data.errors import DataError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".fenrec.lock"


class RunInUseError(DataError):
    """The run directory is being trained by another process."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock for the block; :class:`RunInUseError` naming the holder
    when another process (or another ``run_lock`` of this one) holds it. ``run_dir`` must exist."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
            raise RunInUseError(f"{run_dir} is being trained by another process ({holder}); wait for it to "
                                f"end or stop it, then resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_idle(run_dir: str | Path) -> None:
    """Raise :class:`RunInUseError` when a process trains ``run_dir`` now (checked before a
    resume rewrites its config.yaml); nothing when the directory does not exist."""
    if Path(run_dir).is_dir():
        with run_lock(run_dir):
            pass
