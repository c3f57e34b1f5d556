"""Log readers (CSV/TSV/Parquet/Amazon JSON), id remapping, k-core and bad log input."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fenrec_dist.data.errors import DataError
from fenrec_dist.data.prepare import prepare
from fenrec_dist.data.readers import detect_format, iter_chunks

from test_prepare import assert_clean, naive, read_eval, read_samples

CSV_ROWS = """user,item,timestamp,extra
b,x,5,foo
a,y,3,
a,x,3,
a,z,1,
b,y,6,
b,z,7,
c,x,1,
c,y,2,
a,w,0,
a,v,9,
"""


def raw_maps(out: Path) -> tuple[dict, dict]:
    users = pq.read_table(out / "user_map.parquet").to_pylist()
    items = pq.read_table(out / "item_map.parquet").to_pylist()
    return {r["id"]: r["raw"] for r in users}, {r["id"]: r["raw"] for r in items}


def log_reference(df: pd.DataFrame, max_len: int, horizon: int):
    """Reference: order by (time, row) per user, remap by sorted raw id, then the naive protocol."""
    df = df.reset_index(drop=True)
    df["row"] = np.arange(len(df))
    df = df.sort_values(["user", "timestamp", "row"], kind="stable")
    counts = df.groupby("user").size()
    kept_users = sorted(counts[counts >= 3].index)
    df = df[df["user"].isin(kept_users)]
    items = sorted(df["item"].unique())
    umap = {u: i + 1 for i, u in enumerate(kept_users)}
    imap = {x: i + 1 for i, x in enumerate(items)}
    seqs = {umap[u]: [imap[x] for x in g["item"]] for u, g in df.groupby("user", sort=False)}
    return naive(seqs, max_len, horizon), len(items)


def test_detect_format() -> None:
    cases = {"a.txt": "seq", "a.csv": "csv", "a.CSV.gz": "csv", "a.tsv": "tsv", "a.parquet": "parquet",
             "a.json": "amazon-json", "a.jsonl.gz": "amazon-json", "a.json.gz": "amazon-json"}
    for name, fmt in cases.items():
        assert detect_format(name) == fmt
    with pytest.raises(DataError, match="a.xlsx"):
        detect_format("a.xlsx")


@pytest.mark.parametrize("sep, name", [(",", "log.csv"), ("\t", "log.tsv")])
def test_csv_log_exact(tmp_path: Path, sep: str, name: str) -> None:
    src = tmp_path / name
    src.write_text(CSV_ROWS.replace(",", sep))
    m = prepare(src, tmp_path / "out", horizon=1)
    # a: w(0) z(1) y(3) x(3, tie: later row) v(9); b: x y z; c dropped (2 rows)
    assert (m["users"], m["items"], m["interactions"], m["train_samples"]) == (2, 5, 8, 2)
    assert m["id_maps"] == {"users": "user_map.parquet", "items": "item_map.parquet"}
    users, items = raw_maps(tmp_path / "out")
    assert users == {1: "a", 2: "b"} and items == {1: "v", 2: "w", 3: "x", 4: "y", 5: "z"}
    assert read_eval(tmp_path / "out") == [
        {"user": 1, "history": [2, 5, 4], "valid": 3, "test": 1},
        {"user": 2, "history": [3], "valid": 4, "test": 5},
    ]
    assert read_samples(tmp_path / "out") == [
        {"sample_id": 0, "user": 1, "input": [2], "input_len": 1, "target": 5, "future": [5, 4], "position": 1},
        {"sample_id": 1, "user": 1, "input": [2, 5], "input_len": 2, "target": 4, "future": [4], "position": 2},
    ]
    assert m["dropped"]["too_short_users"] == 1 and m["source"]["format"] == name[-3:]


def test_numeric_string_ids_sort_numerically(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    rows = [(u, i, t) for u in (10, 9, 2) for t, i in enumerate((100, 20, 3))]
    src.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    prepare(src, tmp_path / "out")
    users, items = raw_maps(tmp_path / "out")
    assert users == {1: 2, 2: 9, 3: 10} and items == {1: 3, 2: 20, 3: 100}  # read as integers
    assert read_eval(tmp_path / "out")[0] == {"user": 1, "history": [3], "valid": 2, "test": 1}
    # "007" is not a canonical integer: strings, still in numeric order (ties by string)
    src.write_text(src.read_text() + "007,3,9\n")
    prepare(src, tmp_path / "out2", num_partitions=2)
    users, _ = raw_maps(tmp_path / "out2")
    assert users == {1: "2", 2: "9", 3: "10"}  # user 007 has one row: dropped


def test_ids_integer_in_early_chunks_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fenrec_dist.data.prepare as prep

    monkeypatch.setattr(prep, "DEFAULT_CHUNK_ROWS", 2048)
    rows = [(k % 700, k % 51, k) for k in range(12000)] + [("u1", 7, 1), ("u1", 8, 2), ("u1", 9, 3)]
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    m = prepare(src, tmp_path / "out", num_partitions=3)
    assert m["users"] == 701 and m["source"]["rows"] == len(rows)
    users, items = raw_maps(tmp_path / "out")
    assert users[1] == "0" and users[701] == "u1" and items[1] == "0"  # all ids re-read as strings
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"]).astype({"user": str})
    (want_s, want_e), _ = log_reference(df, 50, 2)
    assert read_eval(tmp_path / "out") == want_e  # users in string order, items in numeric order
    assert read_samples(tmp_path / "out") == want_s


def random_log(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user": [f"u{x}" for x in rng.integers(0, n // 6, size=n)],
        "item": [f"i{x}" for x in rng.zipf(1.6, size=n) % 500],
        "timestamp": rng.integers(0, 50, size=n),  # many ties
    })


def test_csv_log_matches_reference_across_chunks_and_partitions(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    df = random_log(12000)
    src = tmp_path / "log.csv"
    df.to_csv(src, index=False)
    assert src.stat().st_size > 2 * 65536  # several CSV blocks with chunk_rows=2048
    (want_s, want_e), n_items = log_reference(df, 5, 2)
    import fenrec_dist.data.prepare as prep

    monkeypatch.setattr(prep, "DEFAULT_CHUNK_ROWS", 2048)  # several reader chunks
    monkeypatch.setattr(prep, "BLOCK_BUDGET", 3000)  # many sample blocks per partition
    m = prepare(src, tmp_path / "out", max_len=5, num_partitions=4, num_shards=3, row_group_size=1000)
    assert m["items"] == n_items and m["users"] == len(want_e)
    assert read_samples(tmp_path / "out") == want_s
    assert read_eval(tmp_path / "out") == want_e
    chunks = list(iter_chunks(src, "csv", chunk_rows=2048))
    assert len(chunks) > 1 and sum(len(c) for c in chunks) == len(df)
    assert np.concatenate([c.column("row").to_numpy() for c in chunks]).tolist() == list(range(len(df)))


def test_parquet_log_int_ids_custom_columns(tmp_path: Path) -> None:
    df = random_log(3000, seed=1)
    src = tmp_path / "log.parquet"
    table = pa.table({
        "uid": pa.array([int(u[1:]) * 7 for u in df["user"]], pa.int32()),
        "iid": pa.array([int(i[1:]) + 1000 for i in df["item"]], pa.int64()),
        "ts": pa.array(df["timestamp"].to_numpy() * 10**9, pa.timestamp("ns")),
    })
    pq.write_table(table, src, row_group_size=500)
    m = prepare(src, tmp_path / "out", user_col="uid", item_col="iid", time_col="ts", num_partitions=3)
    ref = pd.DataFrame({"user": table["uid"].to_numpy(), "item": table["iid"].to_numpy(),
                        "timestamp": df["timestamp"].to_numpy()})
    (want_s, want_e), n_items = log_reference(ref, 50, 2)
    assert m["items"] == n_items
    assert read_samples(tmp_path / "out") == want_s
    assert read_eval(tmp_path / "out") == want_e
    users, _ = raw_maps(tmp_path / "out")
    assert list(users.values()) == sorted(users.values())


def amazon_lines(rows: list[tuple[str, str, int]]) -> str:
    return "".join(json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0,
                               "reviewText": "fine"}) + "\n" for u, i, t in rows)


AMAZON = [("A2", "B1", 30), ("A1", "B2", 10), ("A1", "B1", 20), ("A1", "B3", 5), ("A2", "B2", 10),
          ("A2", "B3", 40), ("A3", "B1", 1)]


@pytest.mark.parametrize("name", ["reviews.json", "reviews.jsonl.gz"])
def test_amazon_json(tmp_path: Path, name: str) -> None:
    src = tmp_path / name
    text = amazon_lines(AMAZON)
    if name.endswith(".gz"):
        with gzip.open(src, "wt") as f:
            f.write(text)
    else:
        src.write_text(text)
    m = prepare(src, tmp_path / "out")
    assert (m["users"], m["items"], m["interactions"]) == (2, 3, 6)
    users, items = raw_maps(tmp_path / "out")
    assert users == {1: "A1", 2: "A2"} and items == {1: "B1", 2: "B2", 3: "B3"}
    assert read_eval(tmp_path / "out") == [
        {"user": 1, "history": [3], "valid": 2, "test": 1},
        {"user": 2, "history": [2], "valid": 1, "test": 3},
    ]


def kcore_reference(pairs: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    rows = list(pairs)
    while True:
        uc: dict = {}
        ic: dict = {}
        for u, i in rows:
            uc[u] = uc.get(u, 0) + 1
            ic[i] = ic.get(i, 0) + 1
        new = [(u, i) for u, i in rows if uc[u] >= k and ic[i] >= k]
        if len(new) == len(rows):
            return rows
        rows = new


def test_k_core_matches_reference(tmp_path: Path) -> None:
    df = random_log(6000, seed=2)
    src = tmp_path / "log.csv"
    df.to_csv(src, index=False)
    kept = kcore_reference(list(zip(df["user"], df["item"])), 5)
    m = prepare(src, tmp_path / "out", k_core=5, num_partitions=2)
    assert m["dropped"]["k_core_rows"] == len(df) - len(kept)
    kept_users = {u for u, _ in kept}
    kept_items = {i for _, i in kept}
    assert m["users"] == len(kept_users) and m["items"] == len(kept_items) and m["interactions"] == len(kept)
    assert m["dropped"]["too_short_users"] == 0  # 5-core users have >= 5 rows
    users, items = raw_maps(tmp_path / "out")
    assert sorted(users.values(), key=lambda s: int(s[1:])) == sorted(kept_users, key=lambda s: int(s[1:]))
    assert set(items.values()) == kept_items
    ev = read_eval(tmp_path / "out")
    got = sorted((users[r["user"]], items[x]) for r in ev for x in r["history"] + [r["valid"], r["test"]])
    assert got == sorted(kept)


# --------------------------------------------------------------------------- bad log input


def test_csv_missing_column(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,item,time\na,b,1\n")
    with pytest.raises(DataError, match=r"log\.csv: column 'timestamp': missing"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_parquet_missing_column(tmp_path: Path) -> None:
    src = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [1], "timestamp": [1]}), src)
    with pytest.raises(DataError, match=r"log\.parquet: column 'item': missing"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_csv_bad_time_value(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\na,b,1\na,c,2\na,d,soon\n")
    with pytest.raises(DataError, match=r"log\.csv"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_csv_string_time_column(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\na,b,x\na,c,y\na,d,z\n")
    with pytest.raises(DataError, match=r"log\.csv: column 'timestamp': time values must be numeric"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_csv_wrong_field_count_names_line(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\na,b,1\na,c\na,d,3\n")
    with pytest.raises(DataError, match=r"log\.csv:3: expected 3 fields, got 2"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_csv_bad_time_in_later_block_names_line(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\n" + "".join(f"u{k % 97},i{k % 31},{k}\n" for k in range(20000))
                   + "u1,i1,soon\n")
    with pytest.raises(DataError, match=r"log\.csv:20002: column 'timestamp': 'soon' is not a number"):
        list(iter_chunks(src, "csv", chunk_rows=2048))


@pytest.mark.parametrize("content", ["", "user,item,timestamp\n"])
def test_csv_empty(tmp_path: Path, content: str) -> None:
    src = tmp_path / "log.csv"
    src.write_text(content)
    with pytest.raises(DataError, match=r"log\.csv(:1)?: empty input"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


@pytest.mark.parametrize("damage", ["deflate", "truncated", "crc"])
def test_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    src = tmp_path / "reviews.json.gz"
    data = gzip.compress(amazon_lines(AMAZON * 50).encode())
    if damage == "deflate":  # garbage right after the 10-byte header
        data = data[:10] + bytes([0xFF] * 16) + data[26:]
    elif damage == "truncated":
        data = data[:-20]
    else:  # CRC32 trailer
        data = data[:-8] + bytes(4 * [0xAA]) + data[-4:]
    src.write_bytes(data)
    with pytest.raises(DataError, match=r"reviews\.json\.gz:\d+: corrupt or truncated gzip"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


@pytest.mark.parametrize("line, pattern", [
    ('{"reviewerID": "A1", "asin": "B1"', r"reviews\.json:3: invalid JSON"),
    ('{"reviewerID": "A1", "unixReviewTime": 3}', r"reviews\.json:3: missing field 'asin'"),
    ('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": "later"}', r"reviews\.json:3: field 'unixReviewTime'"),
    ("[1, 2]", r"reviews\.json:3: expected a JSON object"),
    ('{"reviewerID": "A1", "asin": "", "unixReviewTime": 3}', r"reviews\.json:3: field 'asin': empty value"),
    ('{"reviewerID": "A1", "asin": NaN, "unixReviewTime": 3}', r"reviews\.json:3: field 'asin': missing value 'nan'"),
    ('{"reviewerID": "A1", "asin": "None", "unixReviewTime": 3}',
     r"reviews\.json:3: field 'asin': missing value 'None'"),
])
def test_bad_json_lines(tmp_path: Path, line: str, pattern: str) -> None:
    src = tmp_path / "reviews.json"
    src.write_text(amazon_lines(AMAZON[:2]) + line + "\n" + amazon_lines(AMAZON[2:]))
    with pytest.raises(DataError, match=pattern):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_corrupt_parquet(tmp_path: Path) -> None:
    src = tmp_path / "log.parquet"
    src.write_bytes(b"PAR1" + bytes(100))
    with pytest.raises(DataError, match=r"log\.parquet: not a readable Parquet file"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


# --------------------------------------------------------------------------- missing values, headers, gzip


GOOD_ROWS = ["a,x,1", "a,y,2", "a,z,3", "b,x,4", "b,y,5", "b,z,6"]


@pytest.mark.parametrize("bad_row, pattern", [
    ("a,,7", r"blank\.csv:7: column 'item': empty value"),
    ("a,NaN,7", r"blank\.csv:7: column 'item': missing value 'NaN'"),
    ("a,nan,7", r"blank\.csv:7: column 'item': missing value 'nan'"),
    ("a,None,7", r"blank\.csv:7: column 'item': missing value 'None'"),
    ("a,\"\",7", r"blank\.csv:7: column 'item': empty value"),
    ("a,  ,7", r"blank\.csv:7: column 'item': empty value"),
    (",x,7", r"blank\.csv:7: column 'user': empty value"),
    ("a,x,", r"blank\.csv:7: column 'timestamp': empty value"),
    ("a,x,NaN", r"blank\.csv:7: column 'timestamp': missing value 'NaN'"),
])
@pytest.mark.parametrize("sep", [",", "\t"])
def test_csv_missing_values_name_line_and_column(tmp_path: Path, bad_row: str, pattern: str, sep: str) -> None:
    name = "blank.csv" if sep == "," else "blank.tsv"
    src = tmp_path / name
    src.write_text("\n".join(["user,item,timestamp", *GOOD_ROWS[:5], bad_row, GOOD_ROWS[5]]).replace(",", sep) + "\n")
    with pytest.raises(DataError, match=pattern.replace(r"blank\.csv", name.replace(".", r"\."))):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")
    assert src.exists()


def test_csv_missing_id_in_later_block_and_integer_ids(tmp_path: Path) -> None:
    body = "".join(f"{k % 97},{k % 31},{k}\n" for k in range(20000))
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\n" + body + "5,,1\n" + body)
    with pytest.raises(DataError, match=r"log\.csv:20002: column 'item': empty value"):
        list(iter_chunks(src, "csv", chunk_rows=2048))
    with pytest.raises(DataError, match=r"log\.csv:20002: column 'item': empty value"):
        prepare(src, tmp_path / "out", num_partitions=2)
    assert_clean(tmp_path, "out")


def test_float_looking_and_nan_like_string_ids_are_kept(tmp_path: Path) -> None:
    # only empty/NaN/None/null spell a missing id; "12.5", "1e3", "NA", "nan1" are ids
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\nu,12.5,1\nu,1e3,2\nu,NA,3\nu,nan1,4\nu,12.50,5\n")
    m = prepare(src, tmp_path / "out")
    _, items = raw_maps(tmp_path / "out")
    assert m["items"] == 5 and sorted(items.values()) == sorted(["12.5", "1e3", "NA", "nan1", "12.50"])


@pytest.mark.parametrize("column, values, pattern", [
    ("item", pa.array(["a", "b", None, "a", "b", "c"]), r"p\.parquet: row 3: column 'item': missing \(null\) value"),
    ("item", pa.array(["a", "", "c", "a", "b", "c"]), r"p\.parquet: row 2: column 'item': empty value"),
    ("item", pa.array(["a", "b", "c", "a", "b", "NaN"]), r"p\.parquet: row 6: column 'item': missing value 'NaN'"),
    ("user", pa.array([1, 1, None, 2, 2, 2], pa.int64()), r"p\.parquet: row 3: column 'user': missing \(null\)"),
    ("timestamp", pa.array([1.0, 2.0, 3.0, float("nan"), 5.0, 6.0]),
     r"p\.parquet: row 4: column 'timestamp': missing value NaN"),
    ("timestamp", pa.array([1, 2, 3, 4, None, 6], pa.int64()),
     r"p\.parquet: row 5: column 'timestamp': missing \(null\) value"),
])
def test_parquet_missing_values_name_row_and_column(tmp_path: Path, column: str, values: pa.Array,
                                                    pattern: str) -> None:
    cols = {"user": pa.array(["1", "1", "1", "2", "2", "2"]), "item": pa.array(["a", "b", "c", "a", "b", "c"]),
            "timestamp": pa.array([1, 2, 3, 4, 5, 6], pa.int64())}
    cols[column] = values
    src = tmp_path / "p.parquet"
    pq.write_table(pa.table(cols), src, row_group_size=4)
    with pytest.raises(DataError, match=pattern):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_csv_repeated_header_names_line(tmp_path: Path) -> None:
    # in the first block (the time column would be inferred as strings) ...
    src = tmp_path / "duphdr.csv"
    src.write_text("\n".join(["user,item,timestamp", *GOOD_ROWS[:3], "user,item,timestamp", *GOOD_ROWS[3:]]) + "\n")
    with pytest.raises(DataError, match=r"duphdr\.csv:5: repeated header row"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")
    # ... with timestamp strings ...
    src.write_text("user,item,timestamp\na,b,2020-01-01\na,c,2020-01-02\nuser,item,timestamp\na,d,2020-01-03\n")
    with pytest.raises(DataError, match=r"duphdr\.csv:4: repeated header row"):
        prepare(src, tmp_path / "out")
    # ... and in a later block (the time column is already numeric)
    body = "".join(f"u{k % 97},i{k % 31},{k}\n" for k in range(20000))
    src.write_text("user,item,timestamp\n" + body + "user,item,timestamp\n" + body)
    with pytest.raises(DataError, match=r"duphdr\.csv:20002: repeated header row"):
        list(iter_chunks(src, "csv", chunk_rows=2048))


def test_csv_bad_time_value_in_first_block_names_line(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,item,timestamp\na,b,1\na,c,2\na,d,soon\n")
    with pytest.raises(DataError, match=r"log\.csv:4: column 'timestamp': 'soon' is not a number"):
        prepare(src, tmp_path / "out")
    # no numeric value at all: the column, with the first example
    src.write_text("user,item,timestamp\na,b,x\na,c,y\n")
    with pytest.raises(DataError, match=r"log\.csv: column 'timestamp': time values must be numeric .*\(line 2: 'x'\)"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


@pytest.mark.parametrize("header, pattern", [
    ("user,item,timestamp,item", r"dup\.csv: column 'item' appears twice in the header"),
    ("timestamp,user,item,user,user", r"dup\.csv: column 'user' appears 3 times in the header"),
])
def test_csv_duplicate_column_in_header(tmp_path: Path, header: str, pattern: str) -> None:
    src = tmp_path / "dup.csv"
    n = header.count(",") + 1
    src.write_text(header + "\n" + "".join(",".join(["1"] * n) + "\n" for _ in range(5)))
    with pytest.raises(DataError, match=pattern):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


def test_duplicate_unused_column_is_fine(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user,extra,item,timestamp,extra\n" + "".join(f"a,1,{i},{t},2\n" for t, i in enumerate("xyz")))
    assert prepare(src, tmp_path / "out")["users"] == 1


@pytest.mark.parametrize("cut", [30, 2000])
def test_truncated_csv_gz(tmp_path: Path, cut: int) -> None:
    src = tmp_path / "log.csv.gz"
    src.write_bytes(gzip.compress(("user,item,timestamp\n" + "".join(
        f"u{k % 97},i{k % 31},{k}\n" for k in range(5000))).encode())[:-cut])
    with pytest.raises(DataError, match=r"log\.csv\.gz:\d+: corrupt or truncated gzip data"):
        prepare(src, tmp_path / "out")
    assert_clean(tmp_path, "out")


@pytest.mark.parametrize("fmt, name, content", [
    ("csv", "log.csv", "user,item,timestamp\na,b,1\n"),
    ("seq", "s.txt", "1 2 3 4\n"),
    ("amazon-json", "r.json", amazon_lines(AMAZON)),
])
def test_unreadable_input_in_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, name: str,
                                    content: str) -> None:
    import fenrec_dist.data.readers as readers
    from test_prepare import _deny

    src = tmp_path / name
    src.write_text(content)
    monkeypatch.setattr(readers, "open", _deny([src]), raising=False)
    with pytest.raises(DataError, match=rf"cannot read .*{re.escape(name)}: permission denied"):
        list(iter_chunks(src, fmt))
