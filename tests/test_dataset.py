"""load_prepared and the in-memory tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fenrec_dist.data.dataset import (
    EvalTable,
    left_pad,
    load_prepared,
    load_sample_table,
    right_pad,
    same_target_index,
    table_to_samples,
)
from fenrec_dist.data.errors import DataError
from fenrec_dist.data.prepare import prepare

from test_prepare import read_eval, read_samples, write_seq

SEQS = {
    3: [1, 2, 3, 4, 5, 6, 7, 8],
    1: [9, 8, 7, 6, 5],
    2: [4, 4, 4],
    5: [2, 9, 2, 9, 2, 9, 1],
}


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    src = write_seq(tmp_path / "s.txt", [" ".join(map(str, [u, *s])) for u, s in SEQS.items()])
    prepare(src, tmp_path / "out", max_len=4, horizon=2, num_shards=3, num_partitions=2)
    return tmp_path / "out"


def test_pads() -> None:
    values = np.array([1, 2, 3, 4, 5, 6], dtype=np.int32)
    offsets = np.array([0, 1, 1, 6])
    np.testing.assert_array_equal(left_pad(values, offsets, 3), [[0, 0, 1], [0, 0, 0], [4, 5, 6]])
    np.testing.assert_array_equal(right_pad(values, offsets, 3), [[1, 0, 0], [0, 0, 0], [2, 3, 4]])


def test_round_trip(prepared: Path) -> None:
    data = load_prepared(prepared)
    rows = read_samples(prepared)
    tr = data.train
    assert (data.max_len, data.horizon, data.num_items) == (4, 2, 9)
    assert len(tr) == len(rows) == data.manifest["train_samples"]
    for i, r in enumerate(rows):
        assert tr.sample_id[i] == r["sample_id"] and tr.user[i] == r["user"] and tr.position[i] == r["position"]
        assert tr.inputs[i].tolist() == [0] * (4 - len(r["input"])) + r["input"]
        assert tr.input_len[i] == len(r["input"]) and tr.target[i] == r["target"]
        assert tr.future[i].tolist() == r["future"] + [0] * (3 - len(r["future"]))
        assert tr.future_len[i] == len(r["future"])
    dtypes = {f: getattr(tr, f).dtype for f in tr.__dataclass_fields__}
    assert dtypes == {"sample_id": np.int64, "user": np.int64, "inputs": np.int32, "input_len": np.int32,
                      "target": np.int32, "future": np.int32, "future_len": np.int32, "position": np.int32}
    ev = data.eval
    assert ev.user.tolist() == [1, 2, 3, 5]
    for u, r in zip(range(len(ev)), read_eval(prepared)):
        h = ev.history_values[ev.history_offsets[u]:ev.history_offsets[u + 1]].tolist()
        assert h == r["history"] and ev.valid[u] == r["valid"] and ev.test[u] == r["test"]


def test_smaller_max_len_keeps_most_recent(prepared: Path) -> None:
    full = load_prepared(prepared)
    short = load_prepared(prepared, max_len=2)
    assert short.max_len == 2 and short.train.inputs.shape == (len(full.train), 2)
    np.testing.assert_array_equal(short.train.inputs, full.train.inputs[:, -2:])
    np.testing.assert_array_equal(short.train.input_len, np.minimum(full.train.input_len, 2))
    with pytest.raises(DataError, match=r"manifest\.json: max_len 5 exceeds the prepared max_len 4"):
        load_prepared(prepared, max_len=5)


def test_smaller_horizon_cuts_the_future_window(prepared: Path) -> None:
    full = load_prepared(prepared)
    for h in (0, 1):
        cut = load_prepared(prepared, horizon=h)
        assert cut.horizon == h and cut.train.future.shape == (len(full.train), h + 1)
        np.testing.assert_array_equal(cut.train.future, full.train.future[:, : h + 1])
        np.testing.assert_array_equal(cut.train.future_len, np.minimum(full.train.future_len, h + 1))
    with pytest.raises(DataError, match=r"manifest\.json: horizon 3 is outside 0\.\.2"):
        load_prepared(prepared, horizon=3)


def test_eval_inputs_and_exclusions() -> None:
    ev = EvalTable(
        user=np.array([1, 2], dtype=np.int64),
        history_values=np.array([5, 6, 7, 8], dtype=np.int32),
        history_offsets=np.array([0, 3, 4]),
        valid=np.array([9, 3], dtype=np.int32),
        test=np.array([1, 2], dtype=np.int32),
    )
    np.testing.assert_array_equal(ev.inputs("valid", 2), [[6, 7], [0, 8]])
    np.testing.assert_array_equal(ev.inputs("test", 3), [[6, 7, 9], [0, 8, 3]])
    v, o = ev.exclude("valid")
    assert v.tolist() == [5, 6, 7, 8] and o.tolist() == [0, 3, 4]
    v, o = ev.exclude("test")
    assert v.tolist() == [5, 6, 7, 9, 8, 3] and o.tolist() == [0, 4, 6]
    sub = ev.subset(np.array([1]))
    assert sub.user.tolist() == [2] and sub.history_values.tolist() == [8] and sub.history_offsets.tolist() == [0, 1]
    assert sub.inputs("test", 2).tolist() == [[8, 3]]
    with pytest.raises(ValueError):
        ev.inputs("train", 2)


def test_same_target_index() -> None:
    target = np.array([3, 1, 3, 2, 3], dtype=np.int32)
    order, offsets = same_target_index(target, 4)
    assert offsets.tolist() == [0, 0, 1, 2, 5, 5]
    assert [order[offsets[i]:offsets[i + 1]].tolist() for i in range(5)] == [[], [1], [3], [0, 2, 4], []]


def test_subset_and_worker_shards(prepared: Path) -> None:
    data = load_prepared(prepared)
    sub = data.train.subset(np.array([2, 0]))
    assert sub.sample_id.tolist() == [2, 0] and sub.inputs.shape == (2, 4)
    manifest = data.manifest
    parts = [load_sample_table([prepared / s["file"]], 4, 2) for s in manifest["shards"]]
    ids = np.concatenate([p.sample_id for p in parts])
    assert sorted(ids.tolist()) == list(range(len(data.train)))
    for p in parts:
        assert (np.diff(p.sample_id) > 0).all()
    # unsorted Arrow input comes back sorted by sample_id
    t = pq.read_table(prepared / manifest["shards"][0]["file"])
    rev = table_to_samples(t.take(np.arange(t.num_rows)[::-1]), 4, 2)
    assert (np.diff(rev.sample_id) > 0).all()
    # a smaller horizon keeps the first items of the window
    h0 = load_sample_table([prepared / s["file"] for s in manifest["shards"]], 4, 0)
    np.testing.assert_array_equal(h0.future[:, 0], data.train.target)
    assert h0.future.shape[1] == 1 and (h0.future_len == 1).all()


def test_missing_and_corrupt_files(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothing/manifest\.json: missing manifest"):
        load_prepared(tmp_path / "nothing")
    mpath = prepared / "manifest.json"
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DataError, match=r"manifest\.json: format_version 99 is not supported"):
        load_prepared(prepared)
    mpath.write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: corrupt manifest"):
        load_prepared(prepared)
    mpath.write_text(json.dumps(manifest))
    shard = prepared / manifest["shards"][1]["file"]
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"part-00001\.parquet: corrupt or unreadable"):
        load_prepared(prepared)
    shard.unlink()
    with pytest.raises(DataError, match=r"part-00001\.parquet: missing file"):
        load_prepared(prepared)
    shard.write_bytes(good)
    mpath.write_text(json.dumps({**manifest, "shards": manifest["shards"][:1] + [
        {**manifest["shards"][1], "rows": manifest["shards"][1]["rows"] + 1}] + manifest["shards"][2:]}))
    with pytest.raises(DataError, match=r"part-00001\.parquet: \d+ rows, the manifest says"):
        load_prepared(prepared)
    load_prepared(prepared, columns_check=False)


def test_more_shards_than_samples(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", ["1 1 2 3 4", "2 5 6 7"])
    m = prepare(src, tmp_path / "out", num_shards=5)
    assert [s["rows"] for s in m["shards"]].count(0) == 4 and len(m["shards"]) == 5
    data = load_prepared(tmp_path / "out")
    assert len(data.train) == 1 and data.eval.user.tolist() == [1, 2]
    empty = load_sample_table([], 50, 2)
    assert len(empty) == 0 and empty.inputs.shape == (0, 50) and empty.future.shape == (0, 3)
