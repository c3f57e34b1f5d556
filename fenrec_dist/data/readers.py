"""Streaming readers of interaction data.

Every reader yields ``pyarrow.Table`` chunks with exactly these columns:

    user: int64 or string   raw user id
    item: int64 or string   raw item id
    time: int64 or float64  ordering key within a user (sequence text: the line number)
    row:  int64             global row index in input order (stable tie-break)

so that the rest of the pipeline never depends on the input format. No reader holds more
than one chunk (about ``chunk_rows`` interactions) in memory.

Formats (``detect_format`` picks one from the file name):

- ``seq``: text, one user a line, ``user item item ...`` in time order, integer ids.
  Blank lines are skipped (counted as ``blank_lines``); a line with a user id but no item
  is an error, as is a non-integer id (the message names line and field), an item id
  below 1 (0 is the padding id) or above 2**31-1, and a negative user id. A user id on
  two lines is an error too (``prepare`` names both lines). ``.gz`` files are read as well.
- ``csv`` / ``tsv``: a header line and the columns ``user_col``, ``item_col`` and
  ``time_col`` (others are ignored; each of the three must appear once in the header);
  ids are strings, or int64 when every id of a chunk is a canonical decimal integer
  ("12", not "012" or "+12"); the time column must be numeric or a timestamp. ``.gz``
  compressed files are read as well.
- ``parquet``: the same columns; ids may be integers or strings.

Missing values are errors naming the file, the line (text formats) or the row (Parquet,
counted from 1) and the column: a null, empty or whitespace-only id, or an id spelled
``NaN``/``nan``/``None``/``null`` (``MISSING_IDS``; any other string, "12.5" included,
is a valid id); a null or NaN time value. A repeated header line inside a CSV is named
as such. An unreadable file (permission denied) is a DataError naming it.
- ``amazon-json``: JSON lines, plain or gzip, one review a line with ``reviewerID``,
  ``asin`` and ``unixReviewTime`` (or the given column names when they are not the
  defaults ``user``/``item``/``timestamp``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fenrec_dist.data.errors import DataError, at_column, at_line

FORMATS = ("seq", "csv", "tsv", "parquet", "amazon-json")
LOG_FORMATS = ("csv", "tsv", "parquet", "amazon-json")
DEFAULT_CHUNK_ROWS = 1 << 20
MAX_ITEM_ID = 2**31 - 1
AMAZON_FIELDS = {"user": "reviewerID", "item": "asin", "timestamp": "unixReviewTime"}

CHUNK_COLUMNS = ("user", "item", "time", "row")
# id values read as "missing" (besides nulls, empty and whitespace-only strings)
MISSING_IDS = ("nan", "NaN", "NAN", "Nan", "none", "None", "NONE", "null", "Null", "NULL")
_MISSING_SET = frozenset(MISSING_IDS)
_MISSING_ARRAY = pa.array(("",) + MISSING_IDS, pa.string())


@dataclass
class ReadStats:
    """Counters filled while reading: ``rows`` read, ``blank_lines`` skipped."""

    rows: int = 0
    blank_lines: int = 0


def detect_format(path: str | Path) -> str:
    """Format name from the file name: .txt -> seq, .csv[.gz], .tsv[.gz], .parquet/.pq,
    .json/.jsonl[.gz] -> amazon-json."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffixes, fmt in (
        ((".txt",), "seq"),
        ((".csv",), "csv"),
        ((".tsv",), "tsv"),
        ((".parquet", ".pq"), "parquet"),
        ((".json", ".jsonl"), "amazon-json"),
    ):
        if name.endswith(suffixes):
            return fmt
    raise DataError(f"{path}: cannot detect the format from the file name; pass fmt= one of {list(FORMATS)}")


