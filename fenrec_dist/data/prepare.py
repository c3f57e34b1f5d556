"""``prepare``: interaction data -> sharded Parquet training samples + eval table + manifest.

Out-of-core in four passes, never holding the whole log in memory:

A. stream the input in chunks (see ``readers``), hash-partition the rows by raw user id
   into ``num_partitions`` Arrow IPC files, collect the distinct raw user and item ids;
B. per partition: map raw ids to dense codes (rank in the sorted distinct ids), sort by
   (user, time, input row) and save the (user, item) code columns as ``.npy``; count
   interactions per user and per item;
C. filters on the counts: iterative k-core on users and items (``k_core`` > 0, one pass
   over the partitions per round), then users with fewer than ``min_interactions``
   interactions are dropped; the items left are recounted;
D. per partition, in blocks of users: leave-one-out split, training samples and eval rows
   (vectorised, ``sequences``), appended to the shard writers.

Ids. Sequence text keeps the ids as given (so numbers match the benchmarks);
``items`` is the largest item id kept. Logs (csv/tsv/parquet/amazon-json) remap the kept
users and items to 1..N in ascending order of the raw id (numeric order when every raw
id of the column is an integer, else lexicographic UTF-8 order; equal numbers tie-break
by the string), saved as ``user_map.parquet`` / ``item_map.parquet`` (columns raw, id;
raw is int64 for integer ids - Parquet integer columns, CSV columns whose every value
is a canonical decimal integer - else string). Filters run before the remapping, so ids
are contiguous over what is kept.

Output (``out_dir``):
    train/part-00000.parquet ... one row per training sample: sample_id int64, user int64,
        input list<int32> (<= max_len, most recent last, no padding), input_len int32,
        target int32, future list<int32> (target first, 1..horizon+1 items), position
        int32 (target's index in the user's training part); row groups of row_group_size;
    eval.parquet: one row per kept user: user int64, history list<int32> (whole training
        part), valid int32, test int32 (grouped by partition; loaders sort by user);
    user_map.parquet, item_map.parquet (logs only); manifest.json (see ``_Job.run``).

Filters. ``k_core`` > 0: repeatedly drop users and items with fewer than k interactions
until every one left has at least k (dropped counts: ``k_core_rows``/``_users``/``_items``); then users
with fewer than ``min_interactions`` (>= 3) interactions (``too_short_users``/``_rows``).
Rows are never deduplicated (repeat interactions are kept, as in Yelp).

Order within a user: time ascending, ties broken by the input row order.

Sharding. ``sample_id`` is the canonical order (user id ascending, then position), from 0.
Shard ``s`` holds the samples whose target item hashes to ``s`` (``target_shard``), so all
samples with one target, the ICSRec partners of each other, lie in one shard, and a Ray
Train worker that reads only its own shards (``data.shards.assign_shards``) can draw every
partner locally. ``num_shards`` bounds the number of workers (default 32). Within a shard
rows ascend by sample_id when one partition is used; readers sort by sample_id
(``dataset.load_sample_table`` does). The manifest records each shard's rows, sha256 and
sample_id range (min, max + 1; not contiguous).

Atomicity. Everything is written to a temporary directory beside ``out_dir`` and renamed
into place at the end; an existing ``out_dir`` is replaced (``overwrite=True``) only after
the new output is complete. On any failure neither the temporary directory nor a
partial ``out_dir`` remains.

Safety. ``overwrite`` only ever replaces a prepared dataset (a directory whose
``manifest.json`` is a fenrec-dist manifest) or an empty directory: ``out_dir`` being a
file, a directory of other files, or a directory holding the input is refused with a
DataError before anything is read. Options out of range raise ``config.ConfigError``
naming the CLI flag, also before the input is read; permission errors on the input or
the output become DataErrors naming the path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fenrec_dist.data.errors import DataError
from fenrec_dist.data.readers import (
    DEFAULT_CHUNK_ROWS,
    FORMATS,
    ReadStats,
    detect_format,
    hash_partition,
    iter_chunks,
)
from fenrec_dist.data.sequences import (
    SampleBlock,
    EvalBlock,
    build_eval,
    build_samples,
    exclusive_cumsum,
    samples_per_user,
)

FORMAT_VERSION = 2
SHARDING = "target"  # training samples are partitioned by a hash of their target item (target_shard)
ROWS_PER_PARTITION = 2_000_000
BLOCK_BUDGET = 8_000_000
MANIFEST = "manifest.json"
EVAL_FILE = "eval.parquet"
USER_MAP = "user_map.parquet"
ITEM_MAP = "item_map.parquet"

SAMPLE_SCHEMA = pa.schema([
    ("sample_id", pa.int64()),
    ("user", pa.int64()),
    ("input", pa.list_(pa.int32())),
    ("input_len", pa.int32()),
    ("target", pa.int32()),
    ("future", pa.list_(pa.int32())),
    ("position", pa.int32()),
])
EVAL_SCHEMA = pa.schema([
    ("user", pa.int64()),
    ("history", pa.list_(pa.int32())),
    ("valid", pa.int32()),
    ("test", pa.int32()),
])

# rough bytes per interaction, used only to pick the number of partitions
_BYTES_PER_ROW = {"seq": 5, "csv": 16, "tsv": 16, "amazon-json": 100}


def target_shard(target: np.ndarray, num_shards: int) -> np.ndarray:
    """int64 [N]: the training shard of each sample, a hash of its target item int [N].

    All samples with one target share a shard, so a worker that reads whole shards holds
    every ICSRec partner (a training sample with the same target) of its own samples. The
    multiplicative (Fibonacci) hash spreads consecutive and popular ids over the shards.
    """
    t = np.asarray(target, dtype=np.uint64)
    mixed = (t * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return (mixed % np.uint64(num_shards)).astype(np.int64)


def shard_name(i: int) -> str:
    return f"train/part-{i:05d}.parquet"


def prepare(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = "auto",
    max_len: int = 50,
    horizon: int = 2,
    min_interactions: int = 3,
    k_core: int = 0,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "timestamp",
    num_shards: int = 32,
    row_group_size: int = 16384,
    overwrite: bool = False,
    num_partitions: int | None = None,
    _fail_after_shards: int | None = None,
) -> dict[str, Any]:
    """Prepare ``input_path`` into ``out_dir`` (layout in the module doc); return the manifest.

    Raises DataError (naming the file and line or column) on bad input, on an unreadable
    input or unwritable output, when ``out_dir`` exists and ``overwrite`` is False, or
    when ``out_dir`` may not be replaced (see Safety in the module doc); ConfigError (a
    ValueError) on bad arguments.
    """
    src = Path(input_path)
    out = Path(out_dir)
    _check_args(fmt, max_len, horizon, min_interactions, k_core, num_shards, row_group_size, num_partitions)
    _check_input(src)
    resolved_fmt = detect_format(src) if fmt == "auto" else fmt
    _check_output(src, out, overwrite)
    parts = num_partitions or _auto_partitions(src, resolved_fmt)
    config = {
        "input_path": str(src), "out_dir": str(out), "fmt": fmt, "max_len": max_len, "horizon": horizon,
        "min_interactions": min_interactions, "k_core": k_core, "user_col": user_col, "item_col": item_col,
        "time_col": time_col, "num_shards": num_shards, "row_group_size": row_group_size,
        "overwrite": overwrite, "num_partitions": parts,
    }
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except PermissionError as exc:
        raise DataError(f"cannot write to {_dir_name(Path(exc.filename).parent if exc.filename else out.parent)}: "
                        "permission denied") from exc
    except (FileExistsError, NotADirectoryError) as exc:  # a file where a parent directory should be
        raise DataError(f"cannot create --out {out}: {exc.filename} is not a directory") from exc
    try:
        manifest = _Job(src, tmp, resolved_fmt, config, _fail_after_shards).run()
        shutil.rmtree(tmp / "_scratch", ignore_errors=True)
        _publish(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, PermissionError):
            raise _permission_error(exc, src, out, tmp) from exc
        raise
    return manifest


def _config_error(message: str) -> ValueError:
    from fenrec_dist.config import ConfigError  # imported here: config is not needed on the data path

    return ConfigError(message)


def _check_args(fmt: str, max_len: int, horizon: int, min_interactions: int, k_core: int, num_shards: int,
                row_group_size: int, num_partitions: int | None) -> None:
    """ConfigError naming the CLI flag (and the keyword) of the first option out of range."""
    if fmt != "auto" and fmt not in FORMATS:
        raise _config_error(f"--format (fmt) must be 'auto' or one of {list(FORMATS)}, got {fmt!r}")
    for flag, name, value, low, why in (
        ("--max-len", "max_len", max_len, 1, ""),
        ("--horizon", "horizon", horizon, 0, ""),
        ("--min-interactions", "min_interactions", min_interactions, 3, " (train, valid and test items)"),
        ("--k-core", "k_core", k_core, 0, ""),
        ("--num-shards", "num_shards", num_shards, 1, ""),
        ("--row-group-size", "row_group_size", row_group_size, 1, ""),
    ):
        if value < low:
            raise _config_error(f"{flag} ({name}) must be >= {low}{why}, got {value}")
    if num_partitions is not None and not 1 <= num_partitions <= 4096:
        raise _config_error(f"num_partitions must be in 1..4096, got {num_partitions}")


def _dir_name(path: Path) -> str:
    """``path`` written as a directory (with a trailing separator)."""
    return str(path).rstrip(os.sep) + os.sep


def _check_input(src: Path) -> None:
    """DataError unless ``src`` is a readable file."""
    if src.is_dir():
        raise DataError(f"{src}: is a directory, not a file (the input is one interaction file)")
    if not src.is_file():
        raise DataError(f"{src}: no such file")
    try:
        with open(src, "rb"):
            pass
    except PermissionError as exc:
        raise DataError(f"cannot read {src}: permission denied") from exc


def is_prepared_dataset(path: Path) -> bool:
    """True if the directory ``path`` holds a ``manifest.json`` written by ``prepare``."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest and "shards" in manifest


