"""One checkpoint layout for every runtime.

A checkpoint is a directory ``checkpoint_NNNNNN`` (NNNNNN: the epochs finished) holding

    state.pt        rank 0: model, optimizer (torch engines), early_stopping, epoch (the next
                    epoch to run), world_size, deepspeed (bool), format
    best.pt         rank 0: the best weights so far (model) and their epoch
    rng_rankR.pt    every rank R: its torch (and CUDA) generator state
    record.json     rank 0: the epoch's metrics record (metrics.jsonl's line)
    deepspeed/      DeepSpeed's own state (every rank's part, ZeRO shards included), only when
                    DeepSpeed is on
    manifest_rankR.json  every rank R, written last: each file R wrote (its rng, rank 0's state,
                    best and record, R's DeepSpeed files) -> size and sha256

A checkpoint is complete when every rank's manifest is there and each file it lists has its
size and checksum: a directory some rank never finished uploading, or whose files were cut
short or changed, is skipped by resume (``scan`` names it). Each rank writes its files and
manifest into a directory of its own (the Ray runtime's temp directory, which Ray merges into
the storage's; the one process's own). Checkpoints written before manifests (format 2) are
still complete when rank 0's files and every rank's RNG are there.

A one-process run keeps its checkpoints in ``RUN_DIR/checkpoints/``; Ray Train keeps them
as ``checkpoint_*`` directories of its run in ``distributed.storage_path`` (``RUN_DIR``
itself for local storage). Resume and ``fenrec evaluate`` read both the same way.
Run directories of the earlier one-process layout (``checkpoints/last.pt`` and
``best.pt``) are converted on first use; the earlier Ray Train layout (``client_state.pt``)
can be evaluated, not resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs
import torch

from fenrec_dist.data.prepare import sha256_file
from fenrec_dist.train.checkpoint import CheckpointError, atomic_write_json, load_state, save_state

FORMAT = 3  # 3: with manifests (2: without, still resumed)
PREFIX = "checkpoint_"
STATE, BEST, RECORD, DEEPSPEED = "state.pt", "best.pt", "record.json", "deepspeed"


def rng_name(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def manifest_name(rank: int) -> str:
    return f"manifest_rank{rank}.json"


def write_manifest(d: Path, rank: int) -> None:
    """Write ``manifest_rankR.json``: every file under ``d`` (this rank's own directory) but
    manifests -> {size, sha256}. Called last, after the rank's files (DeepSpeed's included)."""
    files = {}
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        rel = f.relative_to(d).as_posix()
        if not rel.startswith("manifest_rank"):
            files[rel] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    atomic_write_json(d / manifest_name(rank), {"rank": rank, "files": files})


def manifest_reason(d: Path, rank: int, checksums: bool = True) -> str | None:
    """Why rank ``rank``'s files in ``d`` are not all there as its manifest lists them (missing,
    another size, another sha256 when ``checksums``), or None."""
    p = d / manifest_name(rank)
    if not p.is_file():
        return f"{p}: missing (rank {rank} did not finish writing this checkpoint)"
    try:
        files = json.loads(p.read_text())["files"]
        listed = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{p}: unreadable manifest ({type(exc).__name__})"
    for rel, (size, digest) in listed.items():
        f = d / rel
        if not f.is_file():
            return f"{f}: missing (listed in {p.name})"
        if f.stat().st_size != size:
            return f"{f}: {f.stat().st_size} bytes, {p.name} lists {size} (cut short or changed)"
        if checksums and sha256_file(f) != digest:
            return f"{f}: sha256 differs from {p.name} (corrupt or changed)"
    return None


def checkpoint_name(epochs_done: int) -> str:
    return f"{PREFIX}{epochs_done:06d}"


def write_rank_files(d: Path, rank: int, rng: dict[str, Any], state: dict[str, Any] | None = None,
                     best: dict[str, Any] | None = None, record: dict[str, Any] | None = None) -> None:
    """Write one rank's files into the checkpoint directory ``d`` (rank 0 passes state, best
    and record; every rank its RNG). Each file is written atomically."""
    d.mkdir(parents=True, exist_ok=True)
    save_state(d / rng_name(rank), rng)
    if state is not None:
        save_state(d / STATE, {**state, "format": FORMAT})
    if best is not None:
        save_state(d / BEST, best)
    if record is not None:
        atomic_write_json(d / RECORD, record)


def incomplete_reason(d: Path, checksums: bool = True) -> str | None:
    """Why ``d`` is not a complete checkpoint, or None when it is: rank 0's state and best
    weights loadable, and every rank's manifest with its files of the listed sizes (and
    checksums, when ``checksums``); a format-2 checkpoint needs every rank's RNG file."""
    for name in (STATE, BEST):
        if not (d / name).is_file():
            return f"{d / name}: missing"
    if checksums and (d / manifest_name(0)).is_file() and (why := manifest_reason(d, 0)) is not None:
        return why  # state.pt's bytes checked before it is loaded
    try:
        state = load_state(d / STATE, keys=("world_size", "epoch"))
    except CheckpointError as exc:
        return str(exc)
    world = int(state["world_size"])
    if int(state.get("format", 2)) < 3:  # written before manifests
        missing = [rng_name(r) for r in range(world) if not (d / rng_name(r)).is_file()]
        return f"{d}: missing {', '.join(missing)}" if missing else None
    for r in range(world):
        why = manifest_reason(d, r, checksums)
        if why is not None:
            return why
    return None


def checkpoint_epoch(d: Path) -> int:
    """Epochs finished by the checkpoint ``d`` (its state's ``epoch``)."""
    return int(load_state(d / STATE, keys=("epoch",))["epoch"])


