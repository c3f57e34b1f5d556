"""``fenrec export``: a trained encoder's weights -> a self-contained serving directory.

The directory (written atomically: complete or absent):

    encoder.pt2         ``torch.export`` program of the eval-mode encoder: long [B, L] item ids,
                        left-padded, 1 <= L <= max_len (the last L positions of the max_len
                        window: a batch may be cut to its longest row) -> float [B, d], the
                        representation at the last position; B and L are dynamic.
                        ``torch.export.load(path).module()`` runs it without this package's
                        model code.
    item_embeddings.npy float32 [I + 1, d], the scoring table (row 0 = padding).
    items.faiss         the item index (``negatives/item_index.py``; ``faiss.read_index``).
    item_map.parquet    raw item id -> model id (columns raw, id), as ``prepare`` saved it for
                        logs; absent for sequence-text data, whose ids are kept as given.
    manifest.json       format, sizes, the index kind, the id scheme, the source run and the
                        sha256 of every file above.

The export checks itself: the exported encoder must give the eager encoder's output on a
sample batch (to 1e-5) or nothing is written. This module reads weights handed to it; it
never opens training checkpoints itself (the CLI does, through the trainer's function).
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from fenrec_dist.config import Config
from fenrec_dist.data.dataset import read_manifest
from fenrec_dist.data.errors import DataError
from fenrec_dist.data.prepare import ITEM_MAP
from fenrec_dist.model import build_encoder
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.negatives.item_index import ItemIndex
from fenrec_dist.serve.files import atomic_dir, sha256

FORMAT = "fenrec-export"
VERSION = 1
ENCODER, EMBEDDINGS, INDEX, MANIFEST = "encoder.pt2", "item_embeddings.npy", "items.faiss", "manifest.json"


class LastPosition(torch.nn.Module):
    """SASRec's eval computation at the last position for the last L positions of its window:
    long [B, L] left-padded (L <= max_len) -> float [B, d]; position ids max_len - L .. max_len - 1,
    so a batch cut to its longest row gives the full window's output (``trim_padding``)."""

    def __init__(self, encoder: SequenceEncoder) -> None:
        super().__init__()
        if not hasattr(encoder, "_encode"):
            raise DataError(f"export: only SASRec encoders can be exported, not {type(encoder).__name__}")
        self.encoder = encoder
        self.max_len = int(encoder.max_len)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder._encode(ids, self.max_len - ids.shape[1], last_only=True)[:, -1, :]


def is_export_dir(path: Path) -> bool:
    """A directory holding a fenrec export (its manifest says so)."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export_encoder(encoder: SequenceEncoder, max_len: int, seed: int = 0) -> torch.export.ExportedProgram:
    """``torch.export`` of ``LastPosition(encoder)`` in eval mode with dynamic batch size and
    width, checked against the eager encoder on 5 random histories of lengths 1..max_len at full
    and at trimmed width (raises DataError if it cannot be exported or differs by > 1e-5)."""
    encoder = encoder.eval()
    wrapped = LastPosition(encoder).eval()
    g = torch.Generator().manual_seed(seed)
    n = encoder.num_items
    example = torch.randint(1, n + 1, (2, max_len), generator=g)
    try:
        dims = {0: torch.export.Dim("batch", min=1, max=1 << 24), 1: torch.export.Dim("length", min=1, max=max_len)}
        program = torch.export.export(wrapped, (example,), dynamic_shapes={"ids": dims})
    except Exception as exc:  # noqa: BLE001 - any export failure is reported as one line
        raise DataError(f"export: torch.export cannot export the {type(encoder).__name__} encoder: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    check = torch.randint(1, n + 1, (5, max_len), generator=g)
    lengths = torch.tensor([1, 2, max(max_len // 2, 1), max(max_len - 1, 1), max_len])
    check[torch.arange(max_len)[None, :] < (max_len - lengths)[:, None]] = 0
    with torch.no_grad():
        want = encoder(check)
        diff = float((program.module()(check) - want).abs().max())
        short = check[:3, max_len - int(lengths[:3].max()):]  # the 3 shortest rows, cut to their longest
        diff = max(diff, float((program.module()(short) - want[:3]).abs().max()))
    if not diff <= 1e-5:
        raise DataError(f"export: the exported encoder differs from the eager one by {diff:.3g}")
    return program


def _item_map(data_dir: Path, num_items: int) -> Path | None:
    """The prepared item map, checked to cover ids 1..num_items once each, or None (ids as given)."""
    p = data_dir / ITEM_MAP
    if not p.is_file():
        return None
    t = pq.read_table(p)
    if set(t.column_names) != {"raw", "id"}:
        raise DataError(f"{p}: expected columns raw and id, got {t.column_names}")
    ids = np.sort(t.column("id").to_numpy())
    if not np.array_equal(ids, np.arange(1, num_items + 1)):
        raise DataError(f"{p}: ids do not cover 1..{num_items} (the model's catalogue) once each")
    return p


def export_run(state: dict[str, torch.Tensor], cfg: Config, data_dir: str | Path, out: str | Path,
               overwrite: bool = False, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the serving directory ``out`` for encoder weights ``state``.

    Args:
        state: the encoder's state dict (a run's best weights).
        cfg: the run's config (model shape, ``data.max_len``, ``negatives.item_index_*``).
        data_dir: the prepared dataset the run trained on (item map, catalogue size).
        out: the export directory; an existing one is replaced only with ``overwrite`` and only
            when it is a fenrec export.
        source: what to record about the origin (run directory, checkpoint, best epoch).

    Returns:
        the manifest written.
    """
    data_dir, out = Path(data_dir), Path(out)
    if out.exists() and not (overwrite and is_export_dir(out)):
        why = "pass --overwrite to replace it" if is_export_dir(out) else "it is not a fenrec export"
        raise DataError(f"{out} exists ({why}); nothing written")
    data_manifest = read_manifest(data_dir)
    if "item_emb.weight" not in state:
        raise DataError("export: the weights have no item_emb.weight (not a fenrec encoder's state dict)")
    num_items = int(state["item_emb.weight"].shape[0]) - 1
    if int(data_manifest["items"]) != num_items:
        raise DataError(f"{data_dir}: {data_manifest['items']} items, but the weights score {num_items}: not the "
                        f"dataset this run trained on")
    max_len = int(cfg.data.max_len)
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model, num_items, max_len)
    encoder.load_state_dict(state)
    encoder.eval()
    program = export_encoder(encoder, max_len)
    items = encoder.item_weights().detach().float().cpu().numpy()
    index = ItemIndex.build(items, cfg.negatives, seed=cfg.train.seed)
    id_map = _item_map(data_dir, num_items)
    with atomic_dir(out, is_export_dir) as tmp:
        torch.export.save(program, str(tmp / ENCODER))
        np.save(tmp / EMBEDDINGS, items, allow_pickle=False)
        index.save(str(tmp / INDEX))
        if id_map is not None:
            shutil.copyfile(id_map, tmp / ITEM_MAP)
        files = [ENCODER, EMBEDDINGS, INDEX] + ([ITEM_MAP] if id_map is not None else [])
        manifest = {
            "format": FORMAT, "version": VERSION,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "encoder": cfg.model.encoder, "num_items": num_items, "dim": int(items.shape[1]), "max_len": max_len,
            "ids": "item_map" if id_map is not None else "as_given",
            "index": {"kind": index.kind, "build_seconds": round(index.build_seconds, 3)},
            "source": {**(source or {}), "data": str(data_dir)},
            "files": {name: sha256(tmp / name) for name in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
