"""Benchmark ``prepare`` on synthetic CSV logs: wall time and peak RSS versus size.

Generates ``user,item,timestamp`` logs (about 10 interactions per user, skewed item
popularity, rows of each generation chunk shuffled so users interleave) streamed to
disk in chunks, then runs ``prepare`` on each in a fresh subprocess and measures its
wall time and peak resident memory (``os.wait4`` rusage of that child). Also times
Beauty.txt when ../shared/data exists.

    python bench/scale/bench_prepare.py --sizes 1000000 10000000 --out bench/scale/results/prepare.json
    python bench/scale/bench_prepare.py --string-ids --sizes 2000000 --baseline REV --repeats 4 --no-beauty \
        --out bench/scale/results/prepare_vs_REV.json     # REV's prepare on the same logs, interleaved
"""

from __future__ import annotations

import argparse
import contextlib
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

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _baseline import revision_tree  # noqa: E402
from _result import write_result  # noqa: E402

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


def run_child(src: Path, out: Path, kwargs: dict, code: Path = REPO) -> dict:
    """Run prepare (``code``'s package) in a fresh interpreter; return its summary plus wall
    time and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(code) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out), json.dumps(kwargs)],
                                stdout=subprocess.PIPE, stderr=err, env=env, cwd=str(code))
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
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "scale" / "results" / "prepare.json")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--num-partitions", type=int, default=None, help="prepare(num_partitions=...); default auto")
    ap.add_argument("--no-beauty", action="store_true", help="skip the Beauty.txt timing")
    ap.add_argument("--keep", action="store_true", help="keep the generated logs and outputs")
    ap.add_argument("--string-ids", action="store_true", help="Amazon-like string user/item ids")
    ap.add_argument("--baseline", default="", help="a git revision whose prepare runs on the same logs, "
                    "interleaved with this checkout's (A B B A ...); adds baseline rows and ratios")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side per log (median reported)")
    args = ap.parse_args(argv)

    with contextlib.ExitStack() as stack:
        base_tree = stack.enter_context(revision_tree(args.baseline)) if args.baseline else None
        results, comparisons = run_all(args, base_tree)

    header = f"{'input':<36}{'rows':>12}{'users':>10}{'samples':>11}{'parts':>6}{'wall s':>8}" \
             f"{'prepare s':>10}{'peak RSS MiB':>14}{'out MiB':>9}"
    print(header)
    for r in results:
        print(f"{r['name']:<36}{r['rows']:>12,}{r['users']:>10,}{r['train_samples']:>11,}{r['partitions']:>6}"
              f"{r['wall_s']:>8.2f}{r['prepare_s']:>10.2f}{r['peak_rss_mib']:>14.0f}{r['output_mib']:>9.1f}")
    for c in comparisons:
        print(f"{c['name']}, now / baseline, medians of {args.repeats}: wall {c['wall_s_now']:.2f} / "
              f"{c['wall_s_baseline']:.2f} s ({c['wall_ratio']:.3f}), of which import {c['import_s_now']:.2f} / "
              f"{c['import_s_baseline']:.2f} s and prepare {c['prepare_s_now']:.2f} / {c['prepare_s_baseline']:.2f} s "
              f"({c['prepare_ratio']:.3f}); peak RSS {c['peak_rss_mib_now']:.0f} / {c['peak_rss_mib_baseline']:.0f} MiB")
    body = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "command": "python bench/scale/bench_prepare.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "results": results}
    if args.baseline:
        body.update(baseline=args.baseline, comparisons=comparisons)
    write_result(args.out, body, echo=False)
    print(f"wrote {args.out}")
    return 0


def compare(name: str, runs: dict[str, list[dict]]) -> dict:
    """Medians of each side and their ratios (now / baseline).

    ``wall`` (interpreter start, imports and prepare) is the end-to-end figure; ``prepare_s``
    alone can mislead when the two revisions import a module at different times (pyarrow
    imports pandas on its first ``pa.array`` call: at module import since a6f50e9, inside
    ``prepare`` before it).
    """
    med = {key: {side: float(np.median([r[key] for r in rs])) for side, rs in runs.items()}
           for key in ("wall_s", "import_s", "prepare_s", "peak_rss_mib")}
    out = {"name": name}
    for key, m in med.items():
        out[f"{key}_now"], out[f"{key}_baseline"] = round(m["now"], 3), round(m["baseline"], 3)
    out["wall_ratio"] = round(med["wall_s"]["now"] / med["wall_s"]["baseline"], 3)
    out["prepare_ratio"] = round(med["prepare_s"]["now"] / med["prepare_s"]["baseline"], 3)
    return out


def run_all(args: argparse.Namespace, base_tree: Path | None) -> tuple[list[dict], list[dict]]:
    """Every log through this checkout's prepare (and the baseline's, interleaved)."""
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=args.workdir))
    results: list[dict] = []
    comparisons: list[dict] = []
    sides = [("now", REPO)] + ([("baseline", base_tree)] if base_tree is not None else [])
    try:
        inputs = []
        for size in args.sizes:
            src = work / f"log_{size}.csv"
            t0 = time.perf_counter()
            generate_csv(src, size, string_ids=args.string_ids)
            inputs.append((src, f"synthetic csv {size:,}" + (" (str ids)" if args.string_ids else ""),
                           {"num_partitions": args.num_partitions},
                           {"rows": size, "input_mib": round(src.stat().st_size / 2**20, 1),
                            "generate_s": round(time.perf_counter() - t0, 2)}))
        beauty = DATA / "Beauty.txt"
        if beauty.is_file() and not args.no_beauty:
            inputs.append((beauty, "Beauty.txt", {}, {"input_mib": round(beauty.stat().st_size / 2**20, 1)}))
        for src, name, kwargs, extra in inputs:
            runs: dict[str, list[dict]] = {side: [] for side, _ in sides}
            for rep in range(args.repeats):
                order = sides if rep % 2 == 0 else sides[::-1]  # A B, B A, ...
                for side, code in order:
                    out = work / f"out_{side}"
                    res = run_child(src, out, kwargs, code)
                    res.update(name=name if side == "now" else f"{name} @ {args.baseline}", side=side, repeat=rep,
                               **extra)
                    res.setdefault("rows", res["interactions"])
                    runs[side].append(res)
                    results.append(res)
                    print(f"{res['name']}: {res['wall_s']:.1f}s, peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
                    shutil.rmtree(out)
            if base_tree is not None:
                comparisons.append(compare(name, runs))
            if src.parent == work and not args.keep:
                src.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return results, comparisons


if __name__ == "__main__":
    sys.exit(main())
