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
from fenrec_dist.data.prepare import target_shard, prepare, sha256_file


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
    assert m["format_version"] == 2 and m["id_maps"] is None and m["sharding"] == "target"
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
        # all samples of one target (ICSRec partners) lie in one shard, the one target_shard names;
        # rows ascend by sample_id within a shard (one partition), the manifest records their range
        owner: dict[int, int] = {}
        for k, s in enumerate(m["shards"]):
            t = pq.read_table(out / s["file"])
            ids = t.column("sample_id").to_numpy()
            if len(ids):
                assert s["sample_id_range"] == [ids.min(), ids.max() + 1]
                if parts == 1:
                    assert (np.diff(ids) > 0).all()
            targets = t.column("target").to_numpy()
            assert (target_shard(targets, 3) == k).all()
            for u in set(targets.tolist()):
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


# --------------------------------------------------------------------------- --out safety, options, permissions


def tree(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def no_temp_dirs(parent: Path) -> bool:
    return not [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("overwrite", [True, False])
def test_overwrite_refuses_directory_that_is_not_a_dataset(tmp_path: Path, overwrite: bool) -> None:
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("precious")
    (mine / "sub" / "more.txt").write_text("also precious")
    before = tree(mine)
    pattern = (r"mine: not a prepared dataset \(no manifest\.json\); refusing to replace it" if overwrite
               else r"mine: output directory exists and is not a prepared dataset \(no manifest\.json\)")
    with pytest.raises(DataError, match=pattern):
        prepare(src, mine, overwrite=overwrite)
    assert tree(mine) == before and no_temp_dirs(tmp_path)
    # a manifest.json that is not ours (say a web app's) does not make it a dataset either
    (mine / "manifest.json").write_text('{"name": "my app"}')
    with pytest.raises(DataError, match=r"mine: .*not a prepared dataset \(its manifest\.json is not a fenrec"):
        prepare(src, mine, overwrite=overwrite)
    assert (mine / "notes.txt").read_text() == "precious" and no_temp_dirs(tmp_path)


def test_overwrite_replaces_a_dataset_or_an_empty_directory(tmp_path: Path) -> None:
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: output directory exists; pass --overwrite \(overwrite=True\)"):
        prepare(src, tmp_path / "empty")
    assert prepare(src, tmp_path / "empty", overwrite=True)["users"] == 2
    assert prepare(src, tmp_path / "empty", overwrite=True, max_len=2)["config"]["max_len"] == 2
    assert no_temp_dirs(tmp_path)


@pytest.mark.parametrize("overwrite, pattern", [
    (True, r"--out .*f\.txt is a file, not a directory; refusing to replace it"),
    (False, r"--out .*f\.txt exists and is a file, not a directory"),
])
def test_out_is_a_file(tmp_path: Path, overwrite: bool, pattern: str) -> None:
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    (tmp_path / "f.txt").write_text("precious")
    with pytest.raises(DataError, match=pattern):
        prepare(src, tmp_path / "f.txt", overwrite=overwrite)
    assert (tmp_path / "f.txt").read_text() == "precious" and no_temp_dirs(tmp_path)
    with pytest.raises(DataError, match=r"cannot create --out .*f\.txt/sub: .*f\.txt is not a directory"):
        prepare(src, tmp_path / "f.txt" / "sub")
    assert (tmp_path / "f.txt").read_text() == "precious"


def test_overwrite_refuses_out_holding_the_input(tmp_path: Path) -> None:
    prepare(write_seq(tmp_path / "s.txt", THREE_USERS), tmp_path / "data")  # a real dataset ...
    src = write_seq(tmp_path / "data" / "s.txt", THREE_USERS)  # ... that now holds the input
    before = tree(tmp_path / "data")
    for inp in (src, tmp_path / "other" / ".." / "data" / "s.txt"):
        (tmp_path / "other").mkdir(exist_ok=True)
        with pytest.raises(DataError, match=r"the input .*s\.txt is inside --out .*data; refusing to replace it"):
            prepare(inp, tmp_path / "data", overwrite=True)
    # through a symlink to the input as well
    (tmp_path / "link.txt").symlink_to(src)
    with pytest.raises(DataError, match=r"the input .*link\.txt is inside --out"):
        prepare(tmp_path / "link.txt", tmp_path / "data", overwrite=True)
    assert tree(tmp_path / "data") == before and no_temp_dirs(tmp_path)


def test_cli_overwrite_messages_name_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fenrec_dist.cli import main

    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    assert main(["prepare", str(src), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["prepare", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "output directory exists; pass --overwrite" in err and "Traceback" not in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("precious")
    assert main(["prepare", str(src), "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "not a prepared dataset (no manifest.json); refusing to replace it" in capsys.readouterr().err
    assert (tmp_path / "mine" / "a.txt").read_text() == "precious"


@pytest.mark.parametrize("kw, flag", [
    ({"max_len": 0}, "--max-len"), ({"max_len": -3}, "--max-len"), ({"num_shards": 0}, "--num-shards"),
    ({"row_group_size": 0}, "--row-group-size"), ({"min_interactions": -1}, "--min-interactions"),
    ({"k_core": -1}, "--k-core"), ({"horizon": -1}, "--horizon"), ({"fmt": "xml"}, "--format"),
])
def test_bad_options_are_config_errors_before_reading(tmp_path: Path, kw: dict, flag: str) -> None:
    from fenrec_dist.config import ConfigError

    name = next(iter(kw))
    # the input does not even exist: the options are checked first
    with pytest.raises(ConfigError, match=rf"^{flag} \({name}\) must be .*got {kw[name]!r}"):
        prepare(tmp_path / "nope.txt", tmp_path / "out", **kw)
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_option_exits_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fenrec_dist.cli import main

    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    for args, flag in ((["--max-len", "0"], "--max-len"), (["--num-shards", "0"], "--num-shards"),
                       (["--row-group-size", "0"], "--row-group-size"),
                       (["--min-interactions", "-1"], "--min-interactions"), (["--k-core", "-2"], "--k-core")):
        assert main(["prepare", str(src), "--out", str(tmp_path / "out"), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"config error: {flag} " in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.txt"]


def test_input_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    with pytest.raises(DataError, match=r"logs: is a directory, not a file"):
        prepare(tmp_path / "logs", tmp_path / "out")
    assert_clean(tmp_path, "out")


def _deny(paths: list[Path]):
    """A stand-in for ``open`` raising PermissionError for ``paths`` (root ignores chmod)."""
    import builtins

    denied = {str(p) for p in paths}

    def fake_open(file, *args, **kwargs):
        if str(file) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    return fake_open


def test_unreadable_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fenrec_dist.data.prepare as prep
    import fenrec_dist.data.readers as readers

    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    monkeypatch.setattr(prep, "open", _deny([src]), raising=False)
    with pytest.raises(DataError, match=r"cannot read .*s\.txt: permission denied"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")
    # denied only once the job reads it (the reader's own open)
    monkeypatch.undo()
    monkeypatch.setattr(readers, "open", _deny([src]), raising=False)
    with pytest.raises(DataError, match=r"cannot read .*s\.txt: permission denied"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_unwritable_out_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.parent == ro:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(DataError, match=rf"cannot write to {ro}/: permission denied"):
        prepare(src, ro / "out")
    with pytest.raises(DataError, match=rf"cannot write to {ro}/: permission denied"):
        prepare(src, ro / "deeper" / "out")  # the missing parent cannot be created
    assert list(ro.iterdir()) == [] and src.exists()


def test_permission_error_while_writing_keeps_old_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fenrec_dist.data.prepare as prep

    src = write_seq(tmp_path / "s.txt", THREE_USERS)
    prepare(src, tmp_path / "out", max_len=7)
    before = tree(tmp_path / "out")

    def publish(tmp: Path, out: Path) -> None:
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(prep, "_publish", publish)
    with pytest.raises(DataError, match=rf"cannot write to {tmp_path}/: permission denied"):
        prepare(src, tmp_path / "out", overwrite=True, max_len=3)
    assert tree(tmp_path / "out") == before and no_temp_dirs(tmp_path)

    def write_table(table, where, *args, **kwargs):  # a file inside the temporary directory
        raise PermissionError(13, "Permission denied", str(where))

    monkeypatch.undo()
    monkeypatch.setattr(prep.pq, "write_table", write_table)
    with pytest.raises(DataError, match=rf"cannot write to {tmp_path}/: permission denied"):
        prepare(write_seq(tmp_path / "log.csv", ["user,item,timestamp", "a,b,1", "a,c,2", "a,d,3"]),
                tmp_path / "out", overwrite=True)
    assert tree(tmp_path / "out") == before and no_temp_dirs(tmp_path)
