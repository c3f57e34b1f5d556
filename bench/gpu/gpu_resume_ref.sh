#!/usr/bin/env bash
# Device call: resume runs/beauty-ref (carried with data/beauty and .whl) on the GPU for
# train.time_limit_min minutes and bring its metrics and checkpoints back as $OUT/ref.tar.gz.
# (Rerun of the resume that bench/gpu/gpu_runs.sh attempted: a CPU checkpoint loaded with
# map_location=cuda put the CPU RNG state on the GPU; fixed in train/checkpoint.py.)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 OMP_WAIT_POLICY=PASSIVE
python3 - <<'PY'
import yaml
p = "runs/beauty-ref/config.yaml"
c = yaml.safe_load(open(p))
c["train"].update(time_limit_min=3.0, threads=4, progress=False)
c["data"]["path"] = "data/beauty"
open(p, "w").write(yaml.safe_dump(c, sort_keys=False))
PY
python3 -m fenrec_dist.cli train --local --resume runs/beauty-ref 2>&1 | tail -n 30
tar czf $OUT/ref.tar.gz runs/beauty-ref/config.yaml runs/beauty-ref/metrics.jsonl runs/beauty-ref/checkpoints $(ls runs/beauty-ref/final.json runs/beauty-ref/curves.png 2>/dev/null)
