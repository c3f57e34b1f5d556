#!/usr/bin/env python
"""Write bench/README.md: every benchmark script and every result file, with its provenance.

    .venv/bin/python bench/index.py            # rewrite bench/README.md
    .venv/bin/python bench/index.py --check    # exit 1 if a result lacks provenance or the README is stale

A result is a file under ``bench/<group>/results/``. Its provenance is the ``provenance``
object inside a JSON result (written by ``_result.write_result``) or the sidecar
``<file>.provenance.json`` (``_result.write_text`` / ``write_sidecar`` for tables, CSVs and
figures; reconstructed from git history for results older than ``_result.provenance``).
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SIDECAR = ".provenance.json"

GROUPS = {
    "micro": "one step or one kernel, interleaved against a baseline or an alternative in one process",
    "epoch": "whole Beauty epochs in one process, by phase, and several jobs sharing a machine",
    "scale": "data preparation and ingest at size, Ray Train workers and data-parallel steps",
    "gpu": "device runs (the GPU check itself is bench/gpu_check.sh)",
    "accuracy": "training runs to accuracy, ablations, their test uncertainty and Tune sweeps",
    "archive": "results of features that were tried and taken out again (their scripts left with them)",
}

# One line per result: what it holds. A result without an entry is described by its script.
DESCRIPTIONS = {
    "accuracy/beauty_accuracy.md": "Beauty reference run (length-grouped batches): validation per epoch, best epoch, test",
    "accuracy/beauty_valid_ndcg20.png": "Beauty reference run: validation NDCG@20 per epoch",
    "accuracy/beauty_ref_final.json": "Beauty reference run (grouped batches): final.json, best epoch 161, test metrics",
    "accuracy/beauty_test_uncertainty.json": "Beauty reference run: test metrics against ICSRec's, in standard errors",
    "accuracy/beauty_random_vs_ref.md": "Beauty, random batches (the default) against the grouped reference run, per epoch",
    "accuracy/beauty_random_valid.png": "Beauty, random batches against the grouped reference run: validation NDCG@20",
    "accuracy/beauty_random_test_uncertainty.json": "Beauty, random batches (the default): test metrics of the best "
                                                    "checkpoint against ICSRec's, in standard errors",
    "accuracy/beauty_random_vs_grouped.md": "Beauty, random against grouped batches, same seed, epochs 0-45",
    "accuracy/beauty_random_vs_grouped_valid.png": "Beauty, random against grouped batches: validation NDCG@20",
    "accuracy/beauty_fast_lr1e-2_probe.md": "Beauty fast preset at peak LR 1e-2 against 5e-3 (seed 1), first 10 epochs: 1e-2 stalls",
    "accuracy/beauty_fast_s2_test_ranks.npz": "per-user test ranks of results/beauty/fast-s2's best checkpoint (pairs ablations without its checkpoint)",
    "accuracy/beauty_fast_s2_test_uncertainty.json": "results/beauty/fast-s2's test metrics with their standard errors over users",
    "accuracy/beauty_fast_s3_test_ranks.npz": "per-user test ranks of results/beauty/fast-s3's best checkpoint",
    "accuracy/beauty_fast_s3_test_uncertainty.json": "results/beauty/fast-s3's test metrics with their standard errors over users",
    "accuracy/beauty_fast_nohard_s2_paired.json": "Beauty fast preset, enduring hard negatives off minus on (seed 2, 40 epochs): paired test differences",
    "accuracy/beauty_fast_nohard_s2_test_ranks.npz": "per-user test ranks of results/beauty/fast-nohard-s2's best checkpoint",
    "accuracy/beauty_fast_nohard_s2_valid.md": "Beauty fast preset, hard negatives off against on (seed 2), validation per epoch",
    "accuracy/beauty_fast_nohard_s2_valid.png": "the same, validation NDCG@20 curves",
    "accuracy/beauty_fast_nosoft_s2_paired.json": "Beauty fast preset, soft labels off minus on (seed 2, 40 epochs): paired test differences",
    "accuracy/beauty_fast_nosoft_s2_test_ranks.npz": "per-user test ranks of results/beauty/fast-nosoft-s2's best checkpoint",
    "accuracy/beauty_fast_nosoft_s2_valid.md": "Beauty fast preset, soft labels off against on (seed 2), validation per epoch",
    "accuracy/beauty_fast_nosoft_s2_valid.png": "the same, validation NDCG@20 curves",
    "accuracy/beauty_fast_nonoise_s2_paired.json": "Beauty fast preset, noise negatives off minus on (seed 2, 40 epochs): paired test differences",
    "accuracy/beauty_fast_nonoise_s2_test_ranks.npz": "per-user test ranks of results/beauty/fast-nonoise-s2's best checkpoint",
    "accuracy/beauty_fast_nonoise_s2_valid.md": "Beauty fast preset, noise negatives off against on (seed 2), validation per epoch",
    "accuracy/beauty_fast_nonoise_s2_valid.png": "the same, validation NDCG@20 curves",
    "accuracy/beauty_nosoft_ablation.md": "Beauty ablation, soft labels off against on, paired per epoch (139 epochs)",
    "accuracy/beauty_nosoft_valid.png": "Beauty ablation, soft labels off against on: validation NDCG@20",
    "accuracy/beauty_nosoft_test_paired.json": "Beauty ablation, soft labels off minus on: paired test differences",
    "accuracy/beauty_nosoft_from30_final.json": "Beauty ablation branched at epoch 30, soft labels off: final.json",
    "accuracy/index_ab.json": "Beauty, in-batch negatives alone against in-batch plus FAISS-mined ones, equal epochs",
    "accuracy/split_stats.json": "how often validation and test targets occur in training (why test trails validation)",
    "accuracy/tune_beauty.json": "8-trial Ray Tune sweep of loss.gamma on Beauty with ASHA: summary and trials",
    "accuracy/tune_beauty.csv": "the gamma sweep's trials as CSV",
    "accuracy/tune_beauty.md": "the gamma sweep's trials as a table",
    "accuracy/tune_beauty_params.png": "the gamma sweep: validation NDCG@20 against gamma",
    "archive/cpu_bf16.json": "bf16 encoder and catalogue products on CPU: faster steps, slower whole epochs (reverted)",
    "archive/split_default.json": "the encoder split over two threads, default OpenMP wait policy: slower (reverted)",
    "archive/split_passive.json": "the encoder split over two threads with OMP_WAIT_POLICY=PASSIVE (reverted)",
    "epoch/epoch.json": "one Beauty epoch by phase, random batches against length-grouped ones (afdc174)",
    "epoch/epoch_vs_8467dc9.json": "one Beauty epoch by phase against 8467dc9 (before the step speed-ups)",
    "epoch/wait_policy.json": "one Beauty epoch by OMP_WAIT_POLICY (unset, ACTIVE, PASSIVE), 2 threads",
    "epoch/jobs.json": "steps a second of 1x2, 2x1 and 2x2 jobs x threads sharing 2 cores",
    "epoch/jobs_wait_default.json": "jobs x threads on 2 cores with OMP_WAIT_POLICY unset",
    "epoch/jobs_wait_passive.json": "jobs x threads on 2 cores with OMP_WAIT_POLICY=PASSIVE",
    "gpu/gpu_check.json": "single-GPU check on an H200: epoch by phase, bf16 autocast, peak memory",
    "gpu/gpu_runs.json": "four short Beauty runs side by side on one H200 (fenrec, no soft labels, in-batch, index)",
    "micro/compile.json": "torch.compile of the noise ascent, the coarse loss and a whole step, against eager",
    "micro/dropout.json": "byte-lane dropout masks against rand_like masks",
    "micro/gathered_dot.json": "the mined items' logits: gathered_dot against autograd's gather and product",
    "micro/grouping.json": "step time and batch make-up of length-grouped against random batches",
    "micro/index_prelim.json": "FAISS negative index on Beauty: refresh cost, recall, false negatives, hardness",
    "micro/parts.json": "parts of the FENRec loss (encoder, soft labels, contrast, noise ascent) against 8467dc9",
    "micro/profile_step.json": "torch.profiler table of a 2-thread Beauty step",
    "micro/profile_step_shapes.json": "torch.profiler table of a 1-thread Beauty step with operator shapes",
    "micro/score.json": "catalogue scoring z @ E.T: MKL sgemm against oneDNN; tanh against the sigmoid form",
    "micro/step.json": "one Beauty step against 8467dc9, interleaved, losses compared",
    "micro/step_cost.json": "step time against the batch's token count (fixed cost plus per token)",
    "micro/step_nodropout.json": "one Beauty step against 819fb19 with dropout off (losses equal)",
    "micro/step_noise.json": "one Beauty step against 7083f5d, 1 thread (the folded noise ascent)",
    "micro/step_vs_7083f5d.json": "one Beauty step against 7083f5d, 1 thread, 40 steps",
    "micro/step_vs_89ee228_nodropout.json": "one Beauty step against 89ee228 with dropout off: equal losses",
    "micro/threads.json": "a Beauty step at 1 and 2 threads, and two halves on two Python threads",
    "micro/threads_passive.json": "the same with OMP_WAIT_POLICY=PASSIVE on the AMD EPYC",
    "micro/trim.json": "heap-trimming policies: step time, page faults, resident size",
    "scale/catalogue_gathered_dot.json": "full step at 12k items against sampled steps with 0, 64, 256 mined items at 12k and 1M, other jobs paused",
    "scale/prepare.json": "fenrec prepare on 1M and 10M-row synthetic logs: wall time and peak RSS",
    "scale/prepare_vs_a6f50e9.json": "prepare with string ids against a6f50e9~1, 2M and 10M rows",
    "scale/prepare_vs_a6f50e9_2m.json": "prepare with string ids against a6f50e9~1, 2M rows, 8 repeats",
    "scale/prepare_vs_a6f50e9_2m_quiet.json": "the same on a quiet machine",
    "scale/ingest.json": "Ray Data's Parquet readers V2 against V1 on the prepared shards",
    "scale/workers.json": "Ray Train throughput: 1 worker against 2 on 2 CPU cores",
    "scale/dp_step.json": "data-parallel step with 2 gloo processes (no Ray) against one process",
    "scale/epoch_workers.json": "one Beauty epoch on 2 Ray Train workers against 819fb19",
    "scale/epoch_workers_cpu.json": "one Beauty epoch on 2 Ray Train workers: CPU time by process mid-job",
    "scale/epoch_workers_ddp.json": "one Beauty epoch on 2 Ray Train workers with torch DDP instead of DeepSpeed",
    "scale/epoch_workers_nice0.json": "one Beauty epoch on 2 Ray Train workers with RAY_worker_niceness=0",
    "scale/epoch_workers_single.json": "one Beauty epoch on 2 Ray Train workers against one 2-thread process",
}


def result_files() -> list[Path]:
    """Every result under bench/<group>/results/ (sidecars and temporary files excluded)."""
    return sorted(p for p in BENCH.glob("*/results/**/*") if p.is_file() and not p.name.endswith(SIDECAR)
                  and not p.name.startswith(".") and not p.name.endswith(".tmp"))


def provenance_of(path: Path) -> dict[str, Any] | None:
    """The provenance of a result: its sidecar's, else the JSON's own ``provenance`` object."""
    side = path.with_name(path.name + SIDECAR)
    if side.exists():
        prov = json.loads(side.read_text()).get("provenance")
        return prov if isinstance(prov, dict) else None
    if path.suffix == ".json":
        try:
            body = json.loads(path.read_text())
        except ValueError:
            return None
        prov = body.get("provenance") if isinstance(body, dict) else None
        return prov if isinstance(prov, dict) else None
    return None


def missing_provenance() -> list[str]:
    """Result files without provenance (a command and a commit at least)."""
    bad = []
    for p in result_files():
        prov = provenance_of(p)
        if not prov or not prov.get("git_commit") or not (prov.get("script") or prov.get("command")):
            bad.append(str(p.relative_to(ROOT)))
    return bad


def scripts() -> list[Path]:
    return sorted(p for p in BENCH.glob("*/*") if p.suffix in (".py", ".sh") and p.is_file())


def first_line(path: Path) -> str:
    """The first line of a script's docstring (Python) or header comment (shell)."""
    text = path.read_text()
    if path.suffix == ".py":
        para = (ast.get_docstring(ast.parse(text)) or "").strip().split("\n\n")[0]
    else:
        para = " ".join(line.lstrip("# ").strip() for line in
                        itertools.takewhile(lambda s: s.startswith("#") and s.strip("# "),
                                                          text.splitlines()[1:]))
    para = " ".join(para.split()).replace("``", "`").replace("|", "/")
    end = para.find(". ")
    return para[: end + 1] if end > 0 else para


