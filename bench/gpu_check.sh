#!/usr/bin/env bash
# One-call GPU check for a single-GPU machine without network (see ENVIRONMENT.md):
# it has torch/pyarrow/numpy but no ray, deepspeed or faiss. Wheels for what is missing
# (pyyaml, tqdm, faiss-cpu for Python 3.12) may be carried in .whl/ and are installed
# to /tmp/site first. Runs the single-process training path on CUDA with bf16 autocast on
# Beauty-sized synthetic data and prints samples/s, epoch time and peak GPU memory.
# Usage (device tool): bash bench/gpu_check.sh   — finishes well within 8 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
OUT_JSON=${OUT:+$OUT/gpu_check.json}
timeout 450 python3 bench/gpu_check.py --device cuda --epochs 2 ${OUT_JSON:+--out "$OUT_JSON"}
