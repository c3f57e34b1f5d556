"""`fenrec negatives inspect RUN_DIR`: what the FAISS negative index mined, and how good it is.

The JSON report (``--json``) has these fields:

``run_dir``, ``epochs_saved`` (epochs whose index and metadata are still on disk),
``epoch`` (the epoch detailed, default the newest saved), and ``per_epoch``: one entry
per refreshed epoch with

- ``epoch``, ``kind`` (flat / ivf / hnsw), ``rows``, ``k``, ``candidates``, ``gpu``
- ``hardness``: mean cosine to the anchor of ``mined`` negatives and of ``random``
  training samples (epoch-start vectors), and as measured in training,
  ``train_in_batch`` (the in-batch negatives) and ``train_index`` (the mined ones used)
- ``false_negatives``: ``raw_rate`` (share of raw neighbours the filter removed),
  ``removed_by`` {self, same_user, same_target, in_future}, ``kept_per_anchor``, and,
  measured against the users' held-out validation and test items (a diagnostic that
  training never sees; null when the epoch's metadata was pruned): ``heldout_raw``
  (share of raw neighbours, self excluded, whose target is the anchor user's valid or
  test item) and ``slipped`` (the same share among the mined negatives kept)
- ``intents``: cluster size balance {k, min, max, mean, cv, empty, largest_share}
- ``overlap_prev``: mean Jaccard overlap of each anchor's mined set with the previous
  epoch's (how enduring the negatives are); null for the first refreshed epoch
- ``seconds``: {build, mine, save}

With ``--sample S`` or ``--user U``, ``neighbours`` lists for each of those samples
(``sample_id``, ``user``, ``target``, ``intent``) its raw neighbours in rank order:
``sample_id``, ``user``, ``target``, ``sim`` (inner product), ``cos``, ``reason``
(kept / self / same_user / same_target / in_future), ``false_negative`` (removed by the
filter), ``mined`` (used as a negative) and ``heldout_hit`` (target is the anchor user's
valid or test item).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from fenrec_dist.config import ConfigError
from fenrec_dist.negatives.index import KEPT, MISSING, REASONS, SELF
from fenrec_dist.negatives.store import NegativesStore


def _lists(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(table.num_rows, -1) if table.num_rows else flat.reshape(0, 0)


def heldout_items(run_dir: Path) -> dict[int, tuple[int, int]] | None:
    """user -> (valid item, test item) from the run's prepared data, or None if it is gone."""
    import yaml

    from fenrec_dist.config import config_from_dict
    from fenrec_dist.data.dataset import load_prepared

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        return None
    cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()))
    if not (Path(cfg.data.path) / "manifest.json").exists():
        return None
    ev = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon).eval
    return {int(u): (int(v), int(t)) for u, v, t in zip(ev.user, ev.valid, ev.test)}


def _heldout_arrays(heldout: dict[int, tuple[int, int]], users: np.ndarray) -> np.ndarray:
    """int64 [n, 2]: each user's (valid, test) items, -1 where unknown."""
    out = np.full((len(users), 2), -1, dtype=np.int64)
    for i, u in enumerate(users):
        if int(u) in heldout:
            out[i] = heldout[int(u)]
    return out


def heldout_rates(table: pa.Table, heldout: dict[int, tuple[int, int]]) -> dict[str, float]:
    """Shares of raw (self excluded) and mined neighbours whose target is the anchor user's
    held-out valid or test item."""
    ids = table.column("sample_id").to_numpy()
    users = table.column("user").to_numpy()
    target_of = np.full(int(ids.max(initial=-1)) + 1, -1, dtype=np.int64)
    target_of[ids] = table.column("target").to_numpy()
    ho = _heldout_arrays(heldout, users)  # [n, 2]

    def hits(nb: np.ndarray) -> np.ndarray:
        t = np.where(nb >= 0, target_of[np.clip(nb, 0, None)], -2)
        return (t[:, :, None] == ho[:, None, :]).any(axis=2)

    raw = _lists(table, "raw_neighbors")
    reason = _lists(table, "raw_reason")
    raw_ok = (reason != SELF) & (reason != MISSING)
    mined = _lists(table, "neighbors")
    mined_ok = mined >= 0
    return {
        "heldout_raw": float(hits(raw)[raw_ok].mean()) if raw_ok.any() else float("nan"),
        "slipped": float(hits(mined)[mined_ok].mean()) if mined_ok.any() else float("nan"),
    }


