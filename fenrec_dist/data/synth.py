"""Seeded synthetic interaction logs with planted sequential structure.

The generator plants three kinds of structure, so that a sequential model has something
to learn that item popularity alone does not give:

* **Intents.** The catalogue is split into ``intents`` clusters. A user is in one intent at
  a time and stays in it with probability ``intent_stay`` per step, otherwise drifts to
  another (uniformly chosen) intent and enters it at a popularity-weighted item.
* **Sparse Markov transitions.** Inside an intent every item has a few designated successors
  (``successors``, drawn uniformly from its intent, so they are not simply the popular
  items). With probability ``markov_strength`` the next item is one of the previous
  item's successors (probabilities ``SUCCESSOR_PROBS``); otherwise it is a
  popularity-weighted draw inside the intent (Zipf exponent ``popularity_alpha`` over a
  random order of the intent's items; 0 = uniform).
* **Foreshadowing.** Every item has a designated "foreshadowed" item anywhere in the
  catalogue. With probability ``foreshadow`` an emitted item schedules its foreshadowed item
  2-4 steps later (one pending item per user at a time). A foreshadowed item is an
  interjection: it does not move the Markov state, so the user continues where they were.
  Only a model that looks further back than one item can predict it.

Unless ``allow_repeats``, a user does not interact with the same item twice (as in the
Amazon benchmark files): a draw that hits the user's history is redrawn a few times from the
same mechanism, then uniformly from the catalogue, finally from the items the user has not
seen (lengths are capped at ``items``).

Determinism and memory: the structure comes from ``default_rng([seed, 0])`` and users are
generated in chunks of ``CHUNK_USERS``, chunk ``c`` from ``default_rng([seed, 1, c])``, with
numpy vectorised over the chunk (the last chunk is generated whole and truncated, so the
first ``u`` users are the same whatever ``users`` is). The output is a pure function of the
config (for a given numpy bit generator, PCG64), and memory is
O(items * successors + CHUNK_USERS * max_length) however many users are generated.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_USERS = 4096
SUCCESSOR_PROBS: tuple[float, ...] = (0.55, 0.3, 0.15)  # probability of the 1st, 2nd, 3rd successor
FORESHADOW_GAPS = (2, 5)  # a foreshadowed item arrives 2..4 steps after its cause
_REDRAWS = 6  # redraws per mechanism when a draw repeats a history item


@dataclass
class SynthConfig:
    """What to generate. ``users * mean_length`` is the expected number of interactions."""

    users: int = 2000
    items: int = 500
    intents: int = 10  # latent intents; each is a cluster of items
    mean_length: float = 12.0  # mean interactions per user (>= 3 per user guaranteed)
    intent_stay: float = 0.8  # probability of staying in the current intent each step
    markov_strength: float = 0.8  # within an intent, probability of following a Markov transition
    foreshadow: float = 0.1  # probability that an item is followed (2-4 steps later) by its foreshadowed item
    popularity_alpha: float = 1.0  # Zipf exponent of item popularity within intents
    seed: int = 0
    successors: int = 3  # designated successors per item (at most len(SUCCESSOR_PROBS))
    max_length: int = 200  # cap on a user's length (lengths are 3 + geometric)
    allow_repeats: bool = False  # False: an item appears at most once per user (Amazon-like)

    def validate(self) -> None:
        if self.users < 1:
            raise ValueError("users must be >= 1")
        if self.intents < 1 or self.items < 2 * self.intents:
            raise ValueError("need intents >= 1 and items >= 2 * intents")
        if not 3 <= self.mean_length <= self.max_length:
            raise ValueError("need 3 <= mean_length <= max_length")
        for name in ("intent_stay", "markov_strength", "foreshadow"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.popularity_alpha < 0:
            raise ValueError("popularity_alpha must be >= 0")
        if not 1 <= self.successors <= len(SUCCESSOR_PROBS):
            raise ValueError(f"successors must be in [1, {len(SUCCESSOR_PROBS)}]")


@dataclass
class SynthStructure:
    """The planted structure (a pure function of the config).

    intent_items: int64 [I] item ids grouped by intent; offsets: int64 [G + 1] CSR offsets;
    intent_cdf: float64 [I] ``g + cumulative popularity`` within intent g (last entry g + 1);
    item_intent: int64 [I + 1] intent of each item (-1 for padding);
    succ: int64 [I + 1, S] designated successors; succ_cdf: float64 [S];
    fore: int64 [I + 1] foreshadowed item of each item; num_intents: G.
    """

    intent_items: np.ndarray
    offsets: np.ndarray
    intent_cdf: np.ndarray
    item_intent: np.ndarray
    succ: np.ndarray
    succ_cdf: np.ndarray
    fore: np.ndarray
    num_intents: int

    @classmethod
    def build(cls, cfg: SynthConfig) -> "SynthStructure":
        rng = np.random.default_rng([cfg.seed, 0])
        n_items, g = cfg.items, cfg.intents
        intent_items = (rng.permutation(n_items) + 1).astype(np.int64)
        sizes = np.full(g, n_items // g, dtype=np.int64)
        sizes[: n_items % g] += 1
        offsets = np.zeros(g + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        intent_of_pos = np.repeat(np.arange(g, dtype=np.int64), sizes)
        pos_in_intent = np.arange(n_items, dtype=np.int64) - offsets[intent_of_pos]
        # Zipf popularity over the (random) order of the items inside each intent.
        w = (pos_in_intent + 1.0) ** (-cfg.popularity_alpha)
        totals = np.add.reduceat(w, offsets[:-1])
        cum = np.cumsum(w)
        before = np.concatenate([[0.0], cum[offsets[1:-1] - 1]]) if g > 1 else np.zeros(1)
        intent_cdf = intent_of_pos + (cum - before[intent_of_pos]) / totals[intent_of_pos]
        intent_cdf[offsets[1:] - 1] = np.arange(1, g + 1)  # exact segment ends
        item_intent = np.full(n_items + 1, -1, dtype=np.int64)
        item_intent[intent_items] = intent_of_pos
        # Successors: distinct-ish random offsets inside the intent (never the item itself).
        s = cfg.successors
        m = sizes[intent_of_pos]
        off = rng.integers(1, m[:, None], size=(n_items, s))
        succ = np.zeros((n_items + 1, s), dtype=np.int64)
        succ[intent_items] = intent_items[offsets[intent_of_pos][:, None] + (pos_in_intent[:, None] + off) % m[:, None]]
        p = np.asarray(SUCCESSOR_PROBS[:s], dtype=np.float64)
        succ_cdf = np.cumsum(p / p.sum())
        succ_cdf[-1] = 1.0
        # Foreshadowed item: any other item of the catalogue.
        fore = np.zeros(n_items + 1, dtype=np.int64)
        ids = np.arange(1, n_items + 1, dtype=np.int64)
        fore[1:] = (ids - 1 + rng.integers(1, n_items, size=n_items)) % n_items + 1
        return cls(intent_items, offsets, intent_cdf, item_intent, succ, succ_cdf, fore, g)

    def popular_draw(self, intent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Popularity-weighted item of each given intent. intent int64 [n] -> int64 [n]."""
        u = rng.random(len(intent))
        idx = np.searchsorted(self.intent_cdf, intent + u, side="right")
        idx = np.clip(idx, self.offsets[intent], self.offsets[intent + 1] - 1)
        return self.intent_items[idx]

    def successor_draw(self, prev: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One designated successor of each item. prev int64 [n] (>= 1) -> int64 [n]."""
        j = np.searchsorted(self.succ_cdf, rng.random(len(prev)), side="right")
        j = np.minimum(j, self.succ.shape[1] - 1)
        return self.succ[prev, j]


def _lengths(cfg: SynthConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n]: 3 + geometric with mean ``mean_length``, capped."""
    cap = cfg.max_length if cfg.allow_repeats else min(cfg.max_length, cfg.items)
    p = 1.0 / (cfg.mean_length - 2.0)
    return np.minimum(2 + rng.geometric(min(p, 1.0), size=n), cap).astype(np.int64)


def _in_history(hist: np.ndarray, t: int, rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """bool [len(rows)]: whether cand[i] is among hist[rows[i], :t]."""
    if t == 0 or len(rows) == 0:
        return np.zeros(len(rows), dtype=bool)
    return (hist[rows, :t] == cand[:, None]).any(axis=1)


def _chunk(cfg: SynthConfig, st: SynthStructure, c: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` users of chunk ``c``.

    Returns:
        (hist int64 [n, Lmax] 0-padded on the right, lengths int64 [n]), users in id order.
    """
    rng = np.random.default_rng([cfg.seed, 1, c])
    lengths = _lengths(cfg, n, rng)
    order = np.argsort(-lengths, kind="stable")  # longest first: the active users are a prefix
    sl = lengths[order]
    lmax = int(sl[0])
    hist = np.zeros((n, lmax), dtype=np.int64)
    g = st.num_intents
    intent = rng.integers(0, g, size=n)
    prev = np.zeros(n, dtype=np.int64)  # Markov state: the last non-foreshadowed item
    pend_item = np.zeros(n, dtype=np.int64)
    pend_due = np.full(n, -1, dtype=np.int64)
    for t in range(lmax):
        a = int(np.searchsorted(-sl, -t, side="left"))  # users with length > t (a prefix)
        rows = np.arange(a)
        cur_intent = intent[:a]
        if t == 0:
            cand = st.popular_draw(cur_intent, rng)
            markov = np.zeros(a, dtype=bool)
            due = np.zeros(a, dtype=bool)
        else:
            due = pend_due[:a] == t
            switch = (rng.random(a) >= cfg.intent_stay) & ~due
            if g > 1:
                cur_intent = np.where(switch, (cur_intent + rng.integers(1, g, size=a)) % g, cur_intent)
            markov = ~switch & (rng.random(a) < cfg.markov_strength) & (prev[:a] > 0)
            cand = np.where(markov, st.successor_draw(np.maximum(prev[:a], 1), rng), st.popular_draw(cur_intent, rng))
            if due.any():
                fresh = due if cfg.allow_repeats else due & ~_in_history(hist, t, rows, pend_item[:a])
                cand = np.where(fresh, pend_item[:a], cand)
                due = fresh
        if not cfg.allow_repeats and t > 0:
            bad = np.flatnonzero(_in_history(hist, t, rows, cand))
            for attempt in range(3 * _REDRAWS):
                if len(bad) == 0:
                    break
                if attempt < 2 * _REDRAWS:
                    use_markov = markov[bad] & (attempt < _REDRAWS)
                    new = np.where(
                        use_markov,
                        st.successor_draw(np.maximum(prev[bad], 1), rng),
                        st.popular_draw(cur_intent[bad], rng),
                    )
                else:
                    new = rng.integers(1, cfg.items + 1, size=len(bad))
                cand[bad] = new
                bad = bad[_in_history(hist, t, bad, new)]
            for r in bad:  # rare (tiny catalogues): a uniform item the user has not seen
                cand[r] = rng.choice(np.setdiff1d(np.arange(1, cfg.items + 1), hist[r, :t]))
        hist[:a, t] = cand
        regular = ~due
        prev[:a] = np.where(regular, cand, prev[:a])
        intent[:a] = np.where(regular, st.item_intent[cand], cur_intent)
        pend_due[:a] = np.where(due, -1, pend_due[:a])
        free = pend_due[:a] < t
        plant = free & (rng.random(a) < cfg.foreshadow)
        gaps = rng.integers(FORESHADOW_GAPS[0], FORESHADOW_GAPS[1], size=a)
        pend_item[:a] = np.where(plant, st.fore[cand], pend_item[:a])
        pend_due[:a] = np.where(plant, t + gaps, pend_due[:a])
    out = np.empty_like(hist)
    out[order] = hist
    return out, lengths


def _generate(cfg: SynthConfig) -> Iterator[tuple[int, np.ndarray]]:
    st = SynthStructure.build(cfg)
    for c, start in enumerate(range(0, cfg.users, CHUNK_USERS)):
        # Whole chunks are always generated, so user u's sequence does not depend on cfg.users.
        hist, lengths = _chunk(cfg, st, c, CHUNK_USERS)
        for j in range(min(CHUNK_USERS, cfg.users - start)):
            yield start + j + 1, hist[j, : lengths[j]].copy()


def synth_sequences(cfg: SynthConfig) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(user_id, items int64 [L])`` with user ids 1..users and item ids 1..items, in time order.

    A generator: users are produced chunk by chunk (``CHUNK_USERS`` at a time), so millions of
    users never sit in memory. Each user has ``L >= 3`` items. The config is validated eagerly.
    """
    cfg.validate()
    return _generate(cfg)


def _atomic_writer(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    return os.fdopen(fd, "w", encoding="ascii", newline="\n"), Path(tmp)


def write_synth(cfg: SynthConfig, out: str | Path, fmt: str = "csv", interleave: bool = False) -> dict:
    """Write the synthetic log atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        cfg: what to generate.
        out: destination file (parent folders are created).
        fmt: ``'seq'`` -> one line per user ``user item item ...`` (the benchmark format);
            ``'csv'`` -> header ``user,item,timestamp``, one row per interaction, with strictly
            increasing integer timestamps within a user (seeded random gaps).
        interleave: csv only; sort the rows of each chunk of users by timestamp so users are
            interleaved as in a real log (default: each user's rows are contiguous).

    Returns:
        {'path', 'format', 'users', 'items', 'interactions', 'distinct_items'}: ``items`` is the
        catalogue size ``cfg.items``; ``distinct_items`` how many of them occur.
    """
    if fmt not in ("seq", "csv"):
        raise ValueError(f"unknown format {fmt!r}; expected 'seq' or 'csv'")
    cfg.validate()
    out = Path(out)
    fh, tmp = _atomic_writer(out)
    seen = np.zeros(cfg.items + 1, dtype=bool)
    interactions = 0
    ts_rng = np.random.default_rng([cfg.seed, 2])
    try:
        with fh:
            if fmt == "csv":
                fh.write("user,item,timestamp\n")
            block: list[tuple[int, np.ndarray]] = []

            def flush() -> None:
                if not block:
                    return
                if fmt == "seq":
                    fh.write("".join(f"{u} {' '.join(map(str, s.tolist()))}\n" for u, s in block))
                else:
                    lens = np.array([len(s) for _, s in block], dtype=np.int64)
                    users = np.repeat(np.array([u for u, _ in block], dtype=np.int64), lens)
                    items = np.concatenate([s for _, s in block])
                    gaps = ts_rng.integers(60, 30 * 86400, size=len(items))
                    starts = np.repeat(np.cumsum(lens) - lens, lens)
                    first = np.zeros(len(items), dtype=bool)
                    first[np.cumsum(lens) - lens] = True
                    gaps[first] = ts_rng.integers(0, 365 * 86400, size=len(lens))
                    cum = np.cumsum(gaps)
                    ts = 1_500_000_000 + cum - np.concatenate([[0], cum])[starts]
                    if interleave:
                        o = np.argsort(ts, kind="stable")
                        users, items, ts = users[o], items[o], ts[o]
                    fh.write("".join(f"{u},{i},{t}\n" for u, i, t in zip(users.tolist(), items.tolist(), ts.tolist())))
                block.clear()

            for user, seq in synth_sequences(cfg):
                block.append((user, seq))
                seen[seq] = True
                interactions += len(seq)
                if len(block) >= CHUNK_USERS:
                    flush()
            flush()
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "path": str(out),
        "format": fmt,
        "users": cfg.users,
        "items": cfg.items,
        "interactions": int(interactions),
        "distinct_items": int(seen[1:].sum()),
    }