def iter_chunks(
    path: str | Path,
    fmt: str,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "timestamp",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    stats: ReadStats | None = None,
    int_ids: bool = True,
) -> Iterator[pa.Table]:
    """Yield normalised chunks (see the module doc) of the file ``path`` in format ``fmt``.

    ``int_ids``: CSV/TSV id columns whose values in a chunk are all canonical decimal
    integers come as int64 (faster); other chunks of the same file may then come as
    strings, so a caller that needs one type throughout retries with ``int_ids=False``.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    if fmt == "seq":
        it = _iter_seq(path, chunk_rows, stats)
    elif fmt in ("csv", "tsv"):
        it = _iter_csv(path, "," if fmt == "csv" else "\t", (user_col, item_col, time_col), chunk_rows, stats,
                       int_ids)
    elif fmt == "parquet":
        it = _iter_parquet(path, (user_col, item_col, time_col), chunk_rows, stats)
    elif fmt == "amazon-json":
        cols = tuple(AMAZON_FIELDS.get(c, c) if c == d else c
                     for c, d in zip((user_col, item_col, time_col), AMAZON_FIELDS))
        it = _iter_json(path, cols, chunk_rows, stats)
    else:
        raise DataError(f"{path}: unknown format {fmt!r} (known: {list(FORMATS)})")
    try:
        yield from it
    except PermissionError as exc:
        raise DataError(f"cannot read {path}: permission denied") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{path}: is a directory, not a file") from exc


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


# --------------------------------------------------------------------------- sequence text


def _ints(tokens: list[str]) -> np.ndarray | None:
    """int64 array of decimal tokens, or None if one of them is not an integer."""
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except (ValueError, OverflowError):
        return None


def _seq_chunk(path: Path, users: list[str], counts: list[int], lines: list[int], toks: list[str],
               row0: int) -> pa.Table:
    u = _ints(users)
    it = _ints(toks)
    if u is None or it is None:
        ends = np.cumsum(counts)
        for k, (tok_u, ln) in enumerate(zip(users, lines)):
            if _ints([tok_u]) is None:
                raise at_line(path, ln, f"field 1: user id {tok_u!r} is not an integer")
            lo = ends[k] - counts[k]
            for j, tok in enumerate(toks[lo:ends[k]]):
                if _ints([tok]) is None:
                    raise at_line(path, ln, f"field {j + 2}: item id {tok!r} is not an integer")
        raise AssertionError("unreachable")  # pragma: no cover
    cnt = np.asarray(counts, dtype=np.int64)
    if (u < 0).any():
        k = int(np.flatnonzero(u < 0)[0])
        raise at_line(path, lines[k], f"field 1: negative user id {users[k]}")
    bad = (it < 1) | (it > MAX_ITEM_ID)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        k = int(np.searchsorted(np.cumsum(cnt), j, side="right"))
        field = j - int(np.cumsum(cnt)[k] - cnt[k]) + 2
        raise at_line(path, lines[k], f"field {field}: item id {int(it[j])} outside 1..{MAX_ITEM_ID} (0 is padding)")
    n = len(it)
    return pa.table({
        "user": pa.array(np.repeat(u, cnt)),
        "item": pa.array(it),
        "time": pa.array(np.repeat(np.asarray(lines, dtype=np.int64), cnt)),
        "row": pa.array(np.arange(row0, row0 + n, dtype=np.int64)),
    })


def _iter_seq(path: Path, chunk_rows: int, stats: ReadStats) -> Iterator[pa.Table]:
    users: list[str] = []
    counts: list[int] = []
    lines: list[int] = []
    toks: list[str] = []
    lineno = 0
    try:
        with open(path, "rb") as raw:
            f = gzip.open(raw) if raw.read(2) == b"\x1f\x8b" else raw
            raw.seek(0)
            text = io.TextIOWrapper(f, encoding="utf-8")
            for lineno, line in enumerate(text, 1):
                parts = line.split()
                if not parts:
                    stats.blank_lines += 1
                    continue
                if len(parts) < 2:
                    raise at_line(path, lineno, f"user {parts[0]!r} has no items (expected 'user item item ...')")
                users.append(parts[0])
                counts.append(len(parts) - 1)
                lines.append(lineno)
                toks.extend(parts[1:])
                if len(toks) >= chunk_rows:
                    yield _seq_chunk(path, users, counts, lines, toks, stats.rows)
                    stats.rows += len(toks)
                    users, counts, lines, toks = [], [], [], []
    except UnicodeDecodeError as exc:
        raise at_line(path, lineno + 1, f"not UTF-8 text: {exc}") from exc
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise at_line(path, lineno + 1, f"corrupt or truncated gzip data: {exc}") from exc
    if toks:
        yield _seq_chunk(path, users, counts, lines, toks, stats.rows)
        stats.rows += len(toks)


# --------------------------------------------------------------------------- logs


def _as_int_if_exact(arr: pa.Array) -> pa.Array:
    """int64 version of a string array whose values are all canonical decimal integers, else ``arr``."""
    try:
        pc.cast(arr.slice(0, 64), pa.int64())  # cheap early exit: a failing cast of a big array is slow
        ints = pc.cast(arr, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return arr
    return ints if pc.all(pc.equal(pc.cast(ints, pa.string()), arr)).as_py() is not False else arr


class _BadValue(Exception):
    """A missing value found by ``_normalise`` in the source column ``col``, at the global
    row ``row`` (from 0; None: the whole column has a wrong type). Readers turn it into a
    DataError naming the line (text) or the row (Parquet)."""

    def __init__(self, row: int | None, col: str, message: str) -> None:
        super().__init__(message)
        self.row = row
        self.col = col
        self.message = message


def _is_missing_id(value: str) -> bool:
    """True for an id read as missing: empty, whitespace only, or one of ``MISSING_IDS``."""
    return not value.strip() or value in _MISSING_SET


def _missing_message(value: str) -> str:
    return "empty value" if not value.strip() else f"missing value {value!r}"


def _first_true(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _normalise(path: Path, table: pa.Table | pa.RecordBatch, cols: tuple[str, str, str], row0: int,
               int_strings: bool = False) -> pa.Table:
    """Rename to user/item/time, check types and missing values, add the row column.

    ``int_strings``: string ids that are all canonical integers ("12", not "012") become int64.
    Raises DataError for a column of the wrong type, ``_BadValue`` for a missing value.
    """
    out = {}
    for name, col in zip(("user", "item"), cols[:2]):
        arr = table.column(col)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if pa.types.is_integer(arr.type):
            arr = arr.cast(pa.int64())
        elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
        else:
            raise at_column(path, col, f"ids must be integers or strings, got {arr.type}")
        if arr.null_count:
            raise _BadValue(row0 + _first_true(pc.is_null(arr)), col, "missing (null) value")
        if pa.types.is_string(arr.type) and int_strings:
            arr = _as_int_if_exact(arr)  # (never int64 when one value is empty or NaN)
        if pa.types.is_string(arr.type):
            bad = pc.or_(pc.is_in(arr, value_set=_MISSING_ARRAY), pc.utf8_is_space(arr))
            if pc.any(bad).as_py():
                k = _first_true(bad)
                raise _BadValue(row0 + k, col, _missing_message(arr[k].as_py()))
        out[name] = arr
    tcol = cols[2]
    t = table.column(tcol)
    if isinstance(t, pa.ChunkedArray):
        t = t.combine_chunks()
    if pa.types.is_integer(t.type) or pa.types.is_boolean(t.type):
        t = t.cast(pa.int64())
    elif pa.types.is_floating(t.type) or pa.types.is_decimal(t.type):
        t = t.cast(pa.float64())
    elif pa.types.is_timestamp(t.type):
        t = t.cast(pa.int64())
    elif pa.types.is_date(t.type):
        t = t.cast(pa.date32()).cast(pa.int32()).cast(pa.int64())
    elif pa.types.is_string(t.type) or pa.types.is_large_string(t.type):
        raise _BadValue(None, tcol, f"time values must be numeric or timestamps, got {t.type}")
    else:
        raise at_column(path, tcol, f"time values must be numeric or timestamps, got {t.type}")
    if t.null_count:
        raise _BadValue(row0 + _first_true(pc.is_null(t)), tcol, "missing (null) value")
    if pa.types.is_floating(t.type):
        nan = pc.is_nan(t)
        if pc.any(nan).as_py():
            raise _BadValue(row0 + _first_true(nan), tcol, "missing value NaN")
    out["time"] = t
    out["row"] = pa.array(np.arange(row0, row0 + len(t), dtype=np.int64))
    return pa.table(out)


def _check_columns(path: Path, present: list[str], cols: tuple[str, str, str], where: str = "header") -> None:
    if len(set(cols)) != 3:
        raise DataError(f"{path}: user, item and time columns must differ, got {list(cols)}")
    for c in cols:
        n = present.count(c)
        if n == 0:
            raise at_column(path, c, f"missing (columns present: {present})")
        if n > 1:
            raise DataError(f"{path}: column {c!r} appears {'twice' if n == 2 else f'{n} times'} in the {where}")


def _csv_header(path: Path, delimiter: str) -> list[str]:
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.open(raw) if gz else raw
            first = io.TextIOWrapper(f, encoding="utf-8").readline()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise at_line(path, 1, f"corrupt or truncated gzip data: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise at_line(path, 1, f"cannot read the header: {exc}") from exc
    if not first.strip():
        raise at_line(path, 1, "empty input: no header line (no users)")
    return next(csv.reader([first], delimiter=delimiter))


def _iter_csv(path: Path, delimiter: str, cols: tuple[str, str, str], chunk_rows: int,
              stats: ReadStats, int_ids: bool) -> Iterator[pa.Table]:
    header = _csv_header(path, delimiter)
    _check_columns(path, header, cols)
    block = int(min(max(chunk_rows * 32, 1 << 16), 1 << 26))
    try:
        stream = pa.input_stream(str(path), compression="gzip" if _is_gzip(path) else None)
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=block),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(cols),
                column_types={cols[0]: pa.string(), cols[1]: pa.string()},
                strings_can_be_null=False,
            ),
        )
        for batch in reader:
            if batch.num_rows == 0:
                continue
            try:
                table = _normalise(path, batch, cols, stats.rows, int_strings=int_ids)
            except _BadValue as bad:
                raise _locate_csv_value(path, delimiter, header, cols, bad, stats.rows + batch.num_rows) from None
            yield table
            stats.rows += batch.num_rows
    except PermissionError:
        raise
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        located = _locate_csv_error(path, delimiter, header, cols[2])
        if located is not None:
            raise located from exc
        raise DataError(f"{path}: near data row {stats.rows + 1}: {exc}") from exc


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty CSV record after the header (slow path for errors).

    Undecodable text and corrupt gzip data raise a DataError at the line reached.
    """
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = io.TextIOWrapper(gzip.open(raw) if gz else raw, encoding="utf-8", newline="")
        reader = csv.reader(f, delimiter=delimiter)
        try:
            next(reader, None)
            for row in reader:
                if row:
                    yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise at_line(path, reader.line_num + 1, f"not UTF-8 text: {exc}") from exc
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise at_line(path, reader.line_num + 1, f"corrupt or truncated gzip data: {exc}") from exc
        except csv.Error as exc:
            raise at_line(path, reader.line_num, str(exc)) from exc