def _epoch_entry(s: dict[str, Any], metrics: dict[int, dict[str, Any]]) -> dict[str, Any]:
    tr = s.get("train") or {}
    neg = (metrics.get(int(s["epoch"])) or {}).get("negatives", {})
    return {
        "epoch": int(s["epoch"]), "kind": s.get("kind"), "rows": s.get("rows"), "k": s.get("k"),
        "candidates": s.get("candidates"), "gpu": s.get("gpu"),
        "hardness": {"mined": s.get("mined_cos"), "random": s.get("random_cos"),
                     "train_in_batch": tr.get("cos_in_batch", neg.get("train_cos_in_batch")),
                     "train_index": tr.get("cos_index", neg.get("train_cos_index"))},
        "false_negatives": {"raw_rate": s.get("raw_fn_rate"), "removed_by": s.get("removed_by"),
                            "kept_per_anchor": s.get("kept_per_anchor"), "heldout_raw": None, "slipped": None},
        "intents": s.get("intents"),
        "overlap_prev": s.get("overlap_prev"),
        "seconds": s.get("seconds"),
    }


def _neighbour_rows(table: pa.Table, rows: np.ndarray, index: faiss.Index | None,
                    heldout: dict[int, tuple[int, int]] | None) -> list[dict[str, Any]]:
    ids = table.column("sample_id").to_numpy()
    pos_of = {int(s): i for i, s in enumerate(ids)}
    users = table.column("user").to_numpy()
    targets = table.column("target").to_numpy()
    intents = table.column("intent").to_numpy()
    raw, sims, reason = _lists(table, "raw_neighbors"), _lists(table, "raw_sim"), _lists(table, "raw_reason")
    mined = _lists(table, "neighbors")
    out = []
    for r in rows:
        a = int(ids[r])
        ho = heldout.get(int(users[r])) if heldout else None
        va = _vector(index, a)
        mined_set = set(mined[r].tolist())
        nbs = []
        for j in range(raw.shape[1]):
            n = int(raw[r, j])
            if n < 0:
                continue
            p = pos_of.get(n)
            vn = _vector(index, n)
            cos = float(va @ vn / max(np.linalg.norm(va) * np.linalg.norm(vn), 1e-12)) if va is not None and vn is not None else None
            t = int(targets[p]) if p is not None else None
            nbs.append({
                "rank": j, "sample_id": n, "user": int(users[p]) if p is not None else None, "target": t,
                "sim": float(sims[r, j]), "cos": cos, "reason": REASONS[int(reason[r, j])],
                "false_negative": int(reason[r, j]) != KEPT, "mined": n in mined_set,
                "heldout_hit": bool(ho is not None and t is not None and t in ho),
            })
        out.append({"sample_id": a, "user": int(users[r]), "target": int(targets[r]), "intent": int(intents[r]),
                    "neighbours": nbs})
    return out


def _vector(index: faiss.Index | None, i: int) -> np.ndarray | None:
    if index is None:
        return None
    try:
        return index.reconstruct(i)
    except RuntimeError:
        return None


