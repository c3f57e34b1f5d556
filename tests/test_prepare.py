"""prepare(): exact samples on hand-built inputs, sharding, atomicity, bad sequence text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fenrec_dist.data.errors import DataError
from fenrec_dist.data.prepare import prepare, sha256_file


def write_seq(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def read_samples(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for s in manifest["shards"]:
        rows.extend(pq.read_table(out / s["file"]).to_pylist())
    return sorted(rows, key=lambda r: r["sample_id"])


def read_eval(out: Path) -> list[dict]:
    return sorted(pq.read_table(out / "eval.parquet").to_pylist(), key=lambda r: r["user"])


def naive(seqs: dict[int, list[int]], max_len: int, horizon: int, min_interactions: int = 3):
    """Reference implementation of the protocol, one sample at a time."""
    samples, evals = [], []
    for u in sorted(seqs):
        s = seqs[u]
        if len(s) < min_interactions:
            continue
        train = s[:-2]
        evals.append({"user": u, "history": train, "valid": s[-2], "test": s[-1]})
        for t in range(1, len(train)):
            samples.append({
                "sample_id": len(samples), "user": u, "input": train[max(0, t - max_len):t],
                "input_len": min(t, max_len), "target": train[t], "future": train[t:t + horizon + 1], "position": t,
            })
    return samples, evals


def assert_clean(parent: Path, name: str) -> None:
    """No output directory and no temporary directory left behind."""
    assert not (parent / name).exists()
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert leftovers == []


THREE_USERS = [
    "1 10 11 12 13 14",   # train [10 11 12], valid 13, test 14
    "2 20 21 22",         # train [20]: no sample, still evaluated
    "3 30 31",            # too short: dropped
]


def test_three_users_exact(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    m = prepare(src, tmp_path / "out", num_shards=2, horizon=2, max_len=50)
    assert (m["users"], m["items"], m["interactions"], m["train_samples"]) == (2, 22, 8, 2)
    assert m["dropped"]["too_short_users"] == 1 and m["dropped"]["too_short_rows"] == 2
    assert m["future_window_counts"] == {"3": 0, "2": 1, "1": 1}
    assert read_samples(tmp_path / "out") == [
        {"sample_id": 0, "user": 1, "input": [10], "input_len": 1, "target": 11, "future": [11, 12], "position": 1},
        {"sample_id": 1, "user": 1, "input": [10, 11], "input_len": 2, "target": 12, "future": [12], "position": 2},
    ]
    assert read_eval(tmp_path / "out") == [
        {"user": 1, "history": [10, 11, 12], "valid": 13, "test": 14},
        {"user": 2, "history": [20], "valid": 21, "test": 22},
    ]
    assert m["format_version"] == 1 and m["id_maps"] is None
    assert m["source"]["sha256"] == sha256_file(src) and m["source"]["format"] == "seq"
    assert m["config"]["max_len"] == 50 and m["config"]["num_shards"] == 2
    assert len(m["shards"]) == 2
    for s in m["shards"]:
        assert sha256_file(tmp_path / "out" / s["file"]) == s["sha256"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == m


def test_repeated_items_use_positions(tmp_path: Path) -> None:
    # Yelp-like: item 5 and 6 repeat; windows and inputs follow positions
    src = write_seq(tmp_path / "s.txt", ["7 5 6 5 6 5 9 8 1"])
    prepare(src, tmp_path / "out", max_len=3, horizon=2)
    train = [5, 6, 5, 6, 5, 9]
    got = read_samples(tmp_path / "out")
    want, _ = naive({7: train + [8, 1]}, 3, 2)
    assert got == want
    assert [r["future"] for r in got] == [[6, 5, 6], [5, 6, 5], [6, 5, 9], [5, 9], [9]]
    assert [r["input"] for r in got] == [[5], [5, 6], [5, 6, 5], [6, 5, 6], [5, 6, 5]]
    assert all(r["position"] + len(r["future"]) <= len(train) for r in got)


def test_canonical_order_independent_of_line_order_and_partitions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    seqs = {int(u): [int(x) for x in rng.integers(1, 40, size=rng.integers(1, 15))] for u in rng.permutation(60) + 1}
    src = write_seq(tmp_path / "s.txt", [" ".join(map(str, [u, *s])) for u, s in seqs.items()])
    want_s, want_e = naive(seqs, 4, 2)
    for parts in (1, 3, 7):
        out = tmp_path / f"out{parts}"
        m = prepare(src, out, max_len=4, horizon=2, num_partitions=parts, num_shards=3, row_group_size=5)
        assert read_samples(out) == want_s
        assert read_eval(out) == want_e
        assert m["items"] == max(x for s in seqs.values() if len(s) >= 3 for x in s)
        # a user's samples all lie in one shard; shards cover contiguous sample_id ranges
        owner: dict[int, int] = {}
        for k, s in enumerate(m["shards"]):
            t = pq.read_table(out / s["file"])
            ids = t.column("sample_id").to_numpy()
            if len(ids):
                assert s["sample_ids"] == [ids.min(), ids.max() + 1] and len(ids) == ids.max() + 1 - ids.min()
            for u in set(t.column("user").to_pylist()):
                assert owner.setdefault(u, k) == k
            meta = pq.ParquetFile(out / s["file"]).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            assert all(n == 5 for n in sizes[:-1]) and (not sizes or sizes[-1] <= 5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seqs=st.dictionaries(st.integers(0, 50), st.lists(st.integers(1, 12), min_size=1, max_size=12),
                         min_size=1, max_size=8),
    max_len=st.integers(1, 5), horizon=st.integers(0, 3),
)
def test_matches_reference(tmp_path_factory: pytest.TempPathFactory, seqs: dict[int, list[int]], max_len: int,
                           horizon: int) -> None:
    d = tmp_path_factory.mktemp("prop")
    src = write_seq(d / "s.txt", [" ".join(map(str, [u, *s])) for u, s in seqs.items()])
    want_s, want_e = naive(seqs, max_len, horizon)
    if not want_e:
        with pytest.raises(DataError, match="no users left"):
            prepare(src, d / "out", max_len=max_len, horizon=horizon)
        assert_clean(d, "out")
        return
    m = prepare(src, d / "out", max_len=max_len, horizon=horizon, num_partitions=2, num_shards=2)
    assert read_samples(d / "out") == want_s
    assert read_eval(d / "out") == want_e
    assert m["train_samples"] == len(want_s)
    assert m["future_window_counts"] == {
        str(k): sum(len(s["future"]) == k for s in want_s) for k in range(horizon + 1, 0, -1)
    }


# --------------------------------------------------------------------------- atomicity


def test_existing_output_refused_and_kept(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    prepare(src, tmp_path / "out")
    before = (tmp_path / "out" / "manifest.json").read_text()
    with pytest.raises(DataError, match="exists"):
        prepare(src, tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").read_text() == before
    m = prepare(src, tmp_path / "out", overwrite=True, max_len=2)
    assert m["config"]["max_len"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_injected_failure_leaves_nothing(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    with pytest.raises(RuntimeError, match="injected failure"):
        prepare(src, tmp_path / "out", _fail_after_shards=1)
    assert_clean(tmp_path, "out")


def test_injected_failure_keeps_existing_output(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    prepare(src, tmp_path / "out", max_len=7)
    files = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="injected failure"):
        prepare(src, tmp_path / "out", overwrite=True, max_len=3, _fail_after_shards=1)
    after = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


# --------------------------------------------------------------------------- bad sequence text


@pytest.mark.parametrize("lines, pattern", [
    (["1 2 3 4", "2", "3 4 5 6"], r"s\.txt:2: user '2' has no items"),
    (["1 2 3 4", "2 5 x 7"], r"s\.txt:2: field 3: item id 'x' is not an integer"),
    (["1 2 3 4", "", "u9 5 6 7"], r"s\.txt:3: field 1: user id 'u9' is not an integer"),
    (["1 2 3 4", "2 5 0 7"], r"s\.txt:2: field 3: item id 0 outside"),
    (["1 2 3 4", "2 5 6 7", "1 8 9 10"], r"s\.txt:3: user 1 already has a line \(.*s\.txt:1\)"),
    (["1 2 3 4", "2 5 6 7.5"], r"s\.txt:2: field 4: item id '7.5' is not an integer"),
    (["1 2 3 4", "-2 5 6 7"], r"s\.txt:2: field 1: negative user id"),
])
def test_bad_sequence_text(tmp_path: Path, lines: list[str], pattern: str) -> None:
    src = write_seq(tmp_path / "s.txt", lines)
    with pytest.raises(DataError, match=pattern):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_bad_token_located_in_later_chunk(tmp_path: Path) -> None:
    from fenrec_dist.data.readers import iter_chunks

    lines = [f"{u} 1 2 3" for u in range(1, 100)] + ["100 1 two 3"]
    src = write_seq(tmp_path / "s.txt", lines)
    with pytest.raises(DataError, match=r"s\.txt:100: field 3"):
        list(iter_chunks(src, "seq", chunk_rows=7))


def test_blank_lines_skipped_and_counted(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", ["", "1 2 3 4", "   ", "2 5 6 7", ""])
    m = prepare(src, tmp_path / "out")
    assert m["users"] == 2 and m["dropped"]["blank_lines"] == 3


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_input(tmp_path: Path, content: str) -> None:
    src = tmp_path / "s.txt"
    src.write_text(content)
    with pytest.raises(DataError, match=r"s\.txt: empty input"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_all_users_too_short(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", ["1 2 3", "2 4"])
    with pytest.raises(DataError, match=r"s\.txt: no users left"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_missing_input_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.txt: no such file"):
        prepare(tmp_path / "nope.txt", tmp_path / "out")
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    for kw in ({"max_len": 0}, {"horizon": -1}, {"min_interactions": 2}, {"num_shards": 0}, {"fmt": "xml"}):
        with pytest.raises(ValueError):
            prepare(src, tmp_path / "out", **kw)
    with pytest.raises(DataError, match="cannot detect the format"):
        prepare(write_seq(tmp_path / "s.dat", THREE_USERS), tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_min_interactions_and_k_core_on_seq(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", ["1 1 2 3 4", "2 1 2 3", "3 1 2 9 9"])
    m = prepare(src, tmp_path / "a", min_interactions=4)
    assert m["users"] == 2 and m["dropped"]["too_short_users"] == 1 and m["items"] == 9
    # 2-core: item 4 (once) goes, then user 1 still has 3 items
    m = prepare(src, tmp_path / "b", k_core=2)
    assert m["dropped"]["k_core_rows"] == 1 and m["items"] == 9 and m["users"] == 3
    assert read_eval(tmp_path / "b")[0] == {"user": 1, "history": [1], "valid": 2, "test": 3}