_CSV_NULLS = frozenset(pacsv.ConvertOptions().null_values)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_missing_time(value: str) -> bool:
    return not value.strip() or value in _CSV_NULLS


def _locate_csv_value(path: Path, delimiter: str, header: list[str], cols: tuple[str, str, str], bad: _BadValue,
                      rows_read: int) -> DataError:
    """The DataError at the line of a missing value (``bad``) found in the first ``rows_read`` rows."""
    j = header.index(bad.col)
    is_time = bad.col == cols[2]
    if bad.row is None:  # string time column: the type Arrow inferred from the first block
        numeric_seen, first_bad = False, None
        for n, (line, row) in enumerate(_csv_rows(path, delimiter)):
            if n >= rows_read:
                break
            if row == header:
                return at_line(path, line, "repeated header row")
            value = row[j] if j < len(row) else ""
            if _is_missing_time(value):
                continue
            if _is_number(value):
                numeric_seen = True
            elif first_bad is None:
                first_bad = (line, value)
            if numeric_seen and first_bad is not None:
                break
        if first_bad is not None and numeric_seen:
            return at_line(path, first_bad[0], f"column {bad.col!r}: {first_bad[1]!r} is not a number")
        example = f" (line {first_bad[0]}: {first_bad[1]!r})" if first_bad is not None else ""
        return at_column(path, bad.col, bad.message + example)
    for n, (line, row) in enumerate(_csv_rows(path, delimiter)):
        if n > bad.row:
            break
        value = row[j] if j < len(row) else ""
        if _is_missing_time(value) if is_time else _is_missing_id(value):
            return at_line(path, line, f"column {bad.col!r}: {_missing_message(value)}")
    return DataError(f"{path}: data row {bad.row + 1}: column {bad.col!r}: {bad.message}")