def _cpu(prov: dict[str, Any]) -> str:
    cpu = prov.get("cpu") or {}
    if isinstance(cpu, str):
        return cpu
    model = cpu.get("model") or "model not recorded"
    cores = cpu.get("logical_cores")
    gpu = prov.get("gpu")
    return f"{model}, {cores} cores" + (f"; {gpu}" if gpu else "") if cores else model


def _script(prov: dict[str, Any]) -> str:
    script = prov.get("script") or ""
    return f"`{script}`" if script.startswith("bench/") and " " not in script else script


def render() -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/index.py` from the scripts and the provenance of every result; do not edit.",
        "Run a script from the repository root with the project's interpreter, e.g.",
        "`.venv/bin/python bench/epoch/bench_epoch.py`; each prints the command that reproduces it.",
        "Most need the Beauty benchmark sequence file (`--data PATH`; the default looks in a `shared/data`",
        "folder beside the repository) and skip without it.",
        "",
        "Every script writes its result through `bench/_result.py`, which records the provenance itself:",
        "the command line, git commit and whether the tree was dirty, CPU model and cores, the versions of",
        "Python, torch, Ray, FAISS, NumPy, DeepSpeed and PyArrow, the `OMP_*`/`MKL_*`/`OPENBLAS_*`",
        "threading environment and the UTC date (inside a JSON result as `provenance`, beside any other",
        "file as `<file>.provenance.json`). Results written before that carry a sidecar reconstructed",
        "from git history (marked `reconstructed_from_git_history`; the commit is the one that wrote the",
        "file, and the CPU model was not recorded unless named). Shared helpers:",
        "",
        "| helper | what |",
        "|---|---|",
        "| `bench/_result.py` | `write_result` (JSON with provenance, atomic), `write_text` / `write_sidecar` for other files |",
        "| `bench/_baseline.py` | time a baseline revision in the same run: `run_at_revision` (a script on a worktree),"
        " `revision_tree`, `revision_package` (both packages in one process) |",
        "| `bench/_timing.py` | `interleaved`: A/B arms timed in alternating order |",
        "| `bench/_arms.py` | the Beauty training-step fixture the step benchmarks share |",
        "",
        "After adding a result: `.venv/bin/python bench/index.py` (the test suite fails while a result lacks",
        "provenance or is missing here).",
        "",
    ]
    results = result_files()
    for group, what in GROUPS.items():
        group_scripts = [p for p in scripts() if p.parent.name == group]
        group_results = [p for p in results if p.parent.parent.name == group]
        if not group_scripts and not group_results:
            continue
        lines += [f"## {group}/: {what}", ""]
        if group_scripts:
            lines += ["| script | what it measures |", "|---|---|"]
            lines += [f"| `{p.relative_to(ROOT)}` | {first_line(p)} |" for p in group_scripts]
            lines.append("")
        if group_results:
            lines += ["| result | what | script | commit | date (UTC) | CPU |", "|---|---|---|---|---|---|"]
            for p in group_results:
                key = f"{group}/{p.relative_to(p.parent.parent / 'results')}"
                prov = provenance_of(p) or {}
                desc = DESCRIPTIONS.get(key, "")
                if not desc and prov.get("script") and (ROOT / prov["script"]).is_file():
                    desc = first_line(ROOT / prov["script"])
                commit = (prov.get("git_commit") or "")[:9] + ("+dirty" if prov.get("git_dirty") else "")
                mark = " (reconstructed)" if prov.get("reconstructed_from_git_history") else ""
                lines.append(f"| `{p.relative_to(BENCH)}` | {desc} | {_script(prov)} | {commit}{mark} | "
                             f"{(prov.get('date_utc') or '')[:10]} | {_cpu(prov)} |")
            lines.append("")
    top = [p for p in BENCH.glob("*") if p.is_file() and p.suffix in (".py", ".sh") and not p.name.startswith("_")
           and p.name != "index.py"]
    if top:
        lines += ["## Elsewhere in bench/", "", "| script | what it measures |", "|---|---|"]
        lines += [f"| `{p.relative_to(ROOT)}` | {first_line(p)} |" for p in sorted(top)]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when something is missing or stale")
    args = ap.parse_args(argv)
    bad = missing_provenance()
    for b in bad:
        print(f"no provenance: {b}", file=sys.stderr)
    text = render()
    readme = BENCH / "README.md"
    if args.check:
        stale = not readme.exists() or readme.read_text() != text
        if stale:
            print("bench/README.md is stale: run .venv/bin/python bench/index.py", file=sys.stderr)
        return 1 if bad or stale else 0
    readme.write_text(text)
    print(f"wrote {readme.relative_to(ROOT)}: {len(result_files())} results, {len(scripts())} scripts")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
