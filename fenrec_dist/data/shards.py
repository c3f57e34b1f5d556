"""What one rank of W reads of a prepared dataset: its training shards and its share of users.

``prepare`` partitions training samples by a hash of their target item, so a worker that
reads whole shards holds every same-target partner of its samples. The assignment of
shards to ranks is a pure function of the manifest and W, so a restarted worker or a
resumed run trains on exactly the same rows; one process (W = 1) reads every shard and
gets the same table as ``dataset.load_prepared``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fenrec_dist.data.dataset import EvalTable, SampleTable, load_sample_table, read_manifest, table_to_eval
from fenrec_dist.data.errors import DataError
from fenrec_dist.data.prepare import EVAL_SCHEMA, MANIFEST


def assign_shards(rows: list[int], world_size: int) -> list[list[int]]:
    """Shard indices per rank: largest shard first to the rank with the fewest rows so far
    (ties: the lower rank), each rank's list ascending. Deterministic in (rows, world_size).

    Args:
        rows: rows of each shard, in manifest order.
        world_size: W ranks; at most the number of non-empty shards.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    order = sorted(range(len(rows)), key=lambda s: (-int(rows[s]), s))
    load = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for s in order:
        r = min(range(world_size), key=lambda q: (load[q], q))
        out[r].append(s)
        load[r] += int(rows[s])
    return [sorted(x) for x in out]


@dataclass
class RankData:
    """One rank's view of a prepared dataset.

    train: this rank's training samples (its shards), sorted by sample_id.
    eval: this rank's users (every W-th user from ``rank`` in user order), sorted by user.
    num_items, max_len, horizon: as in ``dataset.PreparedData``.
    total_train: training samples over all ranks; total_users: users over all ranks.
    shards: the shard indices read; bytes_read: bytes of the Parquet files read (shards + eval).
    """

    manifest: dict
    train: SampleTable
    eval: EvalTable
    num_items: int
    max_len: int
    horizon: int
    total_train: int
    total_users: int
    shards: list[int]
    bytes_read: int


def _eval_share(path: Path, rank: int, world_size: int, users: int) -> tuple[EvalTable, int]:
    """Rows of eval.parquet whose user is the (rank + j*W)-th in ascending user order; reads
    the user column, then the rest row group by row group keeping only this rank's rows."""
    if not path.is_file():
        raise DataError(f"{path}: missing file of the prepared dataset")
    try:
        pf = pq.ParquetFile(str(path))
        user = pf.read(columns=["user"]).column("user").to_numpy()
        if len(user) != users:
            raise DataError(f"{path}: {len(user)} rows, the manifest says {users}")
        pos = np.empty(len(user), dtype=np.int64)
        pos[np.argsort(user, kind="stable")] = np.arange(len(user))
        keep = pos % world_size == rank
        parts, start = [], 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            mask = keep[start : start + n]
            start += n
            if mask.any():
                parts.append(pf.read_row_group(g, columns=EVAL_SCHEMA.names).filter(pa.array(mask)))
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise DataError(f"{path}: corrupt or unreadable Parquet file: {exc}") from exc
    table = pa.concat_tables(parts) if parts else EVAL_SCHEMA.empty_table()
    for field in EVAL_SCHEMA:
        if table.schema.field(field.name).type != field.type:
            raise DataError(f"{path}: column {field.name!r} has type {table.schema.field(field.name).type}, "
                            f"expected {field.type}")
    return table_to_eval(table), path.stat().st_size


def load_rank_data(path: str | Path, rank: int = 0, world_size: int = 1, *, max_len: int | None = None,
                   horizon: int | None = None) -> RankData:
    """Read rank ``rank`` of ``world_size``'s shards and users of the prepared dataset ``path``.

    ``max_len`` and ``horizon`` may be smaller than the prepared ones (see ``load_prepared``).
    Raises DataError naming the file on a bad manifest or shard, and when W exceeds the
    non-empty shards (prepare again with a larger ``--num-shards``).
    """
    root = Path(path)
    manifest = read_manifest(root)
    prepared_len, prepared_horizon = int(manifest["max_len"]), int(manifest["horizon"])
    horizon = prepared_horizon if horizon is None else horizon
    max_len = prepared_len if max_len is None else max_len
    if not 0 <= horizon <= prepared_horizon:
        raise DataError(f"{root / MANIFEST}: horizon {horizon} is outside 0..{prepared_horizon}, the prepared "
                        "horizon; prepare the data again with a larger --horizon")
    if not 1 <= max_len <= prepared_len:
        raise DataError(f"{root / MANIFEST}: max_len {max_len} is outside 1..{prepared_len}, the prepared "
                        "max_len; prepare the data again with a larger --max-len")
    shards = manifest["shards"]
    rows = [int(s["rows"]) for s in shards]
    filled = sum(1 for r in rows if r > 0)
    if world_size > filled:
        raise DataError(f"{root / MANIFEST}: {world_size} workers but only {filled} non-empty training shards; "
                        f"use at most {filled} workers, or prepare the data again with --num-shards >= {world_size}")
    mine = assign_shards(rows, world_size)[rank]
    files = [root / shards[s]["file"] for s in mine]
    train = load_sample_table(files, max_len, horizon, rows=[rows[s] for s in mine])
    if world_size == 1 and len(train) != int(manifest["train_samples"]):
        raise DataError(f"{root / MANIFEST}: {len(train)} samples in the shards, manifest says "
                        f"{manifest['train_samples']}")
    ev, eval_bytes = _eval_share(root / manifest["eval"]["file"], rank, world_size, int(manifest["users"]))
    return RankData(manifest=manifest, train=train, eval=ev, num_items=int(manifest["items"]), max_len=max_len,
                    horizon=horizon, total_train=int(manifest["train_samples"]), total_users=int(manifest["users"]),
                    shards=mine, bytes_read=sum(f.stat().st_size for f in files) + eval_bytes)