def candidates(run_dir: Path) -> list[Path]:
    """Every checkpoint directory of a run: ``checkpoints/checkpoint_*`` (one process) and
    ``checkpoint_*`` (Ray Train, local storage)."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "checkpoints").glob(PREFIX + "*")) + sorted(run_dir.glob(PREFIX + "*"))
    return [d for d in found if d.is_dir()]


def scan(dirs: list[Path]) -> tuple[Path | None, list[str]]:
    """(the complete checkpoint with the most epochs finished (ties: the later name) or None,
    why each incomplete one was skipped). Checksums are verified newest first, down to the
    one chosen (older ones are not read)."""
    done, skipped = [], []
    for d in dirs:
        why = incomplete_reason(d, checksums=False)
        if why is None:
            done.append((checkpoint_epoch(d), d.name, d))
        else:
            skipped.append(why)
    for _, _, d in sorted(done, reverse=True):
        why = incomplete_reason(d)
        if why is None:
            return d, skipped
        skipped.append(why)
    return None, skipped


@contextlib.contextmanager
def scan_storage(fs: pafs.FileSystem, fs_path: str, shown: str) -> Iterator[tuple[Path | None, list[str]]]:
    """``scan`` of the ``checkpoint_*`` directories at ``fs_path`` on a pyarrow filesystem
    (Ray Train's storage): in place on a local one, else each copied into a temporary
    directory (newest name first, stopping at the first complete one). Yields (the chosen
    local directory or None, why each skipped one was skipped, with ``shown``, the storage
    URI of ``fs_path``, in place of the temporary directory)."""
    sel = pafs.FileSelector(fs_path, allow_not_found=True)
    names = sorted((i.base_name for i in fs.get_file_info(sel)
                    if i.type == pafs.FileType.Directory and i.base_name.startswith(PREFIX)), reverse=True)
    if isinstance(fs, pafs.LocalFileSystem):
        yield scan([Path(fs_path) / n for n in names])
        return
    with tempfile.TemporaryDirectory(prefix="fenrec-resume-") as tmp:
        skipped: list[str] = []
        for n in names:
            pafs.copy_files(f"{fs_path}/{n}", f"{tmp}/{n}", source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
            d, why = scan([Path(tmp) / n])
            skipped += [w.replace(tmp, shown) for w in why]
            if d is not None:
                yield d, skipped
                return
        yield None, skipped


def newest(dirs: list[Path]) -> Path | None:
    return scan(dirs)[0]


def upgrade_legacy(run_dir: Path) -> Path | None:
    """Convert a run of the earlier one-process layout (``checkpoints/last.pt`` + ``best.pt``)
    into a ``checkpoint_*`` directory beside them (written atomically; the old files stay).
    Returns the new directory, or None when there is nothing to convert."""
    ckpt = Path(run_dir) / "checkpoints"
    last, best = ckpt / "last.pt", ckpt / "best.pt"
    if not last.is_file() or candidates(run_dir):
        return None
    st = load_state(last, keys=("model", "optimizer", "early_stopping", "epoch", "rng"))
    b = load_state(best, keys=("model", "epoch")) if best.is_file() else {"model": st["model"], "epoch": -1}
    final = ckpt / checkpoint_name(int(st["epoch"]))
    tmp = ckpt / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_rank_files(tmp, 0, st["rng"], state={"model": st["model"], "optimizer": st["optimizer"],
                                                "early_stopping": st["early_stopping"], "epoch": st["epoch"],
                                                "world_size": 1, "deepspeed": False},
                     best={"model": b["model"], "epoch": int(b["epoch"])})
    write_manifest(tmp, 0)
    os.replace(tmp, final)
    return final


def legacy_ray_best(run_dir: Path) -> tuple[dict[str, Any], int, dict[str, Any]] | None:
    """(best weights, best epoch, extra) of the newest earlier-layout Ray Train checkpoint
    (``client_state.pt`` + ``best_model.pt``), or None."""
    found = []
    for d in sorted(Path(run_dir).glob(PREFIX + "*")):
        if (d / "client_state.pt").is_file() and (d / "best_model.pt").is_file():
            client = load_state(d / "client_state.pt", keys=("epoch", "early_stopping"))
            found.append((int(client["epoch"]), d.name, d, client))
    if not found:
        return None
    _, _, d, client = max(found, key=lambda f: f[:2])
    return (load_state(d / "best_model.pt"), int(client["early_stopping"]["best_epoch"]),
            {"epochs_run": int(client["epoch"]), "checkpoint": str(d)})


def best_weights(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], int, dict[str, Any]]:
    """(model state, best epoch, extra final.json fields) of a run's newest complete checkpoint.

    Raises CheckpointError naming the run when it has none."""
    run_dir = Path(run_dir)
    upgrade_legacy(run_dir)
    d, skipped = scan(candidates(run_dir))
    if d is not None:
        b = load_state(d / BEST, map_location=map_location, keys=("model", "epoch"))
        return b["model"], int(b["epoch"]), {"epochs_run": checkpoint_epoch(d), "checkpoint": str(d)}
    legacy = legacy_ray_best(run_dir)
    if legacy is not None:
        return legacy
    if skipped:
        raise CheckpointError(f"{run_dir}: no complete checkpoint ({'; '.join(skipped)})")
    raise CheckpointError(f"{run_dir}: no complete checkpoint yet (the run finished no epoch); a distributed run "
                          f"keeps its checkpoint_* directories in distributed.storage_path: copy the newest "
                          f"one into {run_dir}")


def read_record(d: Path) -> dict[str, Any] | None:
    """The epoch record a checkpoint carries, or None."""
    p = Path(d) / RECORD
    return json.loads(p.read_text()) if p.is_file() else None
