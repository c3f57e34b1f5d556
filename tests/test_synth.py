"""Synthetic logs: deterministic, well-formed, streaming, and carrying a sequential signal."""

from __future__ import annotations

import itertools
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest

from fenrec_dist.baselines import MarkovBaseline, eval_arrays, evaluate_popularity, item_counts, train_parts
from fenrec_dist.data.synth import CHUNK_USERS, SynthConfig, SynthStructure, synth_sequences, write_synth


def _seqs(cfg: SynthConfig) -> list[np.ndarray]:
    users, seqs = [], []
    for u, s in synth_sequences(cfg):
        users.append(u)
        seqs.append(s)
    assert users == list(range(1, cfg.users + 1))
    return seqs


@pytest.fixture(scope="module")
def default_seqs() -> list[np.ndarray]:
    return _seqs(SynthConfig())


def test_deterministic_for_a_seed():
    cfg = SynthConfig(users=300, items=120, intents=4, seed=7)
    a, b = _seqs(cfg), _seqs(cfg)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = _seqs(SynthConfig(users=300, items=120, intents=4, seed=8))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c))


def test_prefix_stable_across_user_counts():
    small = _seqs(SynthConfig(users=50, seed=3))
    big = _seqs(SynthConfig(users=CHUNK_USERS + 10, seed=3))
    assert all(np.array_equal(x, y) for x, y in zip(small, big))


def test_ids_lengths_and_no_repeats(default_seqs):
    cfg = SynthConfig()
    lens = np.array([len(s) for s in default_seqs])
    assert lens.min() >= 3 and lens.max() <= cfg.max_length
    assert abs(lens.mean() - cfg.mean_length) < 0.1 * cfg.mean_length
    allit = np.concatenate(default_seqs)
    assert allit.dtype == np.int64 and allit.min() >= 1 and allit.max() <= cfg.items
    assert all(len(np.unique(s)) == len(s) for s in default_seqs)
    counts = np.bincount(allit, minlength=cfg.items + 1)[1:]
    assert (counts > 0).all()  # every item is reachable
    assert counts.max() < 0.02 * len(allit)  # no item dominates


def test_repeats_allowed_and_small_catalogue():
    cfg = SynthConfig(users=200, items=8, intents=2, mean_length=6, allow_repeats=True)
    seqs = _seqs(cfg)
    assert all(len(s) >= 3 and s.min() >= 1 and s.max() <= 8 for s in seqs)
    assert any(len(np.unique(s)) < len(s) for s in seqs)
    no_rep = _seqs(SynthConfig(users=200, items=8, intents=2, mean_length=6))
    assert all(len(s) <= 8 and len(np.unique(s)) == len(s) for s in no_rep)


def test_invalid_configs_raise_eagerly():
    for bad in (dict(mean_length=2.0), dict(items=10, intents=6), dict(intent_stay=1.5), dict(users=0)):
        with pytest.raises(ValueError):
            synth_sequences(SynthConfig(**bad))


def test_streams_without_materialising_users():
    gen = synth_sequences(SynthConfig(users=10**9))
    assert isinstance(gen, types.GeneratorType)
    first = list(itertools.islice(gen, 5))
    assert [u for u, _ in first] == [1, 2, 3, 4, 5]


def _peak_bytes(users: int) -> int:
    tracemalloc.start()
    try:
        for _ in synth_sequences(SynthConfig(users=users, seed=1)):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_users():
    small, big = _peak_bytes(CHUNK_USERS), _peak_bytes(6 * CHUNK_USERS)
    assert big < 1.5 * small + (1 << 20)


def test_planted_structure_is_present(default_seqs):
    cfg = SynthConfig()
    st = SynthStructure.build(cfg)
    pairs = np.concatenate([np.stack([s[:-1], s[1:]], 1) for s in default_seqs])
    same_intent = (st.item_intent[pairs[:, 0]] == st.item_intent[pairs[:, 1]]).mean()
    assert same_intent > 0.6  # chance would be ~1/intents
    is_succ = (st.succ[pairs[:, 0]] == pairs[:, 1:]).any(1).mean()
    assert is_succ > 0.4  # chance ~ successors/items
    # foreshadowing: item fore[x] appears 2..4 steps after x far more often than chance
    hits = total = 0
    for s in default_seqs:
        for gap in (2, 3, 4):
            hits += int((st.fore[s[:-gap]] == s[gap:]).sum())
            total += max(len(s) - gap, 0)
    assert hits / total > 10 / cfg.items


def test_markov_beats_popularity(default_seqs):
    cfg = SynthConfig()
    train = train_parts(default_seqs)
    last, targets, ex = eval_arrays(default_seqs, "test")
    pop = evaluate_popularity(item_counts(train, cfg.items), targets, ex, cfg.items)
    mk = MarkovBaseline.fit(train, cfg.items).evaluate(last, targets, ex)
    assert pop["HR@10"] < 0.2  # popularity alone is weak
    assert mk["HR@10"] > 1.5 * pop["HR@10"]
    assert mk["NDCG@10"] > 1.5 * pop["NDCG@10"]


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    assert lines[0] == "user,item,timestamp"
    a = np.array([[int(x) for x in ln.split(",")] for ln in lines[1:]], dtype=np.int64)
    return a[:, 0], a[:, 1], a[:, 2]


@pytest.mark.parametrize("interleave", [False, True])
def test_write_csv_matches_sequences(tmp_path, interleave):
    cfg = SynthConfig(users=150, items=60, intents=3, seed=5)
    out = tmp_path / "sub" / "log.csv"
    summary = write_synth(cfg, out, "csv", interleave=interleave)
    users, items, ts = _read_csv(out)
    seqs = _seqs(cfg)
    assert summary["users"] == 150 and summary["items"] == 60
    assert summary["interactions"] == len(items) == sum(len(s) for s in seqs)
    order = np.lexsort((ts, users))
    users, items, ts = users[order], items[order], ts[order]
    same_user = users[1:] == users[:-1]
    assert (ts[1:][same_user] > ts[:-1][same_user]).all()  # strictly increasing per user
    bounds = np.flatnonzero(np.r_[True, ~same_user, True])
    assert [items[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])] == [s.tolist() for s in seqs]
    assert [p.name for p in out.parent.iterdir()] == ["log.csv"]  # no temp file left


def test_write_seq_is_byte_deterministic(tmp_path):
    cfg = SynthConfig(users=100, items=50, intents=5, seed=2)
    s1 = write_synth(cfg, tmp_path / "a.txt", "seq")
    write_synth(cfg, tmp_path / "b.txt", "seq")
    a = (tmp_path / "a.txt").read_bytes()
    assert a == (tmp_path / "b.txt").read_bytes()
    lines = a.decode().splitlines()
    assert len(lines) == 100 and s1["interactions"] == sum(len(ln.split()) - 1 for ln in lines)
    assert [ln.split()[1:] for ln in lines] == [[str(i) for i in s] for s in _seqs(cfg)]
    write_synth(cfg, tmp_path / "c.csv")
    write_synth(cfg, tmp_path / "d.csv")
    assert (tmp_path / "c.csv").read_bytes() == (tmp_path / "d.csv").read_bytes()


def test_write_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError):
        write_synth(SynthConfig(users=10), tmp_path / "x.json", "json")
    assert list(tmp_path.iterdir()) == []
