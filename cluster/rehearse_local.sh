#!/usr/bin/env bash
# Local rehearsal of the cluster workflow in cluster/README.md, on this machine only:
# tiny synthetic data -> a one-node Ray head on 127.0.0.1 -> the README's `ray job submit`
# (with cluster/runtime_env.yaml) on configs/demo.yaml -> job status -> head stopped.
# A few minutes on 2 cores.  Usage:  bash cluster/rehearse_local.sh [--tune]
# --tune also submits the README's sweep job (`python -m fenrec_dist.cli tune` with
# tune_spaces/quick.yaml, 2 trials) to the same head and checks its best.yaml and trials.csv.
#
# Stopping: a bare `ray stop` kills EVERY Ray process of this user on the machine (other
# shells, other test runs). The head is therefore started with `ray start --block` in the
# background and the exit trap stops exactly that head: SIGTERM to its PID makes Ray shut
# down all processes it started (its own `ray stop`), then any straggler whose command line
# carries this run's unique --temp-dir is terminated. On a dedicated machine,
# REHEARSE_RAY_STOP_ALL=1 additionally runs a plain `ray stop`.
set -euo pipefail
TUNE=0
case "${1:-}" in
    --tune) TUNE=1 ;;
    "") ;;
    *) echo "usage: bash cluster/rehearse_local.sh [--tune]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
# A local ray.init() earlier on this machine turns token auth on for later heads.
export RAY_AUTH_MODE=disabled
# CPU-only node: DeepSpeed on CPU with the venv's compiled-op cache (forwarded to workers).
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.venv/torch_extensions}"

WORK="$(mktemp -d /tmp/fenrec-rehearse.XXXXXX)"
# Ray's Unix socket paths live under --temp-dir and must stay < 108 characters.
RAY_TMP="$(mktemp -d /tmp/rh.XXXXXX)"
DATA="$WORK/data"
STORE="$WORK/runs"
read -r GCS_PORT DASH_PORT AGENT_PORT CLIENT_PORT < <(python - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
)
ADDRESS="http://127.0.0.1:$DASH_PORT"
HEAD_PID=""

stop_head() {
    set +e
    echo "== stopping the Ray head (pid ${HEAD_PID:-none}, temp dir $RAY_TMP)"
    if [ -n "$HEAD_PID" ] && kill -0 "$HEAD_PID" 2>/dev/null; then
        kill -TERM "$HEAD_PID"
        for _ in $(seq 1 30); do kill -0 "$HEAD_PID" 2>/dev/null || break; sleep 1; done
        kill -0 "$HEAD_PID" 2>/dev/null && kill -KILL "$HEAD_PID"
    fi
    sleep 2
    left="$(pgrep -u "$(id -u)" -f -- "$RAY_TMP" || true)"
    if [ -n "$left" ]; then
        echo "   terminating leftovers of this head: $(echo $left)"
        kill -TERM $left 2>/dev/null; sleep 3
        left="$(pgrep -u "$(id -u)" -f -- "$RAY_TMP" || true)"
        [ -n "$left" ] && kill -KILL $left 2>/dev/null
    fi
    if [ "${REHEARSE_RAY_STOP_ALL:-0}" = 1 ]; then ray stop; fi
    rm -rf "$RAY_TMP"
    echo "   head stopped; data and runs kept in $WORK"
}
trap stop_head EXIT

echo "== tiny demo data in $DATA"
fenrec synth --out "$WORK/log.csv" --users 300 --items 60 --format csv
fenrec prepare "$WORK/log.csv" --out "$DATA" --max-len 10

echo "== ray start --head on 127.0.0.1:$GCS_PORT (dashboard $ADDRESS)"
ray start --head --block --node-ip-address=127.0.0.1 --port="$GCS_PORT" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
    --dashboard-agent-listen-port="$AGENT_PORT" --ray-client-server-port="$CLIENT_PORT" \
    --num-cpus=4 --temp-dir="$RAY_TMP" --disable-usage-stats >"$WORK/ray_start.log" 2>&1 &
HEAD_PID=$!
for i in $(seq 1 90); do
    if ray job list --address "$ADDRESS" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$HEAD_PID" 2>/dev/null; then cat "$WORK/ray_start.log"; echo "ray start failed"; exit 1; fi
    [ "$i" = 90 ] && { cat "$WORK/ray_start.log"; echo "job server not up after 90 s"; exit 1; }
    sleep 1
done
echo "   head up (pid $HEAD_PID)"

SID="fenrec-rehearse-$(date +%Y%m%d-%H%M%S)"
echo "== ray job submit ($SID)"
rc=0
timeout 1200 ray job submit --address "$ADDRESS" --submission-id "$SID" \
    --runtime-env cluster/runtime_env.yaml --working-dir . -- \
    python ray_job.py --config configs/demo.yaml \
    --set data.path="$DATA" --set train.epochs=1 --set data.max_len=10 --set intents.k=8 \
    --set distributed.cpus_per_worker=0.5 --set train.threads=1 \
    --set distributed.storage_path="$STORE" --set distributed.name=rehearsal || rc=$?

echo "== job status"
status="$(ray job status --address "$ADDRESS" "$SID" 2>&1 | grep -v -- '-----')"
echo "$status"
ls "$STORE/rehearsal" 2>/dev/null | sed 's/^/   run dir: /' || true
if [ "$rc" -ne 0 ] || ! grep -qi "succeeded" <<<"$status"; then
    echo "REHEARSAL FAILED (submit rc=$rc)"
    exit 1
fi
echo "REHEARSAL OK: job $SID SUCCEEDED"

if [ "$TUNE" = 1 ]; then
    TID="fenrec-rehearse-tune-$(date +%Y%m%d-%H%M%S)"
    echo "== ray job submit: sweep ($TID)"
    rc=0
    timeout 1800 ray job submit --address "$ADDRESS" --submission-id "$TID" \
        --runtime-env cluster/runtime_env.yaml --working-dir . -- \
        python -m fenrec_dist.cli tune --config configs/demo.yaml --space tune_spaces/quick.yaml \
        --trials 2 --max-concurrent 1 --set data.path="$DATA" --set distributed.cpus_per_worker=0.5 \
        --out "$STORE/tune-quick" || rc=$?
    echo "== job status"
    status="$(ray job status --address "$ADDRESS" "$TID" 2>&1 | grep -v -- '-----')"
    echo "$status"
    if [ "$rc" -ne 0 ] || ! grep -qi "succeeded" <<<"$status" \
            || [ ! -s "$STORE/tune-quick/best.yaml" ] || [ ! -s "$STORE/tune-quick/trials.csv" ]; then
        echo "SWEEP REHEARSAL FAILED (submit rc=$rc)"
        exit 1
    fi
    sed 's/^/   /' "$STORE/tune-quick/trials.csv"
    echo "SWEEP REHEARSAL OK: job $TID SUCCEEDED, $STORE/tune-quick/best.yaml written"
fi