def _inside(child: Path, parent: Path) -> bool:
    """True if ``child`` lies under ``parent``, lexically or after resolving symlinks."""
    for c, p in ((Path(os.path.abspath(child)), Path(os.path.abspath(parent))), (child.resolve(), parent.resolve())):
        if p == c or p in c.parents:
            return True
    return False


def _check_output(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, or an existing directory that may not be replaced."""
    if not out.exists():
        return  # (a dangling symlink is replaced)
    if not out.is_dir():
        if overwrite:
            raise DataError(f"--out {out} is a file, not a directory; refusing to replace it")
        raise DataError(f"--out {out} exists and is a file, not a directory")
    if _inside(src, out):
        raise DataError(f"the input {src} is inside --out {out}; refusing to replace it")
    if is_prepared_dataset(out):
        reason = None
    elif not (out / MANIFEST).exists():
        try:
            reason = None if next(out.iterdir(), None) is None else "no manifest.json"
        except PermissionError as exc:
            raise DataError(f"cannot read {_dir_name(out)}: permission denied") from exc
    else:
        reason = "its manifest.json is not a fenrec-dist manifest"
    if reason is not None:
        if overwrite:
            raise DataError(f"{out}: not a prepared dataset ({reason}); refusing to replace it")
        raise DataError(f"{out}: output directory exists and is not a prepared dataset ({reason}); "
                        "choose another --out")
    if not overwrite:
        raise DataError(f"{out}: output directory exists; pass --overwrite (overwrite=True) to replace it")


def _permission_error(exc: PermissionError, src: Path, out: Path, tmp: Path) -> DataError:
    """DataError naming the input, or the directory that could not be written."""
    name = Path(exc.filename) if exc.filename else None
    if name is not None and os.path.abspath(name) == os.path.abspath(src):
        return DataError(f"cannot read {src}: permission denied")
    if name is None or _inside(name, tmp):
        return DataError(f"cannot write to {_dir_name(out.parent)}: permission denied")
    return DataError(f"cannot write to {_dir_name(name.parent)}: permission denied")


def _auto_partitions(src: Path, fmt: str) -> int:
    if fmt == "parquet":
        try:
            rows = pq.ParquetFile(src).metadata.num_rows
        except (pa.ArrowInvalid, OSError):
            rows = 0  # the reader reports the error
    else:
        size = src.stat().st_size
        with open(src, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        rows = size * (4 if gz else 1) // _BYTES_PER_ROW[fmt]
    return int(min(max(math.ceil(rows / ROWS_PER_PARTITION), 1), 256))


def _publish(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is removed only after that succeeded."""
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(tmp, out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- helpers


class _MixedIds(Exception):
    """Raw ids came as int64 in some chunks and as strings in others."""


class _Distinct:
    """Running set of distinct raw ids (int64 numpy or Arrow strings)."""

    def __init__(self) -> None:
        self.vals: pa.Array | None = None

    def add(self, arr: pa.Array) -> None:
        # pyarrow's hash-based unique (np.unique sorts and is several times slower)
        u = pc.unique(arr)
        self.vals = u if self.vals is None else pc.unique(pa.concat_arrays([self.vals, u]))

    def sorted(self, parts: int) -> "_IdSpace":
        """The sorted ids; string ids are also split by ``hash_partition`` into ``parts`` lookup sets."""
        assert self.vals is not None
        if pa.types.is_integer(self.vals.type):
            return _IdSpace(np.sort(self.vals.to_numpy()), None, parts)
        arr = self.vals
        try:
            pc.cast(arr.slice(0, 64), pa.int64())  # cheap early exit
            num = pc.cast(arr, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            idx = pc.sort_indices(arr)
        else:
            idx = pc.sort_indices(pa.table({"n": num, "s": arr}), sort_keys=[("n", "ascending"), ("s", "ascending")])
        return _IdSpace(None, arr.take(idx), parts)


class _IdSpace:
    """Sorted distinct raw ids; code of a raw id = its rank.

    String lookups use per-partition value sets (a partition's rows only hold the ids
    that hash to it), so each hash table is 1/parts of the ids.
    """

    def __init__(self, ints: np.ndarray | None, strs: pa.Array | None, parts: int) -> None:
        self.ints = ints
        self.strs = strs
        self.part_ranks: list[np.ndarray] = []
        self.part_sets: list[pa.Array] = []
        if strs is not None:
            pid = hash_partition(strs, parts)
            order = np.argsort(pid, kind="stable")
            cuts = exclusive_cumsum(np.bincount(pid, minlength=parts))
            for p in range(parts):
                ranks = order[cuts[p]:cuts[p + 1]]
                self.part_ranks.append(ranks)
                self.part_sets.append(strs.take(pa.array(ranks)))

    def __len__(self) -> int:
        return len(self.ints) if self.ints is not None else len(self.strs)

    def codes(self, raw: pa.Array, part: int = 0) -> np.ndarray:
        """int64 [n]: codes of the raw ids (all present), which all lie in partition ``part``."""
        if self.ints is not None:
            return np.searchsorted(self.ints, raw.to_numpy(zero_copy_only=False)).astype(np.int64)
        local = pc.index_in(raw, value_set=self.part_sets[part]).to_numpy(zero_copy_only=False)
        return self.part_ranks[part][local].astype(np.int64)

    def raw(self, codes: np.ndarray) -> pa.Array:
        if self.ints is not None:
            return pa.array(self.ints[codes])
        return self.strs.take(pa.array(codes))


class _RawPartitions:
    """Arrow IPC files receiving the rows (user, item, time) of each user-hash partition."""

    def __init__(self, directory: Path, count: int) -> None:
        self.paths = [directory / f"raw-{p:05d}.arrow" for p in range(count)]
        self.writers: list[pa.ipc.RecordBatchFileWriter | None] = [None] * count
        self.schema: pa.Schema | None = None

    def write(self, chunk: pa.Table) -> None:
        chunk = chunk.select(["user", "item", "time"])
        if self.schema is None:
            self.schema = chunk.schema
        elif chunk.schema != self.schema:
            chunk = chunk.cast(self.schema)
        count = len(self.paths)
        if count == 1:
            self._writer(0).write_table(chunk)
            return
        pid = hash_partition(chunk.column("user").combine_chunks(), count)
        order = np.argsort(pid.astype(np.int16), kind="stable")  # radix sort (count <= 4096)
        bounds = exclusive_cumsum(np.bincount(pid, minlength=count))
        taken = chunk.take(pa.array(order))
        for p in range(count):
            if bounds[p + 1] > bounds[p]:
                self._writer(p).write_table(taken.slice(int(bounds[p]), int(bounds[p + 1] - bounds[p])))

    def _writer(self, p: int) -> pa.ipc.RecordBatchFileWriter:
        w = self.writers[p]
        if w is None:
            assert self.schema is not None
            w = self.writers[p] = pa.ipc.new_file(str(self.paths[p]), self.schema)
        return w

    def close(self) -> None:
        for w in self.writers:
            if w is not None:
                w.close()


class _ParquetSink:
    """Parquet writer with full row groups of ``row_group_size`` rows (the last may be short)."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.rgs = row_group_size
        self.writer = pq.ParquetWriter(str(path), schema, compression="snappy")
        self.buf: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.buf.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        if self.buffered >= self.rgs:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.buf:
            return
        t = pa.concat_tables(self.buf)
        n = t.num_rows if final else (t.num_rows // self.rgs) * self.rgs
        if n:
            self.writer.write_table(t.slice(0, n), row_group_size=self.rgs)
        rest = t.slice(n)
        self.buf = [rest] if rest.num_rows else []
        self.buffered = rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        self.writer.close()


def _user_time_order(user: np.ndarray, time: np.ndarray, num_users: int) -> np.ndarray:
    """Stable order by (user, time): ties keep the input row order (rows are in input order)."""
    if len(time) and np.issubdtype(time.dtype, np.integer):
        lo, hi = int(time.min()), int(time.max())
        if (hi - lo + 1) * num_users < 2**62:  # one int64 key: faster than lexsort
            return np.argsort(user * (hi - lo + 1) + (time - lo), kind="stable")
    return np.lexsort((time, user))


def _block_cost(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Work units of users with sequence lengths ``lengths``: 16 per sample and per user, plus
    their input values and history items. Blocks of BLOCK_BUDGET units bound memory
    (<= 500k samples and <= 8M list values) and keep int32 list offsets safe."""
    n = np.asarray(lengths, dtype=np.int64)
    s = samples_per_user(n)  # t = 1..s
    m = np.minimum(s, max_len)
    input_values = m * (m + 1) // 2 + (s - m) * max_len
    return 16 * (s + 1) + input_values + n


def _list_array(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int32()))


def sample_table(b: SampleBlock) -> pa.Table:
    """Arrow table (SAMPLE_SCHEMA) of a SampleBlock."""
    return pa.Table.from_arrays([
        pa.array(b.sample_id), pa.array(b.user),
        _list_array(b.input_values, b.input_offsets), pa.array(b.input_len),
        pa.array(b.target), _list_array(b.future_values, b.future_offsets), pa.array(b.position),
    ], schema=SAMPLE_SCHEMA)


def eval_table(b: EvalBlock) -> pa.Table:
    """Arrow table (EVAL_SCHEMA) of an EvalBlock."""
    return pa.Table.from_arrays([
        pa.array(b.user), _list_array(b.history_values, b.history_offsets), pa.array(b.valid), pa.array(b.test),
    ], schema=EVAL_SCHEMA)


# --------------------------------------------------------------------------- the job


class _Job:
    """One run of ``prepare`` writing into the temporary directory ``tmp``."""

    def __init__(self, src: Path, tmp: Path, fmt: str, config: dict[str, Any], fail_after: int | None) -> None:
        self.src = src
        self.tmp = tmp
        self.fmt = fmt
        self.cfg = config
        self.fail_after = fail_after
        self.scratch = tmp / "_scratch"
        self.scratch.mkdir()
        self.parts = int(config["num_partitions"])
        self.stats = ReadStats()

    # ---- pass A
    def partition(self) -> tuple[_IdSpace, _IdSpace]:
        try:
            return self._partition(int_ids=True)
        except _MixedIds:  # integer-looking ids in some CSV chunks only: read all ids as strings
            for path in self.scratch.glob("raw-*.arrow"):
                path.unlink()
            self.stats = ReadStats()
            return self._partition(int_ids=False)

    def _partition(self, int_ids: bool) -> tuple[_IdSpace, _IdSpace]:
        raw = _RawPartitions(self.scratch, self.parts)
        users, items = _Distinct(), _Distinct()
        try:
            for chunk in iter_chunks(self.src, self.fmt, user_col=self.cfg["user_col"], item_col=self.cfg["item_col"],
                                     time_col=self.cfg["time_col"], chunk_rows=DEFAULT_CHUNK_ROWS, stats=self.stats,
                                     int_ids=int_ids):
                chunk = chunk.select(["user", "item", "time"])
                if raw.schema is not None and chunk.schema != raw.schema:
                    if int_ids:
                        raise _MixedIds()
                    raise DataError(f"{self.src}: column types change between chunks: {raw.schema} vs {chunk.schema}")
                raw.write(chunk)
                users.add(chunk.column("user").combine_chunks())
                items.add(chunk.column("item").combine_chunks())
        finally:
            raw.close()
        self.raw_paths = raw.paths
        if self.stats.rows == 0:
            raise DataError(f"{self.src}: empty input: no interactions (no users)")
        return users.sorted(self.parts), items.sorted(1)

    # ---- pass B
    def sort_partitions(self, users: _IdSpace, items: _IdSpace) -> tuple[np.ndarray, np.ndarray]:
        ucnt = np.zeros(len(users), dtype=np.int64)
        icnt = np.zeros(len(items), dtype=np.int64)
        self.sorted_paths: list[tuple[Path, Path]] = []
        for p, path in enumerate(self.raw_paths):
            if not path.exists():
                continue
            with pa.memory_map(str(path)) as mm:
                t = pa.ipc.open_file(mm).read_all()
            user_arr = t.column("user").combine_chunks()
            time = t.column("time").to_numpy()
            if users.ints is not None:
                # sort by the raw ids (same order as codes), then look up one code per user
                raw_u = user_arr.to_numpy()
                lo = int(raw_u.min())
                order = _user_time_order(raw_u - lo, time, int(raw_u.max()) - lo + 1)
                su = raw_u[order]
                starts = np.concatenate([[0], np.flatnonzero(su[1:] != su[:-1]) + 1, [len(su)]])
                uc = np.repeat(np.searchsorted(users.ints, su[starts[:-1]]), np.diff(starts))
            else:
                uc = users.codes(user_arr, p)
                order = _user_time_order(uc, time, len(users))
                uc = uc[order]
            ic = items.codes(t.column("item").combine_chunks().take(pa.array(order)))
            time = time[order]
            del t, user_arr
            if self.fmt == "seq":
                self._check_one_line_per_user(uc, time, users)
            up, ip = self.scratch / f"sorted-{p:05d}-user.npy", self.scratch / f"sorted-{p:05d}-item.npy"
            np.save(up, uc.astype(np.int32), allow_pickle=False)
            np.save(ip, ic.astype(np.int32), allow_pickle=False)
            self.sorted_paths.append((up, ip))
            ucnt += np.bincount(uc, minlength=len(users))
            icnt += np.bincount(ic, minlength=len(items))
            path.unlink()
        return ucnt, icnt

    def _check_one_line_per_user(self, uc: np.ndarray, line: np.ndarray, users: _IdSpace) -> None:
        bad = np.flatnonzero((uc[1:] == uc[:-1]) & (line[1:] != line[:-1]))
        if len(bad):
            k = int(bad[0])
            user = users.raw(np.array([uc[k]]))[0].as_py()
            raise DataError(f"{self.src}:{int(line[k + 1])}: user {user} already has a line "
                            f"({self.src}:{int(line[k])}); expected one line per user")

    def _load(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        up, ip = self.sorted_paths[k]
        return np.load(up, allow_pickle=False), np.load(ip, allow_pickle=False)

    def _count(self, alive_u: np.ndarray, alive_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ucnt = np.zeros(len(alive_u), dtype=np.int64)
        icnt = np.zeros(len(alive_i), dtype=np.int64)
        for k in range(len(self.sorted_paths)):
            uc, ic = self._load(k)
            keep = alive_u[uc] & alive_i[ic]
            ucnt += np.bincount(uc[keep], minlength=len(alive_u))
            icnt += np.bincount(ic[keep], minlength=len(alive_i))
        return ucnt, icnt

    # ---- pass C
    def filter(self, ucnt: np.ndarray, icnt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        total = int(ucnt.sum())
        alive_u = np.ones(len(ucnt), dtype=bool)
        alive_i = np.ones(len(icnt), dtype=bool)
        dropped: dict[str, int] = {}
        if self.stats.blank_lines:
            dropped["blank_lines"] = self.stats.blank_lines
        k = int(self.cfg["k_core"])
        if k > 0:
            rounds = 0
            while True:
                new_u = alive_u & (ucnt >= k)
                new_i = alive_i & (icnt >= k)
                if np.array_equal(new_u, alive_u) and np.array_equal(new_i, alive_i):
                    break
                alive_u, alive_i = new_u, new_i
                ucnt, icnt = self._count(alive_u, alive_i)
                rounds += 1
            dropped["k_core_rows"] = total - int(ucnt[alive_u].sum())
            dropped["k_core_users"] = int((~alive_u).sum())
            dropped["k_core_items"] = int((~alive_i).sum())
            self.k_core_rounds = rounds
            ucnt = np.where(alive_u, ucnt, 0)
            icnt = np.where(alive_i, icnt, 0)
        short = alive_u & (ucnt < int(self.cfg["min_interactions"]))
        dropped["too_short_users"] = int(short.sum())
        dropped["too_short_rows"] = int(ucnt[short].sum())
        if short.any():
            alive_u = alive_u & ~short
            ucnt, icnt = self._count(alive_u, alive_i)
        alive_i = alive_i & (icnt > 0)
        if not alive_u.any():
            raise DataError(f"{self.src}: no users left: all {len(alive_u):,} users have fewer than "
                            f"{self.cfg['min_interactions']} interactions after filtering")
        return alive_u, alive_i, ucnt, icnt, dropped

    # ---- pass D
    def write(self, alive_u: np.ndarray, alive_i: np.ndarray, ucnt: np.ndarray, user_new: np.ndarray,
              item_new: np.ndarray) -> dict[str, Any]:
        max_len, horizon, num_shards = int(self.cfg["max_len"]), int(self.cfg["horizon"]), int(self.cfg["num_shards"])
        rgs = int(self.cfg["row_group_size"])
        kept = np.flatnonzero(alive_u)
        first_sample = np.zeros(len(alive_u), dtype=np.int64)
        starts = exclusive_cumsum(samples_per_user(ucnt[kept]))
        first_sample[kept] = starts[:-1]
        n_samples = int(starts[-1])
        sinks = [_ParquetSink(self.tmp / shard_name(s), SAMPLE_SCHEMA, rgs) for s in range(num_shards)]
        ev_sink = _ParquetSink(self.tmp / EVAL_FILE, EVAL_SCHEMA, rgs)
        fut_counts = np.zeros(horizon + 2, dtype=np.int64)
        lo = np.full(num_shards, np.iinfo(np.int64).max)
        hi = np.full(num_shards, -1)
        filtering = not (alive_u.all() and alive_i.all())
        try:
            for k in range(len(self.sorted_paths)):
                uc, ic = self._load(k)
                if filtering:
                    keep = alive_u[uc] & alive_i[ic]
                    uc, ic = uc[keep], ic[keep]
                if not len(uc):
                    continue
                items = item_new[ic]
                offs = np.concatenate([[0], np.flatnonzero(uc[1:] != uc[:-1]) + 1, [len(uc)]]).astype(np.int64)
                run_codes = uc[offs[:-1]].astype(np.int64)
                group = (np.cumsum(_block_cost(np.diff(offs), max_len)) - 1) // BLOCK_BUDGET
                gb = np.concatenate([[0], np.flatnonzero(np.diff(group)) + 1, [len(run_codes)]])
                for a, b in zip(gb[:-1], gb[1:]):
                    o = offs[a:b + 1]
                    sub_items, sub_offs, codes = items[o[0]:o[-1]], o - o[0], run_codes[a:b]
                    blk = build_samples(sub_items, sub_offs, user_new[codes], first_sample[codes], max_len, horizon)
                    ev_sink.add(eval_table(build_eval(sub_items, sub_offs, user_new[codes])))
                    if not len(blk):
                        continue
                    fut_counts += np.bincount(blk.future_len, minlength=horizon + 2)
                    sample_shard = target_shard(blk.target, num_shards)
                    order = np.argsort(sample_shard, kind="stable")  # sample_id order kept within a shard
                    cut = np.searchsorted(sample_shard[order], np.arange(num_shards + 1))
                    table = sample_table(blk).take(pa.array(order))
                    ids = blk.sample_id[order]
                    for s in range(num_shards):
                        if cut[s + 1] > cut[s]:
                            sinks[s].add(table.slice(int(cut[s]), int(cut[s + 1] - cut[s])))
                            lo[s] = min(lo[s], int(ids[cut[s]]))
                            hi[s] = max(hi[s], int(ids[cut[s + 1] - 1]))
        finally:
            for sink in sinks + [ev_sink]:
                sink.close()
        shards = []
        for s, sink in enumerate(sinks):
            rows = sink.rows
            shards.append({
                "file": shard_name(s), "rows": rows, "sha256": sha256_file(sink.path),
                "sample_id_range": [int(lo[s]), int(hi[s]) + 1] if rows else [0, 0],
            })
            if self.fail_after is not None and s + 1 >= self.fail_after:
                raise RuntimeError(f"injected failure after writing {s + 1} shard(s)")
        assert sum(x["rows"] for x in shards) == n_samples
        return {
            "train_samples": n_samples,
            "future_window_counts": {str(n): int(fut_counts[n]) for n in range(horizon + 1, 0, -1)},
            "shards": shards,
            "eval": {"file": EVAL_FILE, "rows": ev_sink.rows, "sha256": sha256_file(ev_sink.path)},
        }

    def run(self) -> dict[str, Any]:
        users, items = self.partition()
        ucnt, icnt = self.sort_partitions(users, items)
        alive_u, alive_i, ucnt, icnt, dropped = self.filter(ucnt, icnt)
        kept_u, kept_i = np.flatnonzero(alive_u), np.flatnonzero(alive_i)
        if self.fmt == "seq":
            assert users.ints is not None and items.ints is not None
            user_new = users.ints.astype(np.int64)
            item_new = items.ints.astype(np.int32)
            num_items = int(items.ints[kept_i].max())
            id_maps = None
        else:
            user_new = np.zeros(len(users), dtype=np.int64)
            user_new[kept_u] = np.arange(1, len(kept_u) + 1)
            item_new = np.zeros(len(items), dtype=np.int32)
            item_new[kept_i] = np.arange(1, len(kept_i) + 1)
            num_items = len(kept_i)
            for name, space, kept, new in ((USER_MAP, users, kept_u, user_new), (ITEM_MAP, items, kept_i, item_new)):
                pq.write_table(pa.table({"raw": space.raw(kept), "id": pa.array(new[kept])}), str(self.tmp / name))
            id_maps = {"users": USER_MAP, "items": ITEM_MAP}
        written = self.write(alive_u, alive_i, ucnt, user_new, item_new)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "users": int(len(kept_u)),
            "items": num_items,
            "distinct_items": int(len(kept_i)),
            "interactions": int(ucnt[kept_u].sum()),
            "train_samples": written["train_samples"],
            "future_window_counts": written["future_window_counts"],
            "max_len": int(self.cfg["max_len"]),
            "horizon": int(self.cfg["horizon"]),
            "source": {
                "path": str(self.src.resolve()), "format": self.fmt, "size": self.src.stat().st_size,
                "sha256": sha256_file(self.src), "rows": self.stats.rows,
            },
            "dropped": dropped,
            "sharding": SHARDING,
            "shards": written["shards"],
            "eval": written["eval"],
            "config": self.cfg,
            "id_maps": id_maps,
        }
        if manifest["eval"]["rows"] != manifest["users"]:
            raise AssertionError("eval rows != users")  # pragma: no cover
        text = json.dumps(manifest, indent=2) + "\n"
        with open(self.tmp / MANIFEST, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return manifest