def _locate_csv_error(path: Path, delimiter: str, header: list[str], time_col: str) -> DataError | None:
    """Slow path after a CSV error: the first repeated header line, line with a wrong field
    count, or non-numeric time value after numeric ones."""
    t = header.index(time_col)
    numeric_seen = False
    try:
        for line, row in _csv_rows(path, delimiter):
            if row == header:
                return at_line(path, line, "repeated header row")
            if len(row) != len(header):
                return at_line(path, line, f"expected {len(header)} fields, got {len(row)}: {row}")
            if _is_number(row[t]):
                numeric_seen = True
            elif numeric_seen and not _is_missing_time(row[t]):
                return at_line(path, line, f"column {time_col!r}: {row[t]!r} is not a number")
    except OSError as exc:
        if isinstance(exc, PermissionError):
            raise
        return DataError(f"{path}: {exc}")
    return None


def _iter_parquet(path: Path, cols: tuple[str, str, str], chunk_rows: int, stats: ReadStats) -> Iterator[pa.Table]:
    try:
        pf = pq.ParquetFile(path)
    except PermissionError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    _check_columns(path, pf.schema_arrow.names, cols, where="schema")
    try:
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=list(cols)):
            if batch.num_rows == 0:
                continue
            try:
                table = _normalise(path, batch, cols, stats.rows)
            except _BadValue as bad:
                if bad.row is None:
                    raise at_column(path, bad.col, bad.message) from None
                raise DataError(f"{path}: row {bad.row + 1}: column {bad.col!r}: {bad.message}") from None
            yield table
            stats.rows += batch.num_rows
    except PermissionError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: near row {stats.rows + 1}: {exc}") from exc


