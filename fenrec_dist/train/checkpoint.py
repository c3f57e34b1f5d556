"""Atomic, pickle-free checkpoints (torch.save + weights_only=True loads)."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from fenrec_dist.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)
from fenrec_dist.data.errors import DataError, first_line


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` to ``path`` via a temp file, fsync and rename (never half-written,
    also across a power loss: the bytes are on disk before the new name points at them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CheckpointError(DataError):
    """A checkpoint that is missing, unreadable, or not one ``save_state`` wrote."""


class StorageError(DataError):
    """Run storage (a run directory, ``distributed.storage_path``) that cannot be written or
    read: one line naming the path; the checkpoints written before are left as they were."""


def load_state(path: Path, map_location: str | torch.device = "cpu",
               keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint written by ``save_state`` without unpickling arbitrary objects
    (``weights_only=True``). A missing, truncated or foreign file, one holding other Python
    objects, or one lacking any of ``keys`` raises :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint missing")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format; anything else is not a checkpoint
        if not zipped:
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint (not a torch.save file)") from exc
        # weights_only refused an object: name it (torch's text also suggests weights_only=False: never here)
        what = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        what = what[what.find("Unsupported global"):].split(" was not an allowed")[0] if what else ""
        raise CheckpointError(f"{path}: not loaded: it holds Python objects other than tensors and plain "
                              f"containers, which are never unpickled" + (f" ({what})" if what else "")) from exc
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a fenrec checkpoint (holds a {type(state).__name__}, not a dict)")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a fenrec checkpoint of this kind (missing {', '.join(missing)})")
    return state


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"].cpu())  # a checkpoint loaded with map_location=cuda moves it
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])
