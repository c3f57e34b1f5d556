"""Acceptance counts on the benchmark files in ../shared/data (skipped when absent)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fenrec_dist.data.dataset import load_prepared
from fenrec_dist.data.prepare import prepare

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

EXPECTED = {
    # name: users, items, interactions, train samples, future windows of 3/2/1 items (None = unchecked)
    "Beauty": (22_363, 12_101, 198_502, 131_413, (86_687, 22_363, 22_363)),
    "Sports_and_Outdoors": (35_598, 18_357, 296_337, 189_543, None),
    "Yelp": (30_431, 20_033, 316_354, 225_061, None),
}


def _source(name: str) -> Path:
    path = DATA / f"{name}.txt"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


def _check_protocol(data, max_len: int) -> None:
    """Inputs and futures lie inside the training part, by position; inputs most recent last."""
    tr, ev = data.train, data.eval
    # row of each sample's user in the eval table
    row = np.searchsorted(ev.user, tr.user)
    assert (ev.user[row] == tr.user).all()
    hist_len = np.diff(ev.history_offsets)[row]
    start = ev.history_offsets[:-1][row]
    pos = tr.position.astype(np.int64)
    assert (pos >= 1).all() and (pos < hist_len).all()
    assert (tr.input_len == np.minimum(pos, max_len)).all()
    assert (pos + tr.future_len <= hist_len).all()  # never reaches valid/test
    # target and future by position in the history
    assert (ev.history_values[start + pos] == tr.target).all()
    assert (tr.future[:, 0] == tr.target).all()
    for k in range(tr.future.shape[1]):
        has = tr.future_len > k
        assert (tr.future[has, k] == ev.history_values[start[has] + pos[has] + k]).all()
        assert (tr.future[~has, k] == 0).all()
    # inputs: last column = train[t-1], left padding
    assert (tr.inputs[:, -1] == ev.history_values[start + pos - 1]).all()
    for k in range(1, max_len + 1):
        has = tr.input_len >= k
        assert (tr.inputs[has, -k] == ev.history_values[start[has] + pos[has] - k]).all()
        assert (tr.inputs[~has, -k] == 0).all()
    # canonical sample ids
    assert (tr.sample_id == np.arange(len(tr))).all()
    order = np.lexsort((tr.position, tr.user))
    assert (order == np.arange(len(tr))).all()


@pytest.mark.data
@pytest.mark.parametrize("name", list(EXPECTED))
def test_benchmark_counts(name: str, tmp_path: Path) -> None:
    src = _source(name)
    users, items, interactions, samples, windows = EXPECTED[name]
    t0 = time.perf_counter()
    m = prepare(src, tmp_path / name, num_shards=3)
    elapsed = time.perf_counter() - t0
    assert (m["users"], m["items"], m["interactions"], m["train_samples"]) == (users, items, interactions, samples)
    assert m["dropped"]["too_short_users"] == 0
    assert m["id_maps"] is None
    assert sum(s["rows"] for s in m["shards"]) == samples
    assert sum(m["future_window_counts"].values()) == samples
    if windows is not None:
        assert tuple(m["future_window_counts"][k] for k in ("3", "2", "1")) == windows
    assert elapsed < 10.0, f"prepare took {elapsed:.1f}s"
    t0 = time.perf_counter()
    data = load_prepared(tmp_path / name)
    assert time.perf_counter() - t0 < 5.0
    assert len(data.train) == samples and len(data.eval) == users and data.num_items == items
    assert data.train.inputs.shape == (samples, 50) and data.train.future.shape == (samples, 3)
    assert data.train.target.max() <= items and data.train.target.min() >= 1
    _check_protocol(data, 50)


@pytest.mark.data
def test_yelp_repeated_items_by_position(tmp_path: Path) -> None:
    """Yelp repeats items within a user: soft-label windows follow positions, not first occurrences."""
    src = _source("Yelp")
    prepare(src, tmp_path / "yelp", num_shards=1)
    data = load_prepared(tmp_path / "yelp", max_len=10)
    tr, ev = data.train, data.eval
    row = np.searchsorted(ev.user, tr.user)
    start = ev.history_offsets[:-1][row]
    pos = tr.position.astype(np.int64)
    # samples whose target occurred earlier in the user's history
    first = np.array([
        int(np.flatnonzero(ev.history_values[s:s + p + 1] == t)[0]) for s, p, t in
        zip(start[:20000], pos[:20000], tr.target[:20000])
    ])
    repeated = np.flatnonzero(first < pos[:20000])
    assert len(repeated) > 0
    i = repeated[0]
    assert tr.future[i, 0] == tr.target[i]
    assert tr.future_len[i] >= 1
    k = int(tr.future_len[i])
    np.testing.assert_array_equal(tr.future[i, :k], ev.history_values[start[i] + pos[i]:start[i] + pos[i] + k])
    assert tr.input_len.max() == 10
    _check_protocol(data, 10)


@pytest.mark.data
def test_beauty_fast(tmp_path: Path) -> None:
    src = _source("Beauty")
    t0 = time.perf_counter()
    prepare(src, tmp_path / "b")
    assert time.perf_counter() - t0 < 5.0