def _reconstructable(index: faiss.Index) -> faiss.Index:
    try:
        ivf = faiss.extract_index_ivf(index)
        ivf.make_direct_map()
    except RuntimeError:
        pass
    return index


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl records (empty when it has none)."""
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def inspect_run(run_dir: str | Path, epoch: int | None = None, user: int | None = None,
                sample: int | None = None) -> dict[str, Any]:
    """The report described in the module docstring."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    if not (run_dir / "negatives").is_dir():
        raise ConfigError(f"{run_dir} has no negatives/ directory: was it trained with 'index' in negatives.sources?")
    store = NegativesStore(str(run_dir.resolve()))
    summary = store.read_summary()
    saved = store.epochs()
    metrics = {int(r["epoch"]): r for r in read_metrics(run_dir)} if (run_dir / "metrics.jsonl").exists() else {}
    per_epoch = [_epoch_entry(s, metrics) for s in summary]
    heldout = heldout_items(run_dir)
    if heldout is not None:
        for e in per_epoch:
            if e["epoch"] in saved:
                e["false_negatives"].update(heldout_rates(store.load_samples(e["epoch"]), heldout))
    report: dict[str, Any] = {"run_dir": str(run_dir), "epochs_saved": saved, "per_epoch": per_epoch}
    if epoch is None:
        epoch = saved[-1] if saved else None
    elif epoch not in saved:
        raise ConfigError(f"epoch {epoch} of {run_dir} is not saved (saved: {saved}; see negatives.index_keep)")
    report["epoch"] = epoch
    if (user is not None or sample is not None) and epoch is not None:
        table = store.load_samples(epoch)
        ids = table.column("sample_id").to_numpy()
        if sample is not None:
            rows = np.flatnonzero(ids == sample)
            if not len(rows):
                raise ConfigError(f"sample {sample} is not in epoch {epoch}'s index ({len(ids)} samples)")
        else:
            rows = np.flatnonzero(table.column("user").to_numpy() == user)
            if not len(rows):
                raise ConfigError(f"user {user} has no training samples in epoch {epoch}'s index")
        index = _reconstructable(store.load_index(epoch))
        report["neighbours"] = _neighbour_rows(table, rows, index, heldout)
    return report


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def format_report(report: dict[str, Any]) -> str:
    """A human-readable table of the report."""
    lines = [f"negative index of {report['run_dir']} (saved epochs: {report['epochs_saved']})",
             f"{'epoch':>5} {'kind':>5} {'mined':>6} {'random':>6} {'inbatch':>7} {'used':>6} "
             f"{'fn_raw':>7} {'heldout':>7} {'slipped':>7} {'int_cv':>6} {'overlap':>7} {'build+mine':>10}"]
    for e in report["per_epoch"]:
        h, f = e["hardness"], e["false_negatives"]
        sec = e.get("seconds") or {}
        lines.append(
            f"{e['epoch']:>5} {e['kind'] or '-':>5} {_fmt(h['mined']):>6} {_fmt(h['random']):>6} {_fmt(h['train_in_batch']):>7} "
            f"{_fmt(h['train_index']):>6} {_fmt(f['raw_rate'], True):>7} {_fmt(f['heldout_raw'], True):>7} "
            f"{_fmt(f['slipped'], True):>7} {_fmt((e.get('intents') or {}).get('cv')):>6} {_fmt(e['overlap_prev']):>7} "
            f"{sec.get('build', 0) + sec.get('mine', 0):>9.2f}s")
    lines.append("hardness = mean cosine to the anchor; fn_raw = share of raw neighbours the filter removed; "
                 "heldout/slipped = raw/mined neighbours whose target is the user's valid or test item (diagnostic)")
    for s in report.get("neighbours", []):
        lines.append(f"\nsample {s['sample_id']} (user {s['user']}, target {s['target']}, intent {s['intent']}) "
                     f"epoch {report['epoch']}:")
        lines.append(f"  {'rank':>4} {'sample':>8} {'user':>7} {'target':>7} {'sim':>8} {'cos':>6} {'reason':>11} mined heldout")
        for n in s["neighbours"]:
            lines.append(f"  {n['rank']:>4} {n['sample_id']:>8} {n['user'] if n['user'] is not None else '-':>7} "
                         f"{n['target'] if n['target'] is not None else '-':>7} {n['sim']:>8.3f} {_fmt(n['cos']):>6} "
                         f"{n['reason']:>11} {'yes' if n['mined'] else '':>5} {'HIT' if n['heldout_hit'] else ''}")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """PNG over epochs: hardness, false-negative rates, intent balance, neighbour overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [e["epoch"] for e in report["per_epoch"]]

    def series(get):  # type: ignore[no-untyped-def]
        return [np.nan if (v := get(e)) is None else v for e in report["per_epoch"]]

    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    a = ax[0, 0]
    a.plot(eps, series(lambda e: e["hardness"]["mined"]), "o-", label="mined (epoch start)")
    a.plot(eps, series(lambda e: e["hardness"]["random"]), "o-", label="random samples (epoch start)")
    a.plot(eps, series(lambda e: e["hardness"]["train_in_batch"]), "s--", label="in-batch (training)")
    a.plot(eps, series(lambda e: e["hardness"]["train_index"]), "s--", label="mined, used (training)")
    a.set_title("hardness: cosine to the anchor")
    a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(eps, series(lambda e: e["false_negatives"]["raw_rate"]), "o-", label="raw neighbours removed by filter")
    a.plot(eps, series(lambda e: e["false_negatives"]["heldout_raw"]), "o-", label="raw: target = held-out item")
    a.plot(eps, series(lambda e: e["false_negatives"]["slipped"]), "o-", label="mined: target = held-out item")
    a.set_title("false negatives (share)")
    a.legend(fontsize=8)
    a = ax[1, 0]
    a.plot(eps, series(lambda e: (e.get("intents") or {}).get("cv")), "o-", label="size CV")
    a.plot(eps, series(lambda e: (e.get("intents") or {}).get("largest_share")), "o-", label="largest cluster share")
    a.set_title("intent cluster balance")
    a.legend(fontsize=8)
    a = ax[1, 1]
    a.plot(eps, series(lambda e: e["overlap_prev"]), "o-")
    a.set_ylim(0, 1)
    a.set_title("mined-set overlap with previous epoch (Jaccard)")
    for a in ax.flat:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.suptitle(f"negative index: {report['run_dir']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- item negatives


def item_negatives(state: dict[str, Any], cfg: Any, samples: int = 2048, mined: int = 0,
                   seed: int = 0) -> dict[str, Any]:
    """How hard the sampled L_rec's item negatives are for a model (``negatives inspect --items``).

    For ``samples`` training samples (seeded), in eval mode: the anchor's score (inner product)
    and cosine to the items each source would give it, in batches of ``train.batch_size``:
    ``in_batch`` (the other anchors' targets), ``random`` (``loss.sampled_random`` draws, by
    popularity when ``loss.sampled_popularity``) and ``mined`` (the item index's top ``mined``
    items, default ``loss.sampled_mined`` or 64), each without the sample's own window items as
    in training. ``above_target`` is the share of a source's items scoring above the sample's
    target. ``heldout`` is the share of a source's items that are the user's validation or test
    item, a diagnostic computed here afterwards: training never reads those items.

    Args:
        state: the encoder's weights; cfg: the run's config (a ``config.Config``).
    Returns:
        {"samples", "mined_k", "index": {kind, build_seconds}, "sources": {name: {score, cos,
        above_target, heldout}}, "target_score"}.
    """
    import torch

    from fenrec_dist.data.dataset import load_prepared
    from fenrec_dist.model import build_encoder
    from fenrec_dist.negatives.item_index import ItemIndex

    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len, horizon=cfg.data.horizon)
    enc = build_encoder(cfg.model, data.num_items, data.max_len)
    enc.load_state_dict(state)
    enc.eval()
    items = enc.item_weights().detach().float()
    rng = np.random.default_rng(seed)
    n = min(samples, len(data.train))
    rows = rng.choice(len(data.train), n, replace=False)
    with torch.no_grad():
        z = torch.cat([enc(torch.from_numpy(data.train.inputs[rows[i:i + 512]].astype(np.int64)))
                       for i in range(0, n, 512)]).float()
    future = data.train.future[rows].astype(np.int64)
    flen = data.train.future_len[rows]
    window = np.where(np.arange(future.shape[1])[None, :] < flen[:, None], future, 0)
    target = future[:, 0]
    ho = _heldout_arrays({int(u): (int(v), int(t)) for u, v, t in zip(data.eval.user, data.eval.valid, data.eval.test)},
                         data.train.user[rows])
    k = mined or cfg.loss.sampled_mined or 64
    index = ItemIndex.build(items.numpy(), cfg.negatives, seed=seed)
    n_random = max(cfg.loss.sampled_random, 1)
    q = None  # the training draw (losses/sampled_softmax.CandidateSampler): uniform, or add-one popularity
    if cfg.loss.sampled_popularity:
        q = np.bincount(data.train.target.astype(np.int64), minlength=data.num_items + 1)[1:] + 1.0
        q /= q.sum()
    bsz = cfg.train.batch_size
    cand: dict[str, list[np.ndarray]] = {"in_batch": [], "random": [], "mined": []}
    for i in range(0, n, bsz):
        sl = slice(i, min(i + bsz, n))
        b = sl.stop - sl.start
        tb = target[sl]
        inb = np.broadcast_to(tb[None, :], (b, b)).copy()
        inb[np.arange(b), np.arange(b)] = 0  # the anchor's own target is its positive
        cand["in_batch"].append(inb)
        draw = rng.choice(data.num_items, n_random, p=q) + 1
        cand["random"].append(np.broadcast_to(draw[None, :], (b, n_random)).copy())
        cand["mined"].append(index.mine(z[sl].numpy(), k, window[sl]))
    zn = torch.nn.functional.normalize(z, dim=1)
    itn = torch.nn.functional.normalize(items, dim=1)
    t_score = (z * items[torch.from_numpy(target)]).sum(1)
    out: dict[str, Any] = {}
    for name, blocks in cand.items():
        scores, coss, above, held, count = 0.0, 0.0, 0.0, 0.0, 0
        at = 0
        for blk in blocks:
            b = blk.shape[0]
            ids = torch.from_numpy(blk)
            rows_w = torch.from_numpy(window[at:at + b])
            ok = (ids > 0) & ~(ids[:, :, None] == rows_w[:, None, :]).any(dim=2)
            s = (z[at:at + b, None, :] * items[ids]).sum(-1)
            c = (zn[at:at + b, None, :] * itn[ids]).sum(-1)
            h = (ids[:, :, None] == torch.from_numpy(ho[at:at + b])[:, None, :]).any(dim=2)
            scores += float(s[ok].sum())
            coss += float(c[ok].sum())
            above += float((s > t_score[at:at + b, None])[ok].sum())
            held += float(h[ok].sum())
            count += int(ok.sum())
            at += b
        m = max(count, 1)
        out[name] = {"score": scores / m, "cos": coss / m, "above_target": above / m, "heldout": held / m,
                     "items": count}
    return {"samples": n, "mined_k": k, "index": {"kind": index.kind, "build_seconds": round(index.build_seconds, 3)},
            "target_score": float(t_score.mean()), "sources": out}


def format_item_report(report: dict[str, Any]) -> str:
    """A table of ``item_negatives``' report."""
    lines = [f"item negatives of {report['samples']} training samples (eval mode; mined k={report['mined_k']}, "
             f"index {report['index']['kind']}); mean target score {report['target_score']:.3f}",
             f"{'source':>9} {'items':>9} {'score':>8} {'cos':>7} {'>target':>8} {'heldout':>8}"]
    for name, s in report["sources"].items():
        lines.append(f"{name:>9} {s['items']:>9,} {s['score']:>8.3f} {s['cos']:>7.3f} {_fmt(s['above_target'], True):>8} "
                     f"{_fmt(s['heldout'], True):>8}")
    lines.append("score = inner product with the anchor; >target = share scoring above the sample's target; "
                 "heldout = share that is the user's valid or test item (a diagnostic; training never reads them)")
    return "\n".join(lines)
