"""Benchmark ``prepare`` on synthetic CSV logs: wall time and peak RSS versus size.

Generates ``user,item,timestamp`` logs (about 10 interactions per user, skewed item
popularity, rows of each generation chunk shuffled so users interleave) streamed to
disk in chunks, then runs ``prepare`` on each in a fresh subprocess and measures its
wall time and peak resident memory (``os.wait4`` rusage of that child). Also times
Beauty.txt when ../shared/data exists.

    python bench/bench_prepare.py --sizes 1000000 10000000 --out bench/results/prepare.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from fenrec_dist.data.prepare import prepare
t1 = time.perf_counter()
kw = json.loads(sys.argv[3])
m = prepare(sys.argv[1], sys.argv[2], **kw)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "prepare_s": t2 - t1, "users": m["users"], "items": m["items"],
                  "interactions": m["interactions"], "train_samples": m["train_samples"],
                  "partitions": m["config"]["num_partitions"]}))
"""


def generate_csv(path: Path, rows: int, seed: int = 0, chunk_rows: int = 1_000_000, string_ids: bool = False) -> int:
    """Write a synthetic log of exactly ``rows`` interactions; returns the number of users.

    ``string_ids``: Amazon-like string ids ("A000123", "B000045") instead of integers.
    """
    rng = np.random.default_rng(seed)
    n_users_est = max(rows // 10, 1)
    n_items = max(rows // 50, 100)
    user_perm = rng.permutation(np.arange(1, 3 * n_users_est + 1, dtype=np.int64))  # sparse raw ids
    written = 0
    next_user = 0
    id_type = pa.string() if string_ids else pa.int64()
    schema = pa.schema([("user", id_type), ("item", id_type), ("timestamp", pa.int64())])
    with pacsv.CSVWriter(str(path), schema) as writer:
        while written < rows:
            want = min(chunk_rows, rows - written)
            lengths = 3 + rng.poisson(7, size=want // 5 + 10)  # sums to ~2x want
            ends = np.cumsum(lengths)
            k = int(np.searchsorted(ends, want)) + 1
            lengths = lengths[:k]
            lengths[-1] -= int(ends[k - 1] - want)
            lengths = lengths[lengths > 0]
            n = int(lengths.sum())
            users = user_perm[(next_user + np.repeat(np.arange(len(lengths)), lengths)) % len(user_perm)]
            next_user += len(lengths)
            items = (n_items * rng.random(n) ** 2.5).astype(np.int64) + 1
            start = rng.integers(1_300_000_000, 1_600_000_000, size=len(lengths))
            gaps = rng.integers(0, 86_400 * 30, size=n)
            first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            cs = np.cumsum(gaps)
            ts = np.repeat(start, lengths) + cs - np.repeat(cs[first], lengths)
            order = rng.permutation(n)
            u, i = users[order], items[order]
            if string_ids:
                u = pc.binary_join_element_wise("A", pc.utf8_lpad(pa.array(u).cast(pa.string()), 9, "0"), "")
                i = pc.binary_join_element_wise("B", pc.utf8_lpad(pa.array(i).cast(pa.string()), 9, "0"), "")
            writer.write_table(pa.table({"user": u, "item": i, "timestamp": ts[order]}, schema=schema))
            written += n
    return next_user


def run_child(src: Path, out: Path, kwargs: dict) -> dict:
    """Run prepare in a fresh interpreter; return its summary plus wall time and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out), json.dumps(kwargs)],
                                stdout=subprocess.PIPE, stderr=err, env=env, cwd=str(REPO))
        stdout = proc.stdout.read() if proc.stdout else b""  # small: one JSON line
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        err.seek(0)
        stderr = err.read()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"prepare failed on {src}:\n{stderr.decode()[-4000:]}")
    res = json.loads(stdout.decode().strip().splitlines()[-1])
    res.update(wall_s=round(wall, 3), peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
               output_mib=round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20, 1))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="interactions per log")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prepare.json")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--num-partitions", type=int, default=None, help="prepare(num_partitions=...); default auto")
    ap.add_argument("--no-beauty", action="store_true", help="skip the Beauty.txt timing")
    ap.add_argument("--keep", action="store_true", help="keep the generated logs and outputs")
    ap.add_argument("--string-ids", action="store_true", help="Amazon-like string user/item ids")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=args.workdir))
    results = []
    try:
        for size in args.sizes:
            src = work / f"log_{size}.csv"
            t0 = time.perf_counter()
            generate_csv(src, size, string_ids=args.string_ids)
            gen_s = time.perf_counter() - t0
            res = run_child(src, work / f"out_{size}", {"num_partitions": args.num_partitions})
            res.update(name=f"synthetic csv {size:,}" + (" (str ids)" if args.string_ids else ""), rows=size, input_mib=round(src.stat().st_size / 2**20, 1),
                       generate_s=round(gen_s, 2))
            results.append(res)
            print(f"{res['name']}: {res['wall_s']:.1f}s, peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
            if not args.keep:
                src.unlink()
                shutil.rmtree(work / f"out_{size}")
        beauty = DATA / "Beauty.txt"
        if beauty.is_file() and not args.no_beauty:
            res = run_child(beauty, work / "out_beauty", {})
            res.update(name="Beauty.txt", rows=res["interactions"],
                       input_mib=round(beauty.stat().st_size / 2**20, 1))
            results.append(res)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    header = f"{'input':<36}{'rows':>12}{'users':>10}{'samples':>11}{'parts':>6}{'wall s':>8}" \
             f"{'prepare s':>10}{'peak RSS MiB':>14}{'out MiB':>9}"
    print(header)
    for r in results:
        print(f"{r['name']:<36}{r['rows']:>12,}{r['users']:>10,}{r['train_samples']:>11,}{r['partitions']:>6}"
              f"{r['wall_s']:>8.2f}{r['prepare_s']:>10.2f}{r['peak_rss_mib']:>14.0f}{r['output_mib']:>9.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                               "results": results}, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
