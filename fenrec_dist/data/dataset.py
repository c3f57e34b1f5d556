"""Load a prepared dataset (output of ``prepare``) into in-memory numpy tables.

All conversions from Arrow list columns go through flat values + offsets with numpy
(no per-row Python loops).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fenrec_dist.data.errors import DataError
from fenrec_dist.data.prepare import EVAL_SCHEMA, FORMAT_VERSION, MANIFEST, SAMPLE_SCHEMA
from fenrec_dist.data.sequences import exclusive_cumsum, gather_ranges


def left_pad(values: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """int32 [N, width]: the last ``width`` values of every row, left-padded with 0 (most recent last).

    values [total], offsets int64 [N+1].
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    keep = np.minimum(np.diff(offsets), width)
    vals, koffs = gather_ranges(values, offsets[1:] - keep, keep)
    out = np.zeros((n, width), dtype=np.int32)
    row = np.repeat(np.arange(n, dtype=np.int64), keep)
    col = np.arange(len(vals), dtype=np.int64) - koffs[row] + (width - keep[row])
    out.reshape(-1)[row * width + col] = vals
    return out


def right_pad(values: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """int32 [N, width]: the first ``width`` values of every row, right-padded with 0."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    keep = np.minimum(np.diff(offsets), width)
    vals, koffs = gather_ranges(values, offsets[:-1], keep)
    out = np.zeros((n, width), dtype=np.int32)
    row = np.repeat(np.arange(n, dtype=np.int64), keep)
    col = np.arange(len(vals), dtype=np.int64) - koffs[row]
    out.reshape(-1)[row * width + col] = vals
    return out


def _list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values int32 [total], offsets int64 [N+1]) of a list<int32> column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return values, exclusive_cumsum(lengths)


def _np(col: pa.ChunkedArray, dtype: type) -> np.ndarray:
    return col.to_numpy().astype(dtype, copy=False)


@dataclass
class SampleTable:
    """Training samples, N rows, sorted by sample_id."""

    sample_id: np.ndarray   # int64 [N]
    user: np.ndarray        # int64 [N]
    inputs: np.ndarray      # int32 [N, max_len], left-padded with 0, most recent item in the last column
    input_len: np.ndarray   # int32 [N]
    target: np.ndarray      # int32 [N]
    future: np.ndarray      # int32 [N, horizon+1], right-padded with 0, future[:, 0] == target
    future_len: np.ndarray  # int32 [N]
    position: np.ndarray    # int32 [N]

    def __len__(self) -> int:
        return len(self.sample_id)

    def subset(self, idx: np.ndarray) -> "SampleTable":
        """Rows ``idx`` (indices or boolean mask)."""
        return SampleTable(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


@dataclass
class EvalTable:
    """Leave-one-out evaluation rows of U users, sorted by user."""

    user: np.ndarray             # int64 [U]
    history_values: np.ndarray   # int32 [total], concatenated training parts
    history_offsets: np.ndarray  # int64 [U+1]
    valid: np.ndarray            # int32 [U]
    test: np.ndarray             # int32 [U]

    def __len__(self) -> int:
        return len(self.user)

    def sequences(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, offsets [U+1]) of the model's input sequence: history ('valid') or history + [valid] ('test')."""
        if split == "valid":
            return self.history_values, self.history_offsets
        if split == "test":
            values = np.insert(self.history_values, self.history_offsets[1:], self.valid)
            return values, self.history_offsets + np.arange(len(self.history_offsets), dtype=np.int64)
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def inputs(self, split: str, max_len: int) -> np.ndarray:
        """int32 [U, max_len] left-padded model inputs: for 'valid' the last max_len items of the
        history; for 'test' the last max_len items of history + [valid]."""
        return left_pad(*self.sequences(split), max_len)

    def targets(self, split: str) -> np.ndarray:
        """int32 [U]: the valid or test item."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        return self.valid if split == "valid" else self.test

    def exclude(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, offsets [U+1]) of the items to exclude from ranking per user: the history,
        plus valid for 'test'."""
        return self.sequences(split)

    def subset(self, idx: np.ndarray) -> "EvalTable":
        """Users ``idx`` (indices or boolean mask), in the given order."""
        idx = np.arange(len(self.user))[idx]
        lengths = np.diff(self.history_offsets)[idx]
        values, offsets = gather_ranges(self.history_values, self.history_offsets[:-1][idx], lengths)
        return EvalTable(self.user[idx], values, offsets, self.valid[idx], self.test[idx])


@dataclass
class PreparedData:
    manifest: dict
    train: SampleTable
    eval: EvalTable
    num_items: int    # manifest["items"]; embedding table size is num_items + 1 (0 = padding)
    max_len: int
    horizon: int


def table_to_samples(table: pa.Table, max_len: int, horizon: int) -> SampleTable:
    """SampleTable from an Arrow table with SAMPLE_SCHEMA's columns, sorted by sample_id.

    Inputs longer than ``max_len`` keep their most recent items; future windows longer
    than ``horizon + 1`` keep their first items.
    """
    in_vals, in_offs = _list_parts(table.column("input"))
    fu_vals, fu_offs = _list_parts(table.column("future"))
    sample_id = _np(table.column("sample_id"), np.int64)
    st = SampleTable(
        sample_id=sample_id,
        user=_np(table.column("user"), np.int64),
        inputs=left_pad(in_vals, in_offs, max_len),
        input_len=np.minimum(np.diff(in_offs), max_len).astype(np.int32),
        target=_np(table.column("target"), np.int32),
        future=right_pad(fu_vals, fu_offs, horizon + 1),
        future_len=np.minimum(np.diff(fu_offs), horizon + 1).astype(np.int32),
        position=_np(table.column("position"), np.int32),
    )
    if len(sample_id) > 1 and (np.diff(sample_id) <= 0).any():
        st = st.subset(np.argsort(sample_id, kind="stable"))
    return st


def _read_parquet(path: Path, schema: pa.Schema, columns_check: bool, rows: int | None = None) -> pa.Table:
    if not path.is_file():
        raise DataError(f"{path}: missing file of the prepared dataset")
    try:
        table = pq.read_table(str(path), columns=schema.names)
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise DataError(f"{path}: corrupt or unreadable Parquet file: {exc}") from exc
    if columns_check:
        for field in schema:
            if table.schema.field(field.name).type != field.type:
                raise DataError(f"{path}: column {field.name!r} has type {table.schema.field(field.name).type}, "
                                f"expected {field.type}")
        if rows is not None and table.num_rows != rows:
            raise DataError(f"{path}: {table.num_rows} rows, the manifest says {rows}")
    return table


def load_sample_table(files: Sequence[str | Path], max_len: int, horizon: int,
                      rows: Sequence[int] | None = None, columns_check: bool = True) -> SampleTable:
    """SampleTable of the given training shards (e.g. one worker's share), sorted by sample_id."""
    tables = [
        _read_parquet(Path(f), SAMPLE_SCHEMA, columns_check, None if rows is None else rows[i])
        for i, f in enumerate(files)
    ]
    table = pa.concat_tables(tables) if tables else SAMPLE_SCHEMA.empty_table()
    return table_to_samples(table, max_len, horizon)


def table_to_eval(table: pa.Table) -> EvalTable:
    """EvalTable from an Arrow table with EVAL_SCHEMA's columns, sorted by user."""
    values, offsets = _list_parts(table.column("history"))
    ev = EvalTable(
        user=_np(table.column("user"), np.int64),
        history_values=values,
        history_offsets=offsets,
        valid=_np(table.column("valid"), np.int32),
        test=_np(table.column("test"), np.int32),
    )
    if len(ev.user) > 1 and (np.diff(ev.user) <= 0).any():
        ev = ev.subset(np.argsort(ev.user, kind="stable"))
    return ev


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the prepared dataset directory ``path``, checked for format_version."""
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise DataError(f"{mpath}: missing manifest (is {Path(path)} a prepared dataset?)")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{mpath}: corrupt manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise DataError(f"{mpath}: corrupt manifest: not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{mpath}: format_version {version!r} is not supported (expected {FORMAT_VERSION}); "
                        "prepare the data again")
    for key in ("items", "users", "train_samples", "shards", "eval", "max_len", "horizon"):
        if key not in manifest:
            raise DataError(f"{mpath}: corrupt manifest: missing key {key!r}")
    return manifest


def load_prepared(path: str | Path, *, max_len: int | None = None, horizon: int | None = None,
                  columns_check: bool = True) -> PreparedData:
    """Load the prepared dataset directory ``path``.

    ``max_len`` may be smaller than the prepared one (inputs keep their most recent
    items) but not larger; so may ``horizon`` (the soft labels' future window keeps its
    first ``horizon + 1`` items). ``columns_check`` verifies column types and row counts
    against the manifest. Raises DataError naming the file on a missing or corrupt
    manifest or shard.
    """
    root = Path(path)
    manifest = read_manifest(root)
    prepared_len = int(manifest["max_len"])
    prepared_horizon = int(manifest["horizon"])
    if horizon is None:
        horizon = prepared_horizon
    if not 0 <= horizon <= prepared_horizon:
        raise DataError(f"{root / MANIFEST}: horizon {horizon} is outside 0..{prepared_horizon}, the prepared "
                        "horizon; prepare the data again with a larger --horizon")
    if max_len is None:
        max_len = prepared_len
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if max_len > prepared_len:
        raise DataError(f"{root / MANIFEST}: max_len {max_len} exceeds the prepared max_len {prepared_len}; "
                        "prepare the data again with a larger max_len")
    shards = manifest["shards"]
    train = load_sample_table([root / s["file"] for s in shards], max_len, horizon,
                              rows=[int(s["rows"]) for s in shards], columns_check=columns_check)
    if columns_check and len(train) != int(manifest["train_samples"]):
        raise DataError(f"{root / MANIFEST}: {len(train)} samples in the shards, manifest says "
                        f"{manifest['train_samples']}")
    ev = table_to_eval(_read_parquet(root / manifest["eval"]["file"], EVAL_SCHEMA, columns_check,
                                     int(manifest["users"])))
    return PreparedData(manifest=manifest, train=train, eval=ev, num_items=int(manifest["items"]),
                        max_len=max_len, horizon=horizon)


def same_target_index(target: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR grouping of sample indices by target.

    Returns (order int64 [N], offsets int64 [num_items+2]): the samples with target i
    (0 <= i <= num_items) are ``order[offsets[i]:offsets[i+1]]``, ascending.
    """
    target = np.asarray(target)
    if len(target) and (target.min() < 0 or target.max() > num_items):
        raise ValueError(f"targets must lie in 0..{num_items}")
    order = np.argsort(target, kind="stable").astype(np.int64)
    counts = np.bincount(target, minlength=num_items + 1)[: num_items + 1]
    return order, exclusive_cumsum(counts)
