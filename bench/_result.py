"""What every benchmark ends with: its result written atomically, with its provenance.

``write_result(out, result)`` writes a JSON result with a ``provenance`` object that the
running script records about itself (``provenance()``): the command line, the git commit and
whether the tree had uncommitted changes, the CPU model and core count, the versions of
Python, torch, Ray, FAISS, NumPy, DeepSpeed and PyArrow, the threading environment
(``OMP_*``, ``MKL_*``, ``OPENBLAS_*``, ``KMP_*``, ``GOMP_*``) and the UTC date.
``write_text(out, text)`` does the same for a table, CSV or figure that is not JSON: the
provenance goes into the sidecar ``<out>.provenance.json``. ``bench/index.py`` lists every
result with it.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent  # bench/ of the checkout (or baseline worktree) that runs
SIDECAR = ".provenance.json"
ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_")
ENV_NAMES = ("DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES", "RAY_worker_niceness", "PYTHONHASHSEED")
PACKAGES = {"torch": ("torch",), "ray": ("ray",), "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu", "faiss"),
            "numpy": ("numpy",), "deepspeed": ("deepspeed",), "pyarrow": ("pyarrow",)}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    torch = sys.modules.get("torch")  # only when the benchmark imported it: no import cost here
    try:
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - provenance must never fail a benchmark
        return None
    return None


def _command() -> list[str]:
    argv = list(sys.argv)
    if argv and argv[0]:
        script = Path(argv[0]).resolve()
        root = HERE.parent
        argv[0] = str(script.relative_to(root)) if script.is_relative_to(root) else argv[0]
    return argv


def provenance() -> dict[str, Any]:
    """What ran, where and on what: recorded by the running script itself."""
    argv = _command()
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "command": shlex.join(["python", *argv]),
        "script": argv[0] if argv else None,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
                "machine": platform.machine()},
        "gpu": _gpu(),
        "python": platform.python_version(),
        "versions": {k: _version(v) for k, v in PACKAGES.items()},
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES) or k in ENV_NAMES},
    }


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sidecar(path: str | Path) -> Path:
    """Where the provenance of a result that is not JSON (a table, a CSV, a PNG) is kept."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR)


def write_result(out: str | Path, result: dict[str, Any], echo: bool = True) -> int:
    """Write ``result`` with its ``provenance`` to ``out`` as JSON (temp file + rename, so a
    killed run leaves the old file); print it when ``echo``. Returns 0, the script's exit status."""
    body = {**result, "provenance": result.get("provenance") or provenance()}
    text = json.dumps(body, indent=2, default=str) + "\n"
    _atomic_write(Path(out), text.encode())
    if echo:
        print(text, end="")
    return 0


def write_text(out: str | Path, text: str | bytes) -> Path:
    """Write a non-JSON result (atomically) and its provenance sidecar; returns the sidecar."""
    _atomic_write(Path(out), text.encode() if isinstance(text, str) else text)
    return write_sidecar(out)


def write_sidecar(out: str | Path) -> Path:
    """Record the provenance of ``out``, a file the script has just written (a figure)."""
    side = sidecar(out)
    _atomic_write(side, (json.dumps({"file": Path(out).name, "provenance": provenance()}, indent=2) + "\n").encode())
    return side


class _Tee:
    def __init__(self, *streams) -> None:  # type: ignore[no-untyped-def]
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def tee_to(out: str | Path | None) -> Iterator[None]:
    """Print as usual and, when ``out`` is given, also write what was printed to ``out`` with
    its provenance sidecar (for reports that are read as printed tables)."""
    if out is None:
        yield
        return
    buf = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buf)):
        yield
    write_text(out, buf.getvalue())