def _iter_json(path: Path, cols: tuple[str, str, str], chunk_rows: int, stats: ReadStats) -> Iterator[pa.Table]:
    uc, ic, tc = cols
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    lineno = 0

    def flush() -> pa.Table:
        t = pa.table({
            "user": pa.array(users, pa.string()),
            "item": pa.array(items, pa.string()),
            "time": pa.array(times, pa.int64()),
            "row": pa.array(np.arange(stats.rows, stats.rows + len(users), dtype=np.int64)),
        })
        stats.rows += len(users)
        return t

    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.open(raw) if gz else raw
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    stats.blank_lines += 1
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise at_line(path, lineno, f"invalid JSON: {exc}") from exc
                if not isinstance(rec, dict):
                    raise at_line(path, lineno, "expected a JSON object")
                for c in cols:
                    if rec.get(c) is None:
                        raise at_line(path, lineno, f"missing field {c!r}")
                for c in (uc, ic):
                    v = rec[c]
                    if (isinstance(v, float) and v != v) or (isinstance(v, str) and _is_missing_id(v)):
                        raise at_line(path, lineno, f"field {c!r}: {_missing_message(str(v))}")
                try:
                    t = int(rec[tc])
                except (TypeError, ValueError) as exc:
                    raise at_line(path, lineno, f"field {tc!r}: {rec[tc]!r} is not a number") from exc
                users.append(str(rec[uc]))
                items.append(str(rec[ic]))
                times.append(t)
                if len(users) >= chunk_rows:
                    yield flush()
                    users, items, times = [], [], []
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise at_line(path, lineno + 1, f"corrupt or truncated gzip data: {exc}") from exc
    except PermissionError:
        raise
    except OSError as exc:
        raise at_line(path, lineno + 1, f"read error: {exc}") from exc
    if users:
        yield flush()


_MIX = np.uint64(0x9E3779B97F4A7C15)


def string_hash(arr: pa.Array) -> np.ndarray:
    """uint64 [n]: deterministic polynomial hash of every string of a pa.string() array (no nulls)."""
    arr = arr.cast(pa.string())
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32)[arr.offset:arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8)[offsets[0]:offsets[-1]].astype(np.uint64) if n else np.zeros(0, np.uint64)
    offsets -= offsets[0]
    lengths = np.diff(offsets)
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, 1099511628211, dtype=np.uint64), dtype=np.uint64)
    with np.errstate(over="ignore"):
        cs = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum((data + np.uint64(1)) * powers[pos], out=cs[1:])
        h = cs[offsets[1:]] - cs[offsets[:-1]] + lengths.astype(np.uint64)
        return h * _MIX
    # (uint64 arithmetic wraps modulo 2**64 by design)


def hash_partition(user: pa.Array, num_partitions: int) -> np.ndarray:
    """int64 [n]: partition id in [0, num_partitions) of every raw user id, deterministic across runs.

    int64 ids: Fibonacci hashing; strings: ``string_hash``.
    """
    if num_partitions == 1:
        return np.zeros(len(user), dtype=np.int64)
    with np.errstate(over="ignore"):
        if pa.types.is_integer(user.type):
            h = user.to_numpy(zero_copy_only=False).astype(np.uint64) * _MIX
        else:
            h = string_hash(user)
    return ((h >> np.uint64(32)) % np.uint64(num_partitions)).astype(np.int64)
