"""Saving each epoch's negative index under ``RUN_DIR/negatives/`` (any pyarrow filesystem).

Layout::

    negatives/summary.jsonl          one JSON line per refreshed epoch (kept for every epoch)
    negatives/epoch_0007/index.faiss the epoch's FAISS index (``faiss.write_index``, CPU form)
    negatives/epoch_0007/samples.parquet
        sample_id int64, user int64, target int32, epoch int32, intent int32 (-1 = none),
        neighbors list<int64> (mined, after the filter), neighbor_sim list<float32>,
        raw_neighbors list<int64>, raw_sim list<float32>, raw_reason list<int8>
        (see ``index.REASONS``)

Epoch directories are written to a temporary name and then moved into place, so a
reader never sees half an epoch; only the newest ``index_keep`` are kept. An object store
(S3) cannot move a directory: there the files go straight into place, samples.parquet last,
and an epoch counts once its samples.parquet is there.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fenrec_dist.data.errors import DataError, at_line, first_line
from fenrec_dist.negatives.index import FaissResources, Mined, TrainingFacts

SUBDIR = "negatives"
SUMMARY = "summary.jsonl"
EPOCH_RE = re.compile(r"^epoch_(\d{4,})$")


def epoch_dirname(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def _list_col(a: np.ndarray, typ: pa.DataType) -> pa.Array:
    n, k = a.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(a.reshape(-1), type=typ))


def samples_table(m: Mined, facts: TrainingFacts, epoch: int, intent_of: np.ndarray | None,
                  rows: np.ndarray | None = None) -> pa.Table:
    """The per-sample neighbour metadata of one epoch (rows in ``m.query_ids`` order);
    ``rows``: where each query's facts and intent lie (default: its sample id)."""
    q = m.query_ids
    r = q if rows is None else rows
    return pa.table({
        "sample_id": pa.array(q, pa.int64()),
        "user": pa.array(facts.user[r].astype(np.int64), pa.int64()),
        "target": pa.array(facts.target[r].astype(np.int32), pa.int32()),
        "epoch": pa.array(np.full(len(q), epoch, np.int32), pa.int32()),
        "intent": pa.array((intent_of[r] if intent_of is not None else np.full(len(q), -1)).astype(np.int32), pa.int32()),
        "neighbors": _list_col(m.neighbors.astype(np.int64), pa.int64()),
        "neighbor_sim": _list_col(m.neighbor_sims.astype(np.float32), pa.float32()),
        "raw_neighbors": _list_col(m.raw_ids.astype(np.int64), pa.int64()),
        "raw_sim": _list_col(m.raw_sims.astype(np.float32), pa.float32()),
        "raw_reason": _list_col(m.reasons.astype(np.int8), pa.int8()),
    })


class NegativesStore:
    """``negatives/`` of a run directory on a local path or a pyarrow filesystem (cluster storage)."""

    def __init__(self, base: str, fs: pafs.FileSystem | None = None) -> None:
        self.fs = fs or pafs.LocalFileSystem()
        self.base = f"{base.rstrip('/')}/{SUBDIR}"
        self.fs.create_dir(self.base, recursive=True)

    def _p(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def epochs(self) -> list[int]:
        """Epochs whose directory is complete, ascending."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        out = [int(m.group(1)) for i in infos if i.type == pafs.FileType.Directory and (m := EPOCH_RE.match(i.base_name))]
        if not self._local:  # no directory moves: an epoch is there once its last file is
            out = [e for e in out if self.fs.get_file_info(self._p(f"{epoch_dirname(e)}/samples.parquet")).is_file]
        return sorted(out)

    @property
    def _local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def save_epoch(self, epoch: int, index: faiss.Index, table: pa.Table) -> None:
        """Write index.faiss and samples.parquet, then move the directory into place."""
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "e"
            d.mkdir()
            faiss.write_index(FaissResources.to_cpu(index), str(d / "index.faiss"))
            pq.write_table(table, d / "samples.parquet", compression="zstd")
            staging = self._p(f".tmp-{epoch_dirname(epoch)}")
            final = self._p(epoch_dirname(epoch))
            if not self._local:  # an object store: each file is one whole object, samples.parquet last
                if self.fs.get_file_info(final).type != pafs.FileType.NotFound:
                    self.fs.delete_dir(final)
                for name in ("index.faiss", "samples.parquet"):
                    pafs.copy_files(str(d / name), f"{final}/{name}", source_filesystem=pafs.LocalFileSystem(),
                                    destination_filesystem=self.fs)
                return
            for p in (staging, final):
                if self.fs.get_file_info(p).type != pafs.FileType.NotFound:
                    self.fs.delete_dir(p)
            self.fs.create_dir(staging, recursive=True)
            pafs.copy_files(str(d), staging, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
            self.fs.move(staging, final)

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest ``keep`` epoch directories; returns the deleted epochs."""
        old = self.epochs()[:-keep] if keep > 0 else self.epochs()
        for e in old:
            self.fs.delete_dir(self._p(epoch_dirname(e)))
        return old

    def read_summary(self) -> list[dict[str, Any]]:
        p = self._p(SUMMARY)
        if self.fs.get_file_info(p).type == pafs.FileType.NotFound:
            return []
        with self.fs.open_input_stream(p) as f:
            lines = f.read().decode(errors="replace").splitlines()
        recs = []
        for no, line in enumerate(lines, 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise at_line(p, no, f"not a JSON record ({exc.msg}); the file is corrupt or truncated") from exc
        return recs

    def append_summary(self, rec: dict[str, Any]) -> None:
        """Add (or replace) the epoch's line, dropping lines of later epochs (a resumed run
        redoes them); written to a temporary file, then moved over the old one."""
        recs = [r for r in self.read_summary() if int(r["epoch"]) < int(rec["epoch"])] + [rec]
        tmp = self._p(f".{SUMMARY}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write("".join(json.dumps(r) + "\n" for r in recs).encode())
        self.fs.move(tmp, self._p(SUMMARY))

    def load_samples(self, epoch: int) -> pa.Table:
        p = self._p(f"{epoch_dirname(epoch)}/samples.parquet")
        try:
            with self.fs.open_input_file(p) as f:
                return pq.read_table(f)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{p}: unreadable Parquet file, corrupt or truncated ({first_line(exc)})") from exc

    def load_index(self, epoch: int) -> faiss.Index:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "index.faiss"
            p = self._p(f"{epoch_dirname(epoch)}/index.faiss")
            try:
                pafs.copy_files(p, str(local), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
                return faiss.read_index(str(local))
            except (RuntimeError, OSError, pa.ArrowException) as exc:
                raise DataError(f"{p}: unreadable FAISS index, corrupt or truncated "
                                f"({first_line(exc).replace(str(local), 'index.faiss')})") from exc


def neighbors_from_table(table: pa.Table, n_total: int, k: int) -> np.ndarray:
    """int64 [n_total, k] mined neighbours by sample id (-1 where the table has no row)."""
    out = np.full((n_total, k), -1, dtype=np.int64)
    ids = table.column("sample_id").to_numpy()
    flat = table.column("neighbors").combine_chunks().flatten().to_numpy()
    if len(ids):
        out[ids] = flat.reshape(len(ids), -1)[:, :k]
    return out
