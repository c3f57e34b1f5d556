#!/usr/bin/env bash
# Fetch, on a machine with network, the wheels the GPU machine lacks (ENVIRONMENT.md: it has
# Python 3.12, torch 2.11 (CUDA 13), numpy, pyarrow, pytest, tensorboard; no network, no ray,
# deepspeed or faiss) into .whl/ (git-ignored). The device call then carries them:
#   run(command="bash bench/gpu/gpu_check.sh", carry=[".whl", "data/gpu_check"])
# pyyaml and tqdm are needed by `fenrec train --local`; faiss is not (intents.backend=auto takes
# the torch k-means on CUDA without faiss-gpu). FAISS_CPU=1 adds faiss-cpu (about 25-30 MB) for
# the faiss-on-CPU comparison. The carry limit is 64 MiB in all; the script prints the total.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
pkgs=(pyyaml tqdm)
if [ "${FAISS_CPU:-0}" = 1 ]; then pkgs+=(faiss-cpu); fi
mkdir -p .whl
"$PY" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d .whl "${pkgs[@]}"
ls -l .whl
du -cm .whl/*.whl | tail -1 | awk '{ if ($1 > 60) { print "fetch_wheels: " $1 " MiB, over the 64 MiB carry limit with the data"; exit 1 } else print "fetch_wheels: " $1 " MiB in .whl/" }'
