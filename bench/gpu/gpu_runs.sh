#!/usr/bin/env bash
# One device call: bench/gpu/gpu_check.sh, then four Beauty runs side by side on the same GPU
# (single-process path, bf16 autocast), each stopped by train.time_limit_min so the whole
# call ends inside BUDGET seconds; every run still scores its best checkpoint on test.
#
#   ref      runs/beauty-ref (configs/beauty.yaml, trained on CPU so far) resumed until the
#            time limit (accuracy), if that run directory was carried
#   fenrec   configs/beauty.yaml from scratch, 22 epochs       } soft-label ablation at an
#   nosoft   the same with loss.soft_labels=false, 22 epochs   } equal epoch count
#   inbatch  negatives.sources=[in_batch], warm-up 5, 25 epochs (the index A/B's baseline)
#   index    negatives.sources=[in_batch,index], warm-up 5, 25 epochs (FAISS-mined negatives)
#
# Needs data/beauty (fenrec prepare ../shared/data/Beauty.txt --out data/beauty) carried,
# and .whl/ with faiss-cpu for Python 3.12 (the GPU image has no faiss). Results come back as
# $OUT/runs.tar.gz (configs, metrics.jsonl, final.json, curves, index summaries, logs),
# $OUT/ref.tar.gz (the resumed run: metrics and checkpoints) and $OUT/gpu_check.json.
# Local dry run: SKIP_CHECK=1 DEVICE=cpu EXTRA_SET="data.path=... train.epochs=2" BUDGET=120 bash bench/gpu/gpu_runs.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
BUDGET=${BUDGET:-560}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu_runs_out}
mkdir -p "$OUT" runs/gpu-logs
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3} OMP_WAIT_POLICY=PASSIVE
if [ -z "${SKIP_CHECK:-}" ]; then
  bash bench/gpu/gpu_check.sh 2>&1 | tee runs/gpu-logs/gpu_check.log
fi
now=$(date +%s)
left=$(( BUDGET - (now - T0) - 75 ))
mins=$(python3 -c "print(round(max(0.5, $left / 60), 2))")
echo "gpu_runs: $(( now - T0 ))s used, runs get train.time_limit_min=$mins"
sets=()
for s in ${EXTRA_SET:-}; do sets+=(--set "$s"); done
run() {
  local name=$1; shift
  rm -rf "runs/gpu-$name"
  python3 -m fenrec_dist.cli train --local --config configs/beauty.yaml --out "runs/gpu-$name" \
    --set train.device="$DEVICE" --set train.progress=false --set train.threads=2 \
    --set train.time_limit_min="$mins" "$@" "${sets[@]}" > "runs/gpu-logs/$name.log" 2>&1 &
}
if [ -f runs/beauty-ref/config.yaml ] && [ -z "${EXTRA_SET:-}" ]; then
  python3 - "$mins" <<'PY'
import sys, yaml
p = "runs/beauty-ref/config.yaml"
c = yaml.safe_load(open(p))
c["train"].update(time_limit_min=float(sys.argv[1]), threads=2, progress=False)
c["data"]["path"] = "data/beauty"
open(p, "w").write(yaml.safe_dump(c, sort_keys=False))
PY
  python3 -m fenrec_dist.cli train --local --resume runs/beauty-ref > runs/gpu-logs/ref.log 2>&1 &
fi
run fenrec --set train.epochs=22
run nosoft --set loss.soft_labels=false --set train.epochs=22
run inbatch --set "negatives.sources=[in_batch]" --set negatives.warmup_epochs=5 --set train.epochs=25
run index --set "negatives.sources=[in_batch,index]" --set negatives.warmup_epochs=5 --set train.epochs=25
wait
[ -f runs/beauty-ref/config.yaml ] && tar czf "$OUT/ref.tar.gz" runs/beauty-ref/config.yaml runs/beauty-ref/metrics.jsonl \
  runs/beauty-ref/checkpoints $(ls runs/beauty-ref/final.json runs/beauty-ref/curves.png 2>/dev/null) runs/gpu-logs/ref.log
for n in fenrec nosoft inbatch index; do
  echo "== $n: $(grep -c . runs/gpu-$n/metrics.jsonl 2>/dev/null) epochs"; tail -n 3 "runs/gpu-logs/$n.log"
done
files=$(ls -d runs/gpu-*/config.yaml runs/gpu-*/metrics.jsonl runs/gpu-*/final.json runs/gpu-*/curves.png \
  runs/gpu-*/negatives/summary.jsonl runs/gpu-logs/*.log 2>/dev/null)
tar czf "$OUT/runs.tar.gz" $files
ls -la "$OUT"
tail -n 4 runs/gpu-logs/ref.log 2>/dev/null
echo "gpu_runs: done in $(( $(date +%s) - T0 ))s"
