"""``fenrec recommend``: top-k items for histories, from an export directory (``serve/export.py``).

Ids in and out are the user's original item ids: through ``item_map.parquet`` when the export
has one (logs), else the model ids themselves (sequence-text data keeps its ids). Items already
in the history are never recommended, nor is the padding id. Scoring is exact (every item,
chunked: ``metrics.topk_items``) unless ``ann``: the export's item index then proposes
k + |history| items per user and the history is removed from them.

Bad input: an unknown item id, or a history that is not a list of ids (or a space-separated
string of them), is refused with a one-line ``DataError`` naming the row; with
``skip_unknown`` unknown ids are dropped from their history and counted, and a row left with no
known item (or a malformed one) is skipped and counted. ``recommend_file`` writes its output
atomically: nothing partial is ever left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from fenrec_dist.data.errors import DataError
from fenrec_dist.data.prepare import ITEM_MAP
from fenrec_dist.metrics import topk_items
from fenrec_dist.negatives.item_index import ItemIndex
from fenrec_dist.serve.export import EMBEDDINGS, ENCODER, FORMAT, INDEX, MANIFEST, VERSION
from fenrec_dist.serve.files import atomic_file, sha256


@dataclass
class Counts:
    """What ``skip_unknown`` dropped: unknown ids removed from histories, rows skipped."""

    unknown_ids: int = 0
    skipped_rows: int = 0
    rows: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "unknown_ids": self.unknown_ids, "skipped_rows": self.skipped_rows,
                "examples": self.examples[:5]}


class Recommender:
    """A loaded export: encoder, item table, item index and id map.

    Args:
        export_dir: a directory written by ``export_run``.
        verify: check every file's sha256 against the manifest.
    """

    def __init__(self, export_dir: str | Path, verify: bool = True) -> None:
        d = Path(export_dir)
        mpath = d / MANIFEST
        try:
            m = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{mpath}: not a readable fenrec export manifest ({exc})") from exc
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
            raise DataError(f"{mpath}: not a fenrec export of version {VERSION}")
        if verify:
            for name, digest in m["files"].items():
                if not (d / name).is_file() or sha256(d / name) != digest:
                    raise DataError(f"{d / name}: missing or changed since export (sha256 differs from the manifest)")
        self.manifest = m
        self.max_len = int(m["max_len"])
        self.num_items = int(m["num_items"])
        self.encoder = torch.export.load(str(d / ENCODER)).module()
        self.items = torch.from_numpy(np.load(d / EMBEDDINGS, allow_pickle=False))
        self.index = ItemIndex.load(str(d / INDEX), m["index"]["kind"])
        self.raw: np.ndarray | None = None  # model id -> raw id ([I + 1], entry 0 unused)
        self.lookup: pd.Index | None = None  # raw ids in model-id order 1..I
        self.int_ids = True
        if m["ids"] == "item_map":
            t = pq.read_table(d / ITEM_MAP).to_pandas()
            t = t.sort_values("id")
            raw = t["raw"].to_numpy()
            self.int_ids = pd.api.types.is_integer_dtype(t["raw"].dtype)
            self.raw = np.concatenate([np.array([None if not self.int_ids else 0], dtype=raw.dtype), raw])
            self.lookup = pd.Index(raw)

    # ------------------------------------------------------------------ ids

    def _tokens(self, history: Any, row: str) -> list:
        """The raw ids of one history: a list/array of ids or a space-separated string."""
        if isinstance(history, str):
            toks: list = history.split()
        elif isinstance(history, (list, tuple, np.ndarray)):
            toks = list(history)
        else:
            raise DataError(f"{row}: history must be a list of item ids or a space-separated string, got "
                            f"{type(history).__name__}")
        if self.int_ids:
            out = []
            for t in toks:
                if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                    out.append(int(t))
                    continue
                try:
                    out.append(int(str(t).strip()))
                except ValueError:
                    out.append(str(t))  # not an integer id: unknown
            return out
        return [str(t) for t in toks]

    def to_model_ids(self, history: Any, row: str, skip_unknown: bool, counts: Counts) -> np.ndarray | None:
        """int64 model ids of one history (None: the row is skipped); raises DataError naming
        ``row`` on an unknown id or a malformed history unless ``skip_unknown``."""
        try:
            toks = self._tokens(history, row)
        except DataError:
            if not skip_unknown:
                raise
            counts.skipped_rows += 1
            return None
        if self.lookup is not None:
            pos = self.lookup.get_indexer(pd.Index(toks, dtype=object if not self.int_ids else None)) \
                if toks else np.zeros(0, np.int64)
            ids = np.asarray(pos, dtype=np.int64) + 1  # -1 (unknown) -> 0
        else:
            ids = np.array([t if isinstance(t, int) and 1 <= t <= self.num_items else 0 for t in toks],
                           dtype=np.int64)
        bad = ids <= 0
        if bad.any():
            first = toks[int(np.argmax(bad))]
            if not skip_unknown:
                raise DataError(f"{row}: unknown item id {first!r} (not in the exported catalogue)")
            counts.unknown_ids += int(bad.sum())
            counts.examples.append(f"{row}: {first!r}")
            ids = ids[~bad]
        if ids.size == 0:
            if not skip_unknown:
                raise DataError(f"{row}: empty history")
            counts.skipped_rows += 1
            return None
        return ids

    def to_raw(self, ids: np.ndarray) -> list:
        """Model ids -> the user's original ids (int or str)."""
        if self.raw is None:
            return [int(i) for i in ids]
        vals = self.raw[ids]
        return [int(v) for v in vals] if self.int_ids else [str(v) for v in vals]

    # ------------------------------------------------------------------ scoring

    def encode(self, histories: Sequence[np.ndarray], group: int = 256) -> torch.Tensor:
        """float [n, d]: the last-position representation of each history (its last max_len items).
        Rows are encoded in length-sorted groups of ``group``, each cut to its longest row (the
        exported program takes any width <= max_len), then put back in order."""
        lengths = np.array([min(len(h), self.max_len) for h in histories], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        out = torch.empty(len(histories), int(self.manifest["dim"]))
        with torch.no_grad():
            for i in range(0, len(order), group):
                rows = order[i:i + group]
                width = int(lengths[rows].max())
                x = np.zeros((len(rows), width), dtype=np.int64)
                for j, r in enumerate(rows):
                    if lengths[r]:
                        x[j, width - lengths[r]:] = histories[r][-lengths[r]:]
                out[torch.from_numpy(rows)] = self.encoder(torch.from_numpy(x)).float()
        return out

    def top_k(self, histories: Sequence[np.ndarray], k: int, ann: bool = False,
              item_chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """(model ids int64 [n, k], scores float32 [n, k]) per history, history items excluded;
        id 0 / score -inf where fewer than k items can be recommended."""
        z = self.encode(histories)
        width = max((len(h) for h in histories), default=1) or 1
        ex = np.zeros((len(histories), width), dtype=np.int64)
        for r, h in enumerate(histories):
            ex[r, :len(h)] = h
        if not ann:
            s, i = topk_items(z, self.items, torch.from_numpy(ex), k, item_chunk)
            return i.numpy(), s.float().numpy()
        scores, ids = self.index.search(z.numpy(), k + width)
        drop = (ids[:, :, None] == ex[:, None, :]).any(axis=2) | (ids == 0)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]
        out_i = np.take_along_axis(ids, order, 1)
        out_s = np.take_along_axis(scores, order, 1)
        gone = np.take_along_axis(drop, order, 1)
        return np.where(gone, 0, out_i), np.where(gone, -np.inf, out_s).astype(np.float32)


def recommend_history(rec: Recommender, history: str, k: int = 20, ann: bool = False,
                      skip_unknown: bool = False) -> dict[str, Any]:
    """One history (space-separated raw ids) -> {"items": raw ids, "scores": floats, ...}."""
    counts = Counts(rows=1)
    ids = rec.to_model_ids(history, "--history", skip_unknown, counts)
    if ids is None:
        raise DataError("--history: no known item id left")
    top, sc = rec.top_k([ids], k, ann)
    keep = top[0] > 0
    return {"items": rec.to_raw(top[0][keep]), "scores": [float(x) for x in sc[0][keep]],
            "unknown_ids": counts.unknown_ids}


def recommend_file(rec: Recommender, inp: str | Path, out: str | Path, k: int = 20, ann: bool = False,
                   skip_unknown: bool = False, batch_size: int = 1024, progress: bool = True) -> Counts:
    """Histories from a Parquet file (column ``history``: a list of raw ids or a space-separated
    string; any ``user`` column is carried over) -> Parquet ``out`` with columns (user,) items,
    scores. Rows are named by their 0-based position in errors. Written atomically."""
    from tqdm import tqdm

    inp = Path(inp)
    try:
        pf = pq.ParquetFile(inp)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{inp}: not a readable Parquet file ({exc})") from exc
    names = pf.schema_arrow.names
    if "history" not in names:
        raise DataError(f"{inp}: no 'history' column (columns: {names})")
    has_user = "user" in names
    counts = Counts()
    users: list = []
    items: list = []
    scores: list = []
    row0 = 0
    bar = tqdm(total=pf.metadata.num_rows, unit="user", desc="recommend", disable=None if progress else True,
               mininterval=2.0)
    for batch in pf.iter_batches(batch_size=batch_size, columns=["history"] + (["user"] if has_user else [])):
        hist = batch.column("history").to_pylist()
        who = batch.column("user").to_pylist() if has_user else [None] * len(hist)
        keep_hist, keep_who = [], []
        for j, h in enumerate(hist):
            name = f"{inp}: row {row0 + j}" + (f" (user {who[j]!r})" if has_user else "")
            ids = rec.to_model_ids(h, name, skip_unknown, counts) if h is not None else None
            if h is None:
                if not skip_unknown:
                    raise DataError(f"{name}: history is null")
                counts.skipped_rows += 1
            if ids is not None:
                keep_hist.append(ids)
                keep_who.append(who[j])
        counts.rows += len(hist)
        if keep_hist:
            top, sc = rec.top_k(keep_hist, k, ann)
            for r in range(len(keep_hist)):
                ok = top[r] > 0
                items.append(rec.to_raw(top[r][ok]))
                scores.append(sc[r][ok].tolist())
            users.extend(keep_who)
        row0 += len(hist)
        bar.update(len(hist))
    bar.close()
    cols: dict[str, Any] = {}
    if has_user:
        cols["user"] = pa.array(users, type=pf.schema_arrow.field("user").type)
    item_type = pa.int64() if rec.int_ids else pa.string()
    cols["items"] = pa.array(items, type=pa.list_(item_type))
    cols["scores"] = pa.array(scores, type=pa.list_(pa.float32()))
    with atomic_file(out) as tmp:
        pq.write_table(pa.table(cols), tmp)
    return counts
