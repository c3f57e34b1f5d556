#!/usr/bin/env bash
# One-call GPU check of issue 28 for the lent GPU machine (ENVIRONMENT.md: Python 3.12, torch
# 2.11 CUDA 13, numpy, pyarrow, pytest; no network, no ray, deepspeed or faiss). Installs the
# wheels carried in .whl/ (bench/gpu/fetch_wheels.sh: pyyaml, tqdm; faiss-cpu optional) into
# /tmp/gpu_check_site, then runs bench/gpu/gpu_check.py: the CUDA-graph tests, Beauty (or Beauty-shaped
# synthetic data) for 2 epochs through `fenrec train --local` eager and with static shapes, and
# the step bench eager vs graphed. ONE JSON line on stdout (also $OUT/gpu_check.json); progress
# on stderr. Exit 1 with the reason in the JSON's "errors" when a stage failed.
#
# Device call (with the 15-minute budget: one call):
#   run(command="bash bench/gpu/gpu_check.sh", carry=[".whl", "data/gpu_check"], timeout_s=540)
# where data/gpu_check/Beauty.txt is a copy of ../shared/data/Beauty.txt (1 MB; else synthetic).
# Extra arguments go to gpu_check.py (e.g. --budget-s 300, --steps 40, --no-tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "gpu_check.sh: no $PY on PATH (set PYTHON=...)" >&2; exit 1; }
if compgen -G ".whl/*.whl" > /dev/null; then
  for w in .whl/*.whl; do  # one by one: a wheel for another Python is skipped, and preflight names what is missing
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site "$w" >&2 \
      || echo "gpu_check.sh: $w not installed (not for this Python/platform?)" >&2
  done
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || echo "gpu_check.sh: no nvidia-smi" >&2
OUT_JSON=${OUT:+$OUT/gpu_check.json}
# the Python side keeps its own budget (--budget-s, default 400 s); this is the backstop
timeout 470 "$PY" bench/gpu/gpu_check.py ${OUT_JSON:+--out "$OUT_JSON"} "$@"
